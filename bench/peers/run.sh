#!/usr/bin/env bash
# Portcullis side by side with a bare httputil.ReverseProxy and oauth2-proxy,
# all three over TLS in front of the same tiny upstream, the two
# identity-aware ones with a signed-in user (mockoidc), measured in the same
# run: requests/s, p50/p90/p99 latency and the proxy's CPU per request,
# medians over interleaved rounds, and their ratios.
#
#   bench/peers/run.sh [DURATION] [CONNS] [ROUNDS]   (defaults: 10s 16 3)
#
# DURATION is the measured time per target and round (Go syntax, or plain
# seconds); each round adds a 1s warm-up per target. Installs oauth2-proxy
# v7.15.6 into $(go env GOPATH)/bin when it is missing; when that fails it
# says why and measures the other two. Extra harness flags go in
# PEERS_FLAGS (e.g. PEERS_FLAGS="-keep -pin=false").
set -euo pipefail
cd "$(dirname "$0")/../.."

duration="${1:-10s}"
conns="${2:-16}"
rounds="${3:-3}"
case "$duration" in *[0-9]) duration="${duration}s" ;; esac

oauth2_module=github.com/oauth2-proxy/oauth2-proxy/v7
oauth2_version=v7.15.6
gobin="$(go env GOBIN)"
[ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
oauth2_proxy="$gobin/oauth2-proxy"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Idempotent: keep an oauth2-proxy built from the pinned module version.
installed_version() {
  go version -m "$1" 2>/dev/null | awk -v m="$oauth2_module" '$1 == "mod" && $2 == m { print $3 }'
}
skipped=""
if [ "$(installed_version "$oauth2_proxy")" != "$oauth2_version" ]; then
  echo "bench/peers: installing oauth2-proxy $oauth2_version into $gobin" >&2
  if ! GOBIN="$gobin" go install "$oauth2_module@$oauth2_version" >"$work/install.log" 2>&1; then
    echo "bench/peers: could not install oauth2-proxy: go install $oauth2_module@$oauth2_version failed:" >&2
    sed 's/^/  /' "$work/install.log" >&2
    skipped="go install $oauth2_module@$oauth2_version failed (see above)"
  elif [ "$(installed_version "$oauth2_proxy")" != "$oauth2_version" ]; then
    echo "bench/peers: go install succeeded but $oauth2_proxy is not $oauth2_version" >&2
    skipped="$oauth2_proxy is not $oauth2_version after go install"
  fi
fi

go build -o "$work/portcullis" ./cmd/portcullis
go build -o "$work/peers" ./bench/peers

args=(-portcullis "$work/portcullis" -duration "$duration" -conns "$conns" -rounds "$rounds")
if [ -n "$skipped" ]; then
  args+=(-oauth2-proxy-skipped "$skipped")
else
  args+=(-oauth2-proxy "$oauth2_proxy")
fi
# shellcheck disable=SC2086 # PEERS_FLAGS is a list of flags
"$work/peers" "${args[@]}" ${PEERS_FLAGS:-}
