package main

import (
	"fmt"
	"io"
	"slices"
	"time"
)

// summary is the median over rounds of each measure of one target (each
// measure on its own, so a row need not come from one round).
type summary struct {
	rounds                   int
	rps                      float64
	p50, p90, p99, cpuPerReq time.Duration
	clientCPU                float64
	upConns                  int
}

func summarize(rs []result) summary {
	pick := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		return median(v)
	}
	dur := func(f func(result) time.Duration) time.Duration {
		return time.Duration(pick(func(r result) float64 { return float64(f(r)) }))
	}
	return summary{
		rounds:    len(rs),
		rps:       pick(func(r result) float64 { return r.rps }),
		p50:       dur(func(r result) time.Duration { return r.p50 }),
		p90:       dur(func(r result) time.Duration { return r.p90 }),
		p99:       dur(func(r result) time.Duration { return r.p99 }),
		cpuPerReq: dur(func(r result) time.Duration { return r.cpuPerReq }),
		clientCPU: pick(func(r result) float64 { return r.clientCPU }),
		upConns:   int(pick(func(r result) float64 { return float64(r.upConns) })),
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// report prints the medians per target and the ratios between them.
func report(w io.Writer, targets []*target) {
	sums := map[string]summary{}
	fmt.Fprintf(w, "%-24s %8s %8s %8s %8s %14s %17s %14s\n", "medians over rounds", "req/s", "p50", "p90", "p99", "proxy CPU/req", "new upstr. conns", "load gen. CPU")
	for _, t := range targets {
		if t.skipped != "" {
			fmt.Fprintf(w, "%-24s skipped: %s\n", t.name, t.skipped)
			continue
		}
		s := summarize(t.results)
		sums[t.name] = s
		fmt.Fprintf(w, "%-24s %8.0f %8s %8s %8s %14s %17d %13.0f%%\n", t.name, s.rps, fmtDur(s.p50), fmtDur(s.p90), fmtDur(s.p99), fmtDur(s.cpuPerReq), s.upConns, 100*s.clientCPU)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-24s %8s %8s %8s %8s %14s\n", "ratios of the medians", "req/s", "p50", "p90", "p99", "proxy CPU/req")
	for _, pair := range [][2]string{{"portcullis", "bare"}, {"oauth2-proxy", "bare"}, {"portcullis", "oauth2-proxy"}} {
		a, okA := sums[pair[0]]
		b, okB := sums[pair[1]]
		name := pair[0] + "/" + pair[1]
		if !okA || !okB {
			fmt.Fprintf(w, "%-24s %8s %8s %8s %8s %14s\n", name, "-", "-", "-", "-", "-")
			continue
		}
		fmt.Fprintf(w, "%-24s %8s %8s %8s %8s %14s\n", name, ratio(a.rps, b.rps),
			ratio(float64(a.p50), float64(b.p50)), ratio(float64(a.p90), float64(b.p90)),
			ratio(float64(a.p99), float64(b.p99)), ratio(float64(a.cpuPerReq), float64(b.cpuPerReq)))
	}
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}
