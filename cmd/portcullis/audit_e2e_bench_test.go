//go:build unix

package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/internal/config"
	"github.com/portcullis/portcullis/internal/idtest"
	"github.com/portcullis/portcullis/internal/pulsartest"
	"github.com/portcullis/portcullis/proxy"
)

// aeDiscard is a Recorder that records nothing: the proxy without audit.
type aeDiscard struct{}

func (aeDiscard) Record(context.Context, *audit.Event) error { return nil }
func (aeDiscard) Accepting() bool                            { return true }

var _ audit.Recorder = aeDiscard{}

// aeBenchApp runs the whole app (the one `serve` runs) for a benchmark and
// returns a client for its HTTPS listener and the app. With discard, the
// proxy handler is rebuilt around aeDiscard instead of the pipeline.
func aeBenchApp(b *testing.B, yaml string, discard bool) (*http.Client, *app) {
	b.Helper()
	s := &stack{Dir: b.TempDir()}
	lns := make([]net.Listener, 3)
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		lns[i] = ln
	}
	s.HTTPS, s.HTTP, s.Admin = lns[0].Addr().String(), lns[1].Addr().String(), lns[2].Addr().String()
	s.CfgPath = filepath.Join(s.Dir, "config.yaml")
	if err := os.WriteFile(s.CfgPath, []byte(s.expand(yaml)), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg, err := config.Load(s.CfgPath, nil)
	if err != nil {
		b.Fatal(err)
	}
	opts := appOptions{Logger: slog.New(slog.DiscardHandler), HTTPS: lns[0], HTTP: lns[1], Admin: lns[2]}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := newApp(ctx, cfg, s.CfgPath, opts)
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	if discard {
		st, err := a.buildState(ctx, cfg, opts)
		if err != nil {
			b.Fatal(err)
		}
		h, err := proxy.NewHandler(st, proxy.Options{Logger: opts.Logger, Registerer: prometheus.NewRegistry(), Audit: aeDiscard{}})
		if err != nil {
			b.Fatal(err)
		}
		a.handler, a.server.Handler = h, h
	}
	started := a.server.Started()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, opts) }()
	select {
	case <-started:
	case err := <-done:
		cancel()
		b.Fatalf("app stopped at start: %v", err)
	}
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("app.Run: %v", err)
		}
	})
	https := s.HTTPS
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
			MaxIdleConnsPerHost: 64,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", https)
			},
		},
	}
	return client, a
}

// aeCPUTime is the CPU time (user and system) this process has used: the
// client, the proxy, the upstream and the audit pipeline together. Unlike
// ns/op it hardly moves when other processes compete for the cores.
func aeCPUTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkProxiedGETAudit measures a GET through the whole proxy (TLS,
// routing, authentication of an anonymous request, policy, forwarding to a
// loopback upstream) with audit off (a recorder that discards) and on
// (the real pipeline in durable mode: an fsync'd spool with group commit,
// then a file or Pulsar sink), from one client (each request waits for its
// own spool fsync) and from 16 concurrent clients (group commit shares
// them). fsyncs/op is the share of a spool commit each request paid,
// cpu-µs/op the CPU time of the whole process per request.
//
//	go test -run '^$' -bench BenchmarkProxiedGETAudit -benchtime 5000x ./cmd/portcullis/
func BenchmarkProxiedGETAudit(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello")
	}))
	defer up.Close()
	idp := idtest.NewProvider(b)
	policies := aeWritePolicies(b)
	route := aeOpenRoute("bench", "bench.example.test", up.URL)
	fileAudit := "  sink: file\n  file:\n    path: {{DATA}}/audit.jsonl\n  mode: durable\n"

	cases := []struct {
		name    string
		audit   func(b *testing.B) string
		discard bool
	}{
		{"audit=off", func(*testing.B) string { return fileAudit }, true},
		{"audit=on/sink=file", func(*testing.B) string { return fileAudit }, false},
		{"audit=on/sink=pulsar", func(b *testing.B) string {
			brokerURL, adminURL := pulsartest.Require(b)
			return aePulsarAudit(brokerURL, pulsartest.NewTopic(b, adminURL), "durable", "")
		}, false},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			client, a := aeBenchApp(b, aeConfig(idp, policies, tc.audit(b), route), tc.discard)
			url := "https://bench.example.test" + ":" + portOf(a.cfg.Listen.HTTPS) + "/item"
			get := func() error {
				resp, err := client.Get(url)
				if err != nil {
					return err
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					b.Errorf("status %d", resp.StatusCode)
				}
				return err
			}
			// Warm up connections, the policy and (Pulsar) the producer.
			for range 50 {
				if err := get(); err != nil {
					b.Fatal(err)
				}
			}
			for _, clients := range []int{1, 16} {
				b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
					var before audit.SpoolStats
					if sp := a.pipeline.Spool(); sp != nil {
						before = sp.Stats()
					}
					cpu0 := aeCPUTime(b)
					b.ReportAllocs()
					b.ResetTimer()
					if clients == 1 {
						for range b.N {
							if err := get(); err != nil {
								b.Fatal(err)
							}
						}
					} else {
						b.SetParallelism(max(1, clients/runtime.GOMAXPROCS(0)))
						b.RunParallel(func(pb *testing.PB) {
							for pb.Next() {
								if err := get(); err != nil {
									b.Error(err)
									return
								}
							}
						})
					}
					b.StopTimer()
					b.ReportMetric(float64((aeCPUTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
					if sp := a.pipeline.Spool(); sp != nil && !tc.discard {
						after := sp.Stats()
						b.ReportMetric(float64(after.Commits-before.Commits)/float64(b.N), "fsyncs/op")
					}
				})
			}
		})
	}
}
