#!/usr/bin/env bash
# Compares one policy decision made in-process with the same decision made
# through an OPA sidecar on loopback (BenchmarkSidecar, `opa run --server`,
# REST POST /v1/data/<package>), in the same `go test -bench` run, and
# prints the median ns/op of each and their ratio per shipped policy.
# In-process is measured twice: as the proxy makes a repeated decision
# (BenchmarkDecision: answered from the decision cache wherever the package
# allows it) and evaluated by OPA every time (BenchmarkDecisionEvaluated,
# decision cache off: the cost of an input the package has not seen).
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

go test ./policy -run '^$' -bench '^Benchmark(Decision|DecisionEvaluated|Sidecar)$' -benchtime "$benchtime" -count "$count" | tee "$out" >&2

awk '
  /^Benchmark(Decision|DecisionEvaluated|Sidecar)\// {
    split($1, parts, "/"); kind = parts[1]; sub(/^Benchmark/, "", kind)
    name = parts[2]; sub(/-[0-9]+$/, "", name)
    key = kind SUBSEP name
    n[key]++; v[key, n[key]] = $3 + 0
    for (i = 4; i < NF; i++) if ($(i + 1) == "cpu-ns/op") c[key, n[key]] = $i + 0
    names[name] = 1
  }
  function med(key, cpu,    i, j, t, m, a) {
    m = n[key]
    if (m == 0) return 0
    for (i = 1; i <= m; i++) a[i] = cpu ? c[key, i] : v[key, i]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    if (m % 2) return a[(m + 1) / 2]
    return (a[m / 2] + a[m / 2 + 1]) / 2
  }
  function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.1fx", a / b) : "-" }
  END {
    # ns/op is wall time per decision; cpu-ns/op (the process CPU per
    # decision; for the sidecar it includes the OPA server) is steadier on a
    # shared machine. Ratios: sidecar over evaluated, sidecar over cached.
    printf "%-9s %12s %12s %12s %9s %9s | %12s %12s %12s %9s\n", "policy", "cached ns", "evaluated ns", "sidecar ns", "sc/eval", "sc/cache", "cached cpu", "eval cpu", "sidecar cpu", "sc/eval"
    for (name in names) {
      d = med("Decision" SUBSEP name, 0); e = med("DecisionEvaluated" SUBSEP name, 0); s = med("Sidecar" SUBSEP name, 0)
      dc = med("Decision" SUBSEP name, 1); ec = med("DecisionEvaluated" SUBSEP name, 1); sc = med("Sidecar" SUBSEP name, 1)
      printf "%-9s %12.0f %12.0f %12s %9s %9s | %12.0f %12.0f %12s %9s\n", name, d, e, (s > 0 ? sprintf("%.0f", s) : "skipped"), ratio(s, e), ratio(s, d), dc, ec, (sc > 0 ? sprintf("%.0f", sc) : "-"), ratio(sc, ec)
    }
  }
' "$out"
