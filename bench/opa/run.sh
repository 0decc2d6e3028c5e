#!/usr/bin/env bash
# Compares one policy decision made in-process (BenchmarkDecision) with the
# same decision made through an OPA sidecar on loopback (BenchmarkSidecar,
# `opa run --server`, REST POST /v1/data/<package>), in the same
# `go test -bench` run, and prints the median ns/op of each and their ratio
# per shipped policy.
#
#   bench/opa/run.sh [COUNT] [BENCHTIME]     (defaults: 5 runs of 1s)
#
# Needs the opa binary: run `eval "$(.ci/opa.sh)"` first (or have opa in
# $PATH or $(go env GOPATH)/bin). On a 2-core machine other load skews the
# numbers: compare the ratio, and rerun when the machine is busy.
set -euo pipefail
cd "$(dirname "$0")/../.."

count="${1:-5}"
benchtime="${2:-1s}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

go test ./policy -run '^$' -bench '^Benchmark(Decision|Sidecar)$' -benchtime "$benchtime" -count "$count" | tee "$out" >&2

awk '
  /^Benchmark(Decision|Sidecar)\// {
    split($1, parts, "/"); kind = parts[1]; sub(/^Benchmark/, "", kind)
    name = parts[2]; sub(/-[0-9]+$/, "", name)
    key = kind SUBSEP name
    n[key]++; v[key, n[key]] = $3 + 0
    for (i = 4; i < NF; i++) if ($(i + 1) == "cpu-ns/op") c[key, n[key]] = $i + 0
    names[name] = 1
  }
  function median(key) { return med(key, 0) }
  function cpumedian(key) { return med(key, 1) }
  function med(key, cpu,    i, j, t, m, a) {
    m = n[key]
    for (i = 1; i <= m; i++) a[i] = cpu ? c[key, i] : v[key, i]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    if (m % 2) return a[(m + 1) / 2]
    return (a[m / 2] + a[m / 2 + 1]) / 2
  }
  END {
    # cpu-ns/op (the process CPU per decision; for the sidecar it includes the
    # OPA server) is steadier than wall time on a shared machine.
    printf "%-10s %16s %16s %8s %14s %14s %8s\n", "policy", "in-process ns/op", "sidecar ns/op", "ratio", "in-proc cpu-ns", "sidecar cpu-ns", "ratio"
    for (name in names) {
      d = median("Decision" SUBSEP name); dc = cpumedian("Decision" SUBSEP name)
      s = (("Sidecar" SUBSEP name) in n) ? median("Sidecar" SUBSEP name) : 0
      sc = (s > 0) ? cpumedian("Sidecar" SUBSEP name) : 0
      if (s > 0 && dc > 0) printf "%-10s %16.0f %16.0f %7.1fx %14.0f %14.0f %7.1fx\n", name, d, s, s / d, dc, sc, sc / dc
      else if (s > 0) printf "%-10s %16.0f %16.0f %7.1fx\n", name, d, s, s / d
      else printf "%-10s %16.0f %16s %8s\n", name, d, "skipped", "-"
    }
  }
' "$out"
