//go:build unix

package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/identity"
	"github.com/portcullis/portcullis/internal/confkit"
	"github.com/portcullis/portcullis/policy"
)

// benchNopRecorder accepts every event and keeps none: it isolates the
// proxy's own cost from the audit pipeline's.
type benchNopRecorder struct{}

func (benchNopRecorder) Record(context.Context, *audit.Event) error { return nil }
func (benchNopRecorder) Accepting() bool                            { return true }

// benchPortcullis builds the Handler the way the app does, with the real
// identity package (anonymous requests on a public route), the real policy
// engine with a one-line allow policy, metrics on a registry and JSON
// access-log lines written to io.Discard.
func benchPortcullis(b *testing.B, upstream string, rec audit.Recorder) *Handler {
	b.Helper()
	ctx := context.Background()
	dir := b.TempDir()
	polDir := filepath.Join(dir, "policies")
	if err := os.MkdirAll(polDir, 0o700); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(polDir, "bench.rego"), []byte("package portcullis.routes.bench\n\nallow := true\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	// A decision deadline far above the default 50ms: on a loaded machine
	// a scheduling stall would otherwise turn into a (correct) deny and
	// end the benchmark.
	engine, err := policy.NewEngine(policy.Config{Dir: polDir, DecisionTimeout: 5 * time.Second}, policy.Options{Logger: log, Registerer: reg})
	if err != nil {
		b.Fatal(err)
	}
	if err := engine.SetPackages([]string{"portcullis.routes.bench"}); err != nil {
		b.Fatal(err)
	}
	if err := engine.Reload(ctx); err != nil {
		b.Fatal(err)
	}

	icfg := identity.Config{
		ExternalURL: "https://auth.bench.test",
		Session:     identity.SessionConfig{Secrets: []string{"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}},
	}
	icfg.SetDefaults(dir)
	var acfg identity.AssertionConfig
	acfg.SetDefaults(dir)
	auth, err := identity.New(ctx, icfg, acfg, identity.Options{Logger: log})
	if err != nil {
		b.Fatal(err)
	}

	routes := []Route{{Name: "bench", Host: "app.bench.test", Path: "/", Upstream: upstream, Policy: "portcullis.routes.bench", Public: true}}
	routes[0].SetDefaults()
	var p confkit.Problems
	ValidateRoutes(&p, "routes", routes)
	if err := p.Err(); err != nil {
		b.Fatal(err)
	}
	var srv ServerConfig
	srv.SetDefaults()
	h, err := NewHandler(&State{Routes: routes, Server: srv, Auth: auth, Policy: engine, ExternalHost: "auth.bench.test"},
		Options{Logger: log, Registerer: reg, Audit: rec, AccessLog: true})
	if err != nil {
		b.Fatal(err)
	}
	return h
}

// benchAuditPipeline is the real audit pipeline in durable mode (spool,
// hash chain) shipping to a JSONL file sink in a temporary directory.
func benchAuditPipeline(b *testing.B) *audit.Pipeline {
	b.Helper()
	ctx := context.Background()
	dir := b.TempDir()
	cfg := audit.Config{Sink: audit.SinkFile, Mode: audit.ModeDurable}
	cfg.SetDefaults(dir)
	sink, err := audit.NewSink(ctx, cfg, audit.SinkOptions{})
	if err != nil {
		b.Fatal(err)
	}
	pl, err := audit.Open(ctx, cfg, dir, sink, audit.Options{})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- pl.Run(runCtx) }()
	b.Cleanup(func() {
		if err := pl.Close(ctx); err != nil {
			b.Errorf("closing the audit pipeline: %v", err)
		}
		cancel()
		<-done
	})
	return pl
}

// benchGET sends GETs one after another over a kept-alive connection and
// checks each answer.
func benchGET(b *testing.B, proxyURL, host string) {
	b.Helper()
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4}}
	defer client.CloseIdleConnections()
	get := func() {
		req, err := http.NewRequest(http.MethodGet, proxyURL+"/bench/page?q=1", nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != benchBody {
			b.Fatalf("status %d: %s", resp.StatusCode, body)
		}
	}
	get() // warm the connections on both hops
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := benchCPUTime(b)
	for b.Loop() {
		get()
	}
	b.ReportMetric(float64(benchCPUTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// benchCPUTime is the CPU time (user + system) this process has used. The
// client, the proxy and the upstream all run in the benchmark process, so
// per request it is the whole exchange's CPU cost; unlike ns/op it does not
// grow when other processes compete for the cores.
func benchCPUTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

const benchBody = `{"status":"ok","items":[1,2,3]}`

// BenchmarkProxiedGET measures one small proxied GET through Portcullis and
// through a bare httputil.ReverseProxy to the same upstream, in the same
// run. Both proxies listen on plain-HTTP loopback listeners (no TLS on
// either, so handshake and record costs do not hide the difference) and
// reach the upstream with the same transport settings (NewTransport). The
// ratio portcullis/bare is Portcullis's per-request overhead: request
// hygiene, routing, identity, a policy decision, identity-header scrubbing,
// metrics, the access-log line and the audit event. cpu-ns/op is the CPU
// the whole exchange (client, proxy, upstream) used per request: on a
// shared machine it is the steadier of the two for a ratio.
//
//	go test -run '^$' -bench BenchmarkProxiedGET -benchtime 20000x -count 3 ./proxy/
func BenchmarkProxiedGET(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, benchBody)
	}))
	defer up.Close()
	upURL, err := url.Parse(up.URL)
	if err != nil {
		b.Fatal(err)
	}

	b.Run("bare", func(b *testing.B) {
		rp := &httputil.ReverseProxy{
			Transport: NewTransport(),
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(upURL)
				pr.SetXForwarded()
			},
		}
		ps := httptest.NewServer(rp)
		defer ps.Close()
		benchGET(b, ps.URL, "app.bench.test")
	})
	b.Run("portcullis", func(b *testing.B) {
		ps := httptest.NewServer(benchPortcullis(b, up.URL, benchNopRecorder{}))
		defer ps.Close()
		benchGET(b, ps.URL, "app.bench.test")
	})
	b.Run("portcullis-audit-file", func(b *testing.B) {
		ps := httptest.NewServer(benchPortcullis(b, up.URL, benchAuditPipeline(b)))
		defer ps.Close()
		benchGET(b, ps.URL, "app.bench.test")
	})
}
