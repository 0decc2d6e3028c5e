#!/usr/bin/env bash
# Real-browser test of `portcullis dev` (e2e/browser): headless Chromium signs in
# as alice, sees the demo app, is refused /admin, signs out.
#
# Usage:
#   .ci/browser.sh                      # test an already running server at $PORTCULLIS_URL
#   .ci/browser.sh CMD [ARGS...]        # start CMD in the background first (stopped on exit),
#                                       # e.g. .ci/browser.sh ./portcullis dev --listen 127.0.0.1:18443
# Environment: PORTCULLIS_URL (default https://localhost:8443), PORTCULLIS_CA,
# EXPECT_ADMIN_DENIED (default 1), ARTIFACTS_DIR (screenshots; default a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
(cd e2e/browser && npm ci --no-audit --no-fund --loglevel=error)

export PORTCULLIS_URL="${PORTCULLIS_URL:-https://localhost:8443}"
export ARTIFACTS_DIR="${ARTIFACTS_DIR:-$(mktemp -d -t portcullis-browser-XXXXXX)}"
mkdir -p "$ARTIFACTS_DIR"

if [ "$#" -gt 0 ]; then
  log="$ARTIFACTS_DIR/server.log"
  "$@" >"$log" 2>&1 &
  server_pid=$!
  trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 120); do
    if curl -ks -o /dev/null --max-time 2 "$PORTCULLIS_URL/"; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "browser.sh: server exited early; its log:" >&2
      cat "$log" >&2
      exit 1
    fi
    sleep 0.5
  done
fi

echo "browser.sh: testing $PORTCULLIS_URL; screenshots in $ARTIFACTS_DIR"
cd e2e/browser
node --test --test-reporter=spec
