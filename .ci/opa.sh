#!/usr/bin/env bash
# Installs the upstream OPA CLI at the version go.mod pins into
# $(go env GOPATH)/bin and runs `opa test policies/` with it: the shipped
# policies must be plain OPA, passing the upstream test runner as well as
# `portcullis policy test`. The policy package's BenchmarkSidecar also uses
# this binary (`opa run --server`).
#
# Idempotent: nothing is built when the binary already carries the pinned
# module version (checked with `go version -m`).
#
# Prints shell assignments on stdout, so that callers can run
#   eval "$(.ci/opa.sh)"
# and get OPA. Progress and test output go to stderr. Exits non-zero when a
# policy test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

module="github.com/open-policy-agent/opa"
version="$(go list -m -f '{{.Version}}' "$module")"
gobin="$(go env GOPATH | cut -d: -f1)/bin"

has_version() {
  [ -x "$1" ] && go version -m "$1" 2>/dev/null | grep -q "^[[:space:]]*mod[[:space:]]*${module}[[:space:]]*${version}[[:space:]]"
}

if has_version "$gobin/opa"; then
  echo "opa.sh: opa ${version} already in $gobin" >&2
else
  echo "opa.sh: installing opa ${version} into $gobin" >&2
  GOBIN="$gobin" go install "${module}@${version}"
fi

echo "opa.sh: opa test policies/" >&2
"$gobin/opa" test policies/ >&2
"$gobin/opa" check --strict policies/ >&2

echo "export OPA=$gobin/opa"
