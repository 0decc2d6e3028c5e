#!/usr/bin/env bash
# Installs Pebble (a real ACME server for tests) and pebble-challtestsrv (its
# DNS test server) into $(go env GOPATH)/bin, for proxy/certs's
# TestACMEWithPebble.
#
# Idempotent: nothing is built when both binaries already carry the pinned
# module version (checked with `go version -m`); the Go build and module
# caches make a rebuild fast.
#
# Prints shell assignments on stdout, so that callers can run
#   eval "$(.ci/pebble.sh)"
# and get PEBBLE and PEBBLE_CHALLTESTSRV (the test also finds the binaries in
# $PATH or $(go env GOPATH)/bin by itself). Progress goes to stderr.
set -euo pipefail

version="v2.10.3"
module="github.com/letsencrypt/pebble/v2"
gobin="$(go env GOPATH | cut -d: -f1)/bin"

has_version() {
  [ -x "$1" ] && go version -m "$1" 2>/dev/null | grep -q "^[[:space:]]*mod[[:space:]]*${module}[[:space:]]*${version}[[:space:]]"
}

if has_version "$gobin/pebble" && has_version "$gobin/pebble-challtestsrv"; then
  echo "pebble.sh: pebble ${version} already in $gobin" >&2
else
  echo "pebble.sh: installing pebble ${version} into $gobin" >&2
  GOBIN="$gobin" go install "${module}/cmd/pebble@${version}" "${module}/cmd/pebble-challtestsrv@${version}"
fi

echo "export PEBBLE=$gobin/pebble"
echo "export PEBBLE_CHALLTESTSRV=$gobin/pebble-challtestsrv"
