#!/usr/bin/env bash
# Runs a real Apache Pulsar standalone broker (broker + in-process bookie + RocksDB
# metadata store) from Maven Central artefacts, on loopback, for Portcullis' audit trail.
#
# Usage: pulsar-standalone.sh start|stop|status|create-topic [--rest] TOPIC|classpath|log-path
#
#   start         resolve the classpath (cached), start the broker in the background,
#                 wait until it is healthy, then ensure the audit topic (PULSAR_TOPIC)
#                 and PULSAR_EXTRA_TOPICS exist with infinite retention and
#                 de-duplication on, and PULSAR_REST_TOPICS with de-duplication off
#                 (see below). Idempotent: when the broker is already running and
#                 healthy it only ensures the topics.
#   stop          stop the broker this script started (pid file) and wait for it to exit.
#   status        exit 0 when the broker answers its health check, 1 otherwise.
#   create-topic  ensure one topic exists (tenant, namespace, retention, dedup, topic);
#                 --rest: the topic is written through the REST produce API, so
#                 de-duplication is turned off for that topic only.
#   classpath     only resolve and cache the classpath (for warming CI caches).
#   log-path      print the path of the broker's log file.
#
# Environment (defaults in brackets):
#   PULSAR_HOME           cache and state root [$HOME/.cache/portcullis-pulsar]
#   PULSAR_RUN_DIR        working dir: data/, pid, log, runtime conf
#                         [$PULSAR_HOME/run-$PULSAR_BROKER_PORT]
#   PULSAR_BROKER_PORT    binary protocol port, pulsar:// [16650]
#   PULSAR_WEB_PORT       HTTP admin/REST port [18080]
#   PULSAR_BOOKIE_PORT    in-process bookie port [13181]
#   PULSAR_TOPIC          audit topic [persistent://public/default/portcullis-audit]
#   PULSAR_EXTRA_TOPICS   more topics to ensure, space or comma separated []
#   PULSAR_REST_TOPICS    topics written through the REST produce API
#                         (POST /topics/persistent/...), space or comma separated:
#                         Pulsar 4.0's REST produce fails with NullPointerException
#                         (errorCode 2) on a topic with de-duplication on, so these
#                         get a topic-level deduplicationEnabled=false []
#   PULSAR_TEST_MODE      1: journalSyncData=false (faster, not crash-safe) [0]
#   PULSAR_START_TIMEOUT  seconds to wait for health on start [180]
#   PULSAR_STOP_TIMEOUT   seconds to wait for exit before SIGKILL [60]
#   PULSAR_HEAP           -Xmx and -XX:MaxDirectMemorySize [1g]
#   PULSAR_LOG_LEVEL      root log level [info]
#   PULSAR_JAVA           java binary; else $JAVA_HOME/bin/java, else `java` on PATH;
#                         it must be Java 17 or newer (else the newest JDK under
#                         /usr/lib/jvm is used)
#   PULSAR_EXTRA_JAVA_OPTS  appended to the JVM options []
#   PULSAR_MVN_ARGS       extra Maven arguments for resolving, e.g.
#                         -Dmaven.repo.local=/path (default: ~/.m2) []
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

PULSAR_HOME="${PULSAR_HOME:-$HOME/.cache/portcullis-pulsar}"
PULSAR_BROKER_PORT="${PULSAR_BROKER_PORT:-16650}"
PULSAR_WEB_PORT="${PULSAR_WEB_PORT:-18080}"
PULSAR_BOOKIE_PORT="${PULSAR_BOOKIE_PORT:-13181}"
PULSAR_RUN_DIR="${PULSAR_RUN_DIR:-$PULSAR_HOME/run-$PULSAR_BROKER_PORT}"
PULSAR_TOPIC="${PULSAR_TOPIC:-persistent://public/default/portcullis-audit}"
PULSAR_EXTRA_TOPICS="${PULSAR_EXTRA_TOPICS:-}"
PULSAR_REST_TOPICS="${PULSAR_REST_TOPICS:-}"
PULSAR_TEST_MODE="${PULSAR_TEST_MODE:-0}"
PULSAR_START_TIMEOUT="${PULSAR_START_TIMEOUT:-180}"
PULSAR_STOP_TIMEOUT="${PULSAR_STOP_TIMEOUT:-60}"
PULSAR_HEAP="${PULSAR_HEAP:-1g}"
PULSAR_LOG_LEVEL="${PULSAR_LOG_LEVEL:-info}"

WEB_URL="http://127.0.0.1:${PULSAR_WEB_PORT}"
PID_FILE="$PULSAR_RUN_DIR/pulsar.pid"
LOG_FILE="$PULSAR_RUN_DIR/pulsar.log"
CONF_FILE="$PULSAR_RUN_DIR/standalone.conf"

log() { printf 'pulsar-standalone: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- Java

java_major() { # java binary -> major version number (0 when unknown)
  local v
  v="$("$1" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\).*/\1/p' | head -n1)"
  echo "${v:-0}"
}

find_java() {
  local cand
  if [[ -n "${PULSAR_JAVA:-}" ]]; then
    cand="$PULSAR_JAVA"
  elif [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
    cand="${JAVA_HOME}/bin/java"
  else
    cand="$(command -v java || true)"
  fi
  if [[ -n "$cand" && "$(java_major "$cand")" -ge 17 ]]; then
    echo "$cand"
    return
  fi
  # Fall back to the newest JDK 17+ installed under /usr/lib/jvm.
  local best="" best_v=0 j v
  for j in /usr/lib/jvm/*/bin/java; do
    [[ -x "$j" ]] || continue
    v="$(java_major "$j")"
    if [[ "$v" -ge 17 && "$v" -gt "$best_v" ]]; then best="$j"; best_v="$v"; fi
  done
  [[ -n "$best" ]] || die "no Java 17 or newer found (set PULSAR_JAVA or JAVA_HOME)"
  echo "$best"
}

# ---------------------------------------------------------------- classpath

# Prints the path of the cached classpath file, resolving it with Maven when the
# POM changed or a jar went missing from ~/.m2.
classpath_file() {
  local key cp
  key="$( (cat "$SCRIPT_DIR/pom.xml"; echo "${PULSAR_MVN_ARGS:-}") | sha256sum | cut -c1-16)"
  cp="$PULSAR_HOME/classpath-$key.txt"
  if [[ -s "$cp" ]] && classpath_complete "$cp"; then
    echo "$cp"
    return
  fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install -y maven)"
  mkdir -p "$PULSAR_HOME"
  log "resolving the Pulsar classpath with Maven (first run downloads ~300 MB into ~/.m2)"
  local mlog="$PULSAR_HOME/mvn-resolve.log"
  # shellcheck disable=SC2086 # word splitting of extra arguments is intended
  if ! mvn -B ${PULSAR_MVN_ARGS:-} -f "$SCRIPT_DIR/pom.xml" dependency:build-classpath \
      -Dmdep.outputFile="$cp.tmp" -Dmdep.includeScope=runtime >"$mlog" 2>&1; then
    tail -n 30 "$mlog" >&2
    die "Maven could not resolve the classpath; full log: $mlog"
  fi
  mv "$cp.tmp" "$cp"
  classpath_complete "$cp" || die "resolved classpath names missing jars: $cp"
  echo "$cp"
}

classpath_complete() {
  local jar
  while IFS= read -r jar; do
    [[ -z "$jar" || -f "$jar" ]] || return 1
  done < <(tr ':' '\n' <"$1")
}

# ---------------------------------------------------------------- process

running_pid() { # prints the pid from the pid file when that process is alive
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled pid: it must be our broker.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'PulsarStandaloneStarter' || return 1
  echo "$pid"
}

healthy() {
  local code
  code="$(curl -s -o /dev/null -m 10 -w '%{http_code}' "$WEB_URL/admin/v2/brokers/health" || true)"
  [[ "$code" == 200 ]]
}

# write_conf copies standalone.conf into the run directory with the per-run keys
# replaced. Keys must not repeat: the bookie reads the file with Commons
# Configuration, which turns a repeated key into a list (and then uses the first
# value), while the broker's java.util.Properties keeps the last one.
write_conf() {
  local sync=true
  [[ "$PULSAR_TEST_MODE" == 1 ]] && sync=false
  {
    grep -v -E '^[[:space:]]*(brokerServicePort|webServicePort|allowEphemeralPorts|listeningInterface|journalSyncData)[[:space:]]*=' \
      "$SCRIPT_DIR/standalone.conf"
    echo
    echo "### Set by pulsar-standalone.sh for this run."
    echo "brokerServicePort=$PULSAR_BROKER_PORT"
    echo "webServicePort=$PULSAR_WEB_PORT"
    # The in-process bookie only honours --bookkeeper-port when ephemeral ports
    # are allowed; otherwise it picks a random port. Bind it to loopback only.
    echo "allowEphemeralPorts=true"
    echo "listeningInterface=lo"
    echo "# false only with PULSAR_TEST_MODE=1: the bookie then does not fsync its journal."
    echo "journalSyncData=$sync"
  } >"$CONF_FILE"
}

start_broker() {
  local java cp
  java="$(find_java)"
  cp="$(classpath_file)"
  mkdir -p "$PULSAR_RUN_DIR"
  write_conf
  [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"

  local -a opts=(
    "-Xms256m" "-Xmx$PULSAR_HEAP" "-XX:MaxDirectMemorySize=$PULSAR_HEAP"
    -XX:+UseG1GC -XX:MaxGCPauseMillis=10 -XX:+ParallelRefProcEnabled
    -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1 -XX:+DisableExplicitGC
    -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.util.zip=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/jdk.internal.misc=ALL-UNNAMED
    --add-opens java.base/sun.net=ALL-UNNAMED
    --add-opens java.management/sun.management=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-exports java.base/jdk.internal.platform=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.recycler.maxCapacityPerThread=4096
    -Djava.net.preferIPv4Stack=true
    -Dpulsar.allocator.exit_on_oom=true
    -Dbookkeeper.metadata.bookie.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataBookieDriver
    -Dbookkeeper.metadata.client.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataClientDriver
    "-Dlog4j.configurationFile=$SCRIPT_DIR/log4j2.xml"
    "-Dpulsar.log.level=$PULSAR_LOG_LEVEL"
  )
  # shellcheck disable=SC2206 # word splitting of extra options is intended
  [[ -n "${PULSAR_EXTRA_JAVA_OPTS:-}" ]] && opts+=(${PULSAR_EXTRA_JAVA_OPTS})

  log "starting Pulsar with $java (Java $(java_major "$java")) in $PULSAR_RUN_DIR"
  log "ports: broker $PULSAR_BROKER_PORT, web $PULSAR_WEB_PORT, bookie $PULSAR_BOOKIE_PORT; log: $LOG_FILE"
  # Relative data paths (data/metadata, data/standalone) resolve in PULSAR_RUN_DIR.
  # setsid detaches the broker from this shell's session; the inner shell writes
  # its own pid before exec'ing java, so the pid file names the JVM itself.
  (
    cd "$PULSAR_RUN_DIR"
    # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
    exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
      "$java" "${opts[@]}" -cp "$(cat "$cp")" org.apache.pulsar.PulsarStandaloneStarter \
      --config "$CONF_FILE" --no-functions-worker --no-stream-storage \
      --bookkeeper-port "$PULSAR_BOOKIE_PORT" --advertised-address 127.0.0.1 \
      </dev/null >>"$LOG_FILE" 2>&1
  ) &
  disown $! 2>/dev/null || true
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "$PID_FILE" ]] && break
    sleep 0.1
  done
}

wait_healthy() {
  local deadline=$((SECONDS + PULSAR_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if healthy; then return 0; fi
    if ! running_pid >/dev/null; then
      log "the broker exited during start-up; last lines of $LOG_FILE:"
      tail -n 40 "$LOG_FILE" >&2 || true
      return 1
    fi
    sleep 1
  done
  log "the broker was not healthy within ${PULSAR_START_TIMEOUT}s; log: $LOG_FILE"
  return 1
}

# ---------------------------------------------------------------- admin

# admin METHOD PATH [JSON-BODY] -> prints the HTTP status code.
admin() {
  local -a args=(-s -o "$PULSAR_RUN_DIR/admin-response.txt" -m 30 -w '%{http_code}' -X "$1")
  if [[ $# -ge 3 ]]; then args+=(-H 'Content-Type: application/json' --data "$3"); fi
  curl "${args[@]}" "$WEB_URL$2" || echo 000
}

# expect WHAT CODE ALLOWED... : fails with the response body unless CODE is allowed.
expect() {
  local what="$1" code="$2" ok
  shift 2
  for ok in "$@"; do [[ "$code" == "$ok" ]] && return 0; done
  log "$what failed with HTTP $code: $(cat "$PULSAR_RUN_DIR/admin-response.txt" 2>/dev/null)"
  return 1
}

# ensure_topic TOPIC [on|off]: accepts persistent://T/N/name, T/N/name or a bare
# name (public/default). The namespace always gets infinite retention and
# de-duplication on; the second argument sets the topic's own de-duplication
# policy (default on; off for topics written through the REST produce API).
ensure_topic() {
  local topic="$1" dedup="${2:-on}" rest tenant ns name
  case "$topic" in
    persistent://*) rest="${topic#persistent://}" ;;
    *://*) die "only persistent topics are supported: $topic" ;;
    */*/*) rest="$topic" ;;
    */*) die "topic must be persistent://tenant/namespace/name: $topic" ;;
    *) rest="public/default/$topic" ;;
  esac
  IFS=/ read -r tenant ns name <<<"$rest"
  [[ -n "$tenant" && -n "$ns" && -n "$name" && "$name" != */* ]] || die "bad topic name: $topic"

  local code
  code="$(admin GET "/admin/v2/tenants/$tenant")"
  if [[ "$code" != 200 ]]; then
    code="$(admin PUT "/admin/v2/tenants/$tenant" '{"adminRoles":[],"allowedClusters":["standalone"]}')"
    expect "create tenant $tenant" "$code" 204 409 || return 1
  fi
  code="$(admin PUT "/admin/v2/namespaces/$tenant/$ns")"
  expect "create namespace $tenant/$ns" "$code" 204 409 || return 1
  code="$(admin POST "/admin/v2/namespaces/$tenant/$ns/retention" \
    '{"retentionTimeInMinutes":-1,"retentionSizeInMB":-1}')"
  expect "set infinite retention on $tenant/$ns" "$code" 204 || return 1
  code="$(admin POST "/admin/v2/namespaces/$tenant/$ns/deduplication" 'true')"
  expect "enable deduplication on $tenant/$ns" "$code" 204 || return 1
  code="$(admin PUT "/admin/v2/persistent/$tenant/$ns/$name")"
  expect "create topic persistent://$tenant/$ns/$name" "$code" 204 409 || return 1
  local flag=true
  [[ "$dedup" == off ]] && flag=false
  # Topic-level policies are stored in a system topic; right after start-up the
  # broker may answer 500/503 until that topic is ready, so retry briefly.
  local i
  for ((i = 0; i < 30; i++)); do
    code="$(admin POST "/admin/v2/persistent/$tenant/$ns/$name/deduplicationEnabled" "$flag")"
    [[ "$code" == 204 ]] && break
    sleep 1
  done
  expect "set deduplication $dedup on persistent://$tenant/$ns/$name" "$code" 204 || return 1
  log "topic ready: persistent://$tenant/$ns/$name (retention infinite, dedup $dedup)"
}

ensure_topics() {
  local t
  ensure_topic "$PULSAR_TOPIC"
  for t in ${PULSAR_EXTRA_TOPICS//,/ }; do
    ensure_topic "$t" on
  done
  for t in ${PULSAR_REST_TOPICS//,/ }; do
    ensure_topic "$t" off
  done
}

# ---------------------------------------------------------------- commands

cmd_start() {
  mkdir -p "$PULSAR_RUN_DIR"
  local pid
  if pid="$(running_pid)"; then
    log "already running (pid $pid)"
  elif healthy; then
    # Someone else's broker owns the web port: use it only when it also serves
    # our broker port, otherwise clients would connect to the wrong place.
    if ! curl -s -m 10 "$WEB_URL/admin/v2/brokers/configuration/runtime" |
      grep -q "\"brokerServicePort\":\"Optional\[$PULSAR_BROKER_PORT\]\""; then
      die "another broker answers on $WEB_URL but not with broker port $PULSAR_BROKER_PORT"
    fi
    log "a broker not started from $PULSAR_RUN_DIR already answers on $WEB_URL; using it"
  else
    rm -f "$PID_FILE"
    local t0=$SECONDS
    start_broker
    wait_healthy || exit 1
    log "healthy after $((SECONDS - t0))s (pid $(cat "$PID_FILE"))"
  fi
  wait_healthy || exit 1
  ensure_topics
  log "ready: pulsar://127.0.0.1:$PULSAR_BROKER_PORT  $WEB_URL"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    log "not running (no live pid in $PID_FILE)"
    return 0
  fi
  log "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + PULSAR_STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    log "still running after ${PULSAR_STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local pid
  if healthy; then
    pid="$(running_pid || echo "not ours")"
    log "healthy: pulsar://127.0.0.1:$PULSAR_BROKER_PORT $WEB_URL (pid $pid, log $LOG_FILE)"
    return 0
  fi
  if pid="$(running_pid)"; then
    log "running (pid $pid) but not healthy yet; log: $LOG_FILE"
  else
    log "not running"
  fi
  return 1
}

cmd_create_topic() {
  local dedup=on
  if [[ "${1:-}" == --rest ]]; then dedup=off; shift; fi
  [[ $# -eq 1 ]] || die "usage: $0 create-topic [--rest] TOPIC"
  healthy || die "no healthy broker on $WEB_URL (start it first)"
  mkdir -p "$PULSAR_RUN_DIR"
  ensure_topic "$1" "$dedup"
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    create-topic) cmd_create_topic "$@" ;;
    classpath) classpath_file ;;
    log-path) echo "$LOG_FILE" ;;
    *)
      echo "usage: $0 start|stop|status|create-topic [--rest] TOPIC|classpath|log-path" >&2
      exit 2
      ;;
  esac
}

main "$@"
