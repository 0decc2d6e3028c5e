package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/internal/config"
)

// stack is a whole Portcullis (the same app `serve` runs) on loopback
// listeners, built from a YAML config written to a temporary directory.
// Tests fill in {{HTTPS}}, {{HTTP}}, {{ADMIN}}, {{DATA}} placeholders.
type stack struct {
	t        *testing.T
	Dir      string // temporary directory holding config.yaml and data/
	CfgPath  string
	HTTPS    string // host:port of the HTTPS listener
	HTTP     string
	Admin    string
	App      *app
	Logs     *syncBuffer
	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
}

// syncBuffer collects log output safely across goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// expand replaces the harness placeholders in a config template.
func (s *stack) expand(yaml string) string {
	_, port, _ := net.SplitHostPort(s.HTTPS)
	return strings.NewReplacer(
		"{{HTTPS_PORT}}", port,
		"{{HTTPS}}", s.HTTPS, "{{HTTP}}", s.HTTP, "{{ADMIN}}", s.Admin,
		"{{DATA}}", filepath.Join(s.Dir, "data"), "{{DIR}}", s.Dir,
	).Replace(yaml)
}

// newStack writes the config and prepares listeners; Start runs it.
// opts may carry an HTTPClient for identity providers.
func newStack(t *testing.T, yaml string) *stack {
	t.Helper()
	s := &stack{t: t, Dir: t.TempDir(), Logs: &syncBuffer{}}
	s.CfgPath = filepath.Join(s.Dir, "config.yaml")
	https, http1, admin := listenLoopback(t), listenLoopback(t), listenLoopback(t)
	s.HTTPS, s.HTTP, s.Admin = https.Addr().String(), http1.Addr().String(), admin.Addr().String()
	// Listeners are closed and re-bound by address so a restarted stack
	// can reuse them.
	https.Close()
	http1.Close()
	admin.Close()
	s.WriteConfig(yaml)
	return s
}

// WriteConfig (re)writes the config file from a template.
func (s *stack) WriteConfig(yaml string) {
	s.t.Helper()
	if err := os.WriteFile(s.CfgPath, []byte(s.expand(yaml)), 0o600); err != nil {
		s.t.Fatal(err)
	}
}

// Start runs the app until the test ends (or Stop is called) and waits
// until its listeners are bound.
func (s *stack) Start(opts appOptions) {
	s.t.Helper()
	cfg, err := config.Load(s.CfgPath, nil)
	if err != nil {
		s.t.Fatalf("config: %v", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(io.MultiWriter(s.Logs, testLogWriter{s.t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	for _, l := range []struct {
		addr string
		ln   *net.Listener
	}{{s.HTTPS, &opts.HTTPS}, {s.HTTP, &opts.HTTP}, {s.Admin, &opts.Admin}} {
		var ln net.Listener
		deadline := time.Now().Add(5 * time.Second)
		for {
			ln, err = net.Listen("tcp", l.addr)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			s.t.Fatalf("listen %s: %v", l.addr, err)
		}
		*l.ln = ln
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := newApp(ctx, cfg, s.CfgPath, opts)
	if err != nil {
		cancel()
		opts.HTTPS.Close()
		opts.HTTP.Close()
		opts.Admin.Close()
		s.t.Fatalf("newApp: %v", err)
	}
	s.App, s.cancel, s.done = a, cancel, make(chan error, 1)
	s.stopOnce = sync.Once{}
	started := a.server.Started()
	go func() { s.done <- a.Run(ctx, opts) }()
	select {
	case <-started:
	case err := <-s.done:
		s.t.Fatalf("app stopped at start: %v", err)
	case <-time.After(20 * time.Second):
		s.t.Fatal("app did not start within 20s")
	}
	s.t.Cleanup(s.Stop)
}

// Stop shuts the app down gracefully and waits for it.
func (s *stack) Stop() {
	s.stopOnce.Do(func() {
		if s.cancel == nil {
			return
		}
		s.cancel()
		select {
		case err := <-s.done:
			if err != nil {
				s.t.Errorf("app.Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			s.t.Error("app did not stop within 30s")
		}
	})
}

// Client returns an HTTP client that trusts nothing but skips verification
// (the proxy's certificates are tested in proxy/certs), dials the HTTPS
// listener for every host, keeps cookies and does not follow redirects.
func (s *stack) Client() *http.Client {
	jar, _ := cookiejar.New(nil)
	addr := s.HTTPS
	return &http.Client{
		Jar:     jar,
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
			ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// URL is https://host:port/path for a route host on the HTTPS listener.
func (s *stack) URL(host, path string) string {
	_, port, _ := net.SplitHostPort(s.HTTPS)
	return fmt.Sprintf("https://%s:%s%s", host, port, path)
}

// testLogWriter sends app logs to t.Log so failures show them.
type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
