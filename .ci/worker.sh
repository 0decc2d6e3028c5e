#!/usr/bin/env bash
# Installs the edge Worker's npm dependencies (workerd, from the committed
# package-lock.json) and runs its tests in the real workerd runtime.
#
# Idempotent: npm ci runs only when the lock file changed since the last
# install (or node_modules is missing); downloads are cached in ~/.npm.
# Environment: PULSAR_WEB_URL (optional) also runs the real-Pulsar edge event
# test; with CI=true an unreachable PULSAR_WEB_URL fails it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../deploy/worker"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "worker.sh: node and npm are required (Node >= 20)" >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "worker.sh: Node >= 20 required, have $(node --version)" >&2
  exit 1
fi

export npm_config_cache="${npm_config_cache:-$HOME/.npm}"
stamp="node_modules/.portcullis-lock.sha256"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! node -e "require('fs').accessSync(require('workerd').default ?? require('workerd'), require('fs').constants.X_OK)" 2>/dev/null; then
  echo "worker.sh: npm ci (cache $npm_config_cache)"
  npm ci --prefer-offline --no-audit --no-fund
  echo "$want" > "$stamp"
fi
echo "worker.sh: $(node_modules/.bin/workerd --version 2>/dev/null || echo 'workerd ?'), node $(node --version)"

npm test
