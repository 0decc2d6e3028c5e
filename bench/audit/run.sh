#!/usr/bin/env bash
# Audit throughput into a real Pulsar broker: BenchmarkPulsarThroughput
# (audit/pulsar_bench_test.go) run in COUNT rounds, each running every
# variant once in turn (bare producer loop, sink, drain, pipeline durable /
# best-effort / durable with 512 requests in flight), and prints for each
# variant the median events/s, the median machine CPU per event, and its
# ratio to the bare pulsar-client-go loop: the median of the per-round
# ratios (each variant against the bare loop of the same round, which
# cancels the drift of a shared machine) and the ratio of the medians.
#
#   bench/audit/run.sh [COUNT] [EVENTS]     (defaults: 5 rounds of 200000 events)
#
# Starts the CI broker (.ci/pulsar.sh) unless one answers, and stops it
# again if it started it. That broker shares the machine's cores with the
# benchmark: on 2 cores every variant is bound by the CPU that client and
# broker spend per event together (the machine-cpu column). To measure
# against a broker on its own machine, set PORTCULLIS_PULSAR_URL and
# PORTCULLIS_PULSAR_ADMIN_URL (pulsar://HOST:6650, http://HOST:8080):
# nothing is started then, and machine-cpu is this machine's alone.
set -euo pipefail
cd "$(dirname "$0")/../.."

count="${1:-5}"
events="${2:-200000}"
out="$(mktemp)"
started=""
cleanup() {
  rm -f "$out" "$out.test"
  if [[ -n "$started" ]]; then bash .ci/pulsar.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if [[ -z "${PORTCULLIS_PULSAR_URL:-}" ]] && ! bash .ci/pulsar.sh status >/dev/null 2>&1; then
  bash .ci/pulsar.sh start >&2
  started=1
fi

# One go test per round (-count would run each variant COUNT times in a
# row, so a drift of the shared machine would land on one variant).
go test -c -o "$out.test" ./audit >&2
# A broker the script just started runs cold (JIT) for a while: one round
# first, its figures discarded.
echo "bench/audit: warm-up round (discarded)" >&2
(cd audit && "$out.test" -test.run '^$' -test.bench '^BenchmarkPulsarThroughput$' -test.benchtime "${events}x") >/dev/null
for ((round = 1; round <= count; round++)); do
  echo "bench/audit: round $round of $count" >&2
  (cd audit && "$out.test" -test.run '^$' -test.bench '^BenchmarkPulsarThroughput$' -test.benchtime "${events}x") | tee -a "$out" >&2
done

awk '
  /^BenchmarkPulsarThroughput\// {
    name = $1; sub(/^BenchmarkPulsarThroughput\//, "", name); sub(/-[0-9]+$/, "", name)
    k = ++n[name]
    if (!(name in seen)) { seen[name] = 1; order[++nv] = name }
    for (i = 3; i < NF; i++) {
      if ($(i + 1) == "events/s") ev[name, k] = $i + 0
      if ($(i + 1) == "machine-cpu-µs/event") cpu[name, k] = $i + 0
    }
  }
  function med(a, m,    i, j, t) {
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    if (m == 0) return 0
    if (m % 2) return a[(m + 1) / 2]
    return (a[m / 2] + a[m / 2 + 1]) / 2
  }
  END {
    printf "%-24s %6s %12s %16s %14s %14s\n", "variant", "rounds", "events/s", "machine-cpu-µs", "x bare (rounds)", "x bare (medians)"
    delete a; for (k = 1; k <= n["bare"]; k++) a[k] = ev["bare", k]
    bare = med(a, n["bare"])
    for (v = 1; v <= nv; v++) {
      name = order[v]; m = n[name]
      delete a; for (k = 1; k <= m; k++) a[k] = ev[name, k]
      e = med(a, m)
      delete a; for (k = 1; k <= m; k++) a[k] = cpu[name, k]
      c = med(a, m)
      delete a; r = 0
      for (k = 1; k <= m; k++) if (ev["bare", k] > 0) a[++r] = ev[name, k] / ev["bare", k]
      printf "%-24s %6d %12.0f %16.2f %14.0f%% %14.0f%%\n", name, m, e, c, 100 * med(a, r), (bare > 0 ? 100 * e / bare : 0)
    }
  }
' "$out"
