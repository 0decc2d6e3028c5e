#!/usr/bin/env bash
# CI wrapper around deploy/pulsar/pulsar-standalone.sh: a Pulsar standalone broker on
# the test ports, in test mode (journalSyncData=false), with the audit topic and the
# Worker's edge topic (written through the REST produce API, so de-duplication is off
# on that topic only).
#
# Usage: .ci/pulsar.sh start|stop|status
#   start   idempotent; on failure prints where the broker log is and its tail.
#   stop    stops the broker started by start (pid file).
# Tests then use pulsar://127.0.0.1:16650 and http://127.0.0.1:18080.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="$ROOT/deploy/pulsar/pulsar-standalone.sh"

export PULSAR_BROKER_PORT="${PULSAR_BROKER_PORT:-16650}"
export PULSAR_WEB_PORT="${PULSAR_WEB_PORT:-18080}"
export PULSAR_BOOKIE_PORT="${PULSAR_BOOKIE_PORT:-13181}"
export PULSAR_TEST_MODE="${PULSAR_TEST_MODE:-1}"
export PULSAR_TOPIC="${PULSAR_TOPIC:-persistent://public/default/portcullis-audit}"
export PULSAR_REST_TOPICS="${PULSAR_REST_TOPICS:-persistent://public/default/portcullis-edge}"
# CI's own working directory, never the one deploy/pulsar/pulsar-standalone.sh
# uses by default (run-PORT): start below empties its data, and stop stops
# the broker of its pid file, which must never be a user's broker and trail.
# A user's broker already answering on the test ports is used as it is
# (the tests make topics of their own) and left running.
export PULSAR_RUN_DIR="${PULSAR_RUN_DIR:-${PULSAR_HOME:-$HOME/.cache/portcullis-pulsar}/ci-run-$PULSAR_BROKER_PORT}"

case "${1:-}" in
  start)
    # Tests use fresh topics, so each CI broker starts from empty state: a
    # data directory left by a broker that was killed can hold a stale bookie
    # registration that keeps a restarted broker "healthy" but unable to
    # store anything.
    if ! "$SCRIPT" status >/dev/null 2>&1; then
      rm -rf "$PULSAR_RUN_DIR/data" "$PULSAR_RUN_DIR/pulsar.log" "$PULSAR_RUN_DIR"/pulsar.log.*
    fi
    if ! "$SCRIPT" start; then
      log="$("$SCRIPT" log-path)"
      echo "ci/pulsar: Pulsar failed to start; broker log: $log" >&2
      [[ -f "$log" ]] && tail -n 20 "$log" >&2
      exit 1
    fi
    ;;
  stop)
    "$SCRIPT" stop
    ;;
  status)
    "$SCRIPT" status
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
