package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/internal/confkit"
	"github.com/portcullis/portcullis/proxy/certs"
)

// adminServer runs a whole proxy.Server (HTTPS, admin) on loopback with the
// real certificate manager (self-signed) and the real audit pipeline (file
// sink, best-effort mode) in a temporary directory.
type adminServer struct {
	https, admin, http string
	pipeline           *audit.Pipeline
	auditFile          string
}

func startAdminServer(t *testing.T, routes []Route) *adminServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()

	acfg := audit.Config{Sink: audit.SinkFile, Mode: audit.ModeBestEffort}
	acfg.SetDefaults(dir)
	sink, err := audit.NewSink(ctx, acfg, audit.SinkOptions{Logger: log, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	pl, err := audit.Open(ctx, acfg, dir, sink, audit.Options{Logger: log, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	plDone := make(chan error, 1)
	go func() { plDone <- pl.Run(ctx) }()

	var tcfg certs.Config
	tcfg.Mode = certs.ModeSelfSigned
	tcfg.SetDefaults(dir)
	cm, err := certs.New(ctx, tcfg, dir, certs.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for i := range routes {
		routes[i].SetDefaults()
		hosts = append(hosts, routes[i].Host)
	}
	if err := cm.SetHosts(ctx, hosts); err != nil {
		t.Fatal(err)
	}
	var p confkit.Problems
	ValidateRoutes(&p, "routes", routes)
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
	var srvCfg ServerConfig
	srvCfg.SetDefaults()
	h, err := NewHandler(&State{Routes: routes, Server: srvCfg, Auth: fakeAuth{}, Policy: fakePolicy{}, ExternalHost: "auth.test"},
		Options{Logger: log, Registerer: reg, Audit: pl})
	if err != nil {
		t.Fatal(err)
	}
	httpsLn, _ := net.Listen("tcp", "127.0.0.1:0")
	adminLn, _ := net.Listen("tcp", "127.0.0.1:0")
	httpLn, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &Server{
		Handler: h, TLS: cm, Server: srvCfg, Logger: log, Gatherer: reg,
		Ready: map[string]Check{
			"config": func(context.Context) error { return nil },
			"audit":  func(context.Context) error { return pl.Ready() },
			"note":   func(context.Context) error { return ReadyNote("spooling") },
		},
		HTTPSListener: httpsLn, AdminListener: adminLn, HTTPListener: httpLn,
	}
	started := srv.Started()
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("server stopped at start: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server.Run: %v", err)
		}
		pl.Close(context.Background())
		<-plDone
		cm.Close()
	})
	return &adminServer{https: httpsLn.Addr().String(), admin: adminLn.Addr().String(), http: httpLn.Addr().String(),
		pipeline: pl, auditFile: acfg.File.Path}
}

func (s *adminServer) client() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
			ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", s.https)
			},
		},
	}
}

func adminGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.Header.Get("X-Request-Id") == "" {
		t.Errorf("%s: no X-Request-Id", url)
	}
	return resp.StatusCode, string(b)
}

// adminMetricValue finds the sample of name whose labels include every
// pair in labels (name="value" strings), in the text exposition format.
func adminMetricValue(t *testing.T, exposition, name string, labels ...string) (float64, bool) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	for _, m := range re.FindAllStringSubmatch(exposition, -1) {
		ok := true
		for _, l := range labels {
			if !strings.Contains(m[1], l) {
				ok = false
				break
			}
		}
		if ok {
			v, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				t.Fatalf("%s: %v", m[0], err)
			}
			return v, true
		}
	}
	return 0, false
}

func TestAdminEndpoints(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	s := startAdminServer(t, []Route{
		{Name: "app", Host: "app.test", Upstream: up.URL, Policy: "portcullis.routes.app"},
		{Name: "slow", Host: "slow.test", Upstream: slow.URL, Policy: "portcullis.routes.app", Timeout: 200 * time.Millisecond},
		{Name: "dead", Host: "dead.test", Upstream: deadURL, Policy: "portcullis.routes.app"},
		{Name: "narrow", Host: "narrow.test", Path: "/only", Upstream: up.URL, Policy: "portcullis.routes.app"},
	})
	admin := "http://" + s.admin

	if code, body := adminGet(t, admin+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d %s", code, body)
	}
	code, body := adminGet(t, admin+"/readyz")
	if code != 200 {
		t.Errorf("/readyz = %d %s, want 200", code, body)
	}
	var checks map[string]string
	if err := json.Unmarshal([]byte(body), &checks); err != nil || checks["audit"] != "ok" || checks["config"] != "ok" || checks["note"] != "ok: spooling" {
		t.Errorf("/readyz body = %s (%v), want every check ok (a noted one with its note)", body, err)
	}

	// Traffic of every kind: allowed, denied, no route (on a host that has
	// a certificate), unreachable and timed-out upstreams.
	c := s.client()
	for _, tc := range []struct {
		host, path string
		want       int
	}{
		{"app.test", "/a", 200}, {"app.test", "/b", 200}, {"app.test", "/deny/x", 403},
		{"narrow.test", "/elsewhere", 404}, {"dead.test", "/", 502}, {"slow.test", "/", 504},
	} {
		req, _ := http.NewRequest("GET", "https://"+tc.host+"/"+strings.TrimPrefix(tc.path, "/"), nil)
		req.Header.Set("Authorization", "Test alice")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Fatalf("%s%s: status %d, want %d", tc.host, tc.path, resp.StatusCode, tc.want)
		}
	}

	code, metrics := adminGet(t, admin+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	for _, m := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"portcullis_requests_total", []string{`route="app"`, `code="200"`, `decision="allow"`}, 2},
		{"portcullis_requests_total", []string{`route="app"`, `code="403"`, `decision="deny"`}, 1},
		{"portcullis_requests_total", []string{`route=""`, `code="404"`, `decision="deny"`}, 1},
		{"portcullis_requests_total", []string{`route="dead"`, `code="502"`, `decision="allow"`}, 1},
		{"portcullis_requests_total", []string{`route="slow"`, `code="504"`, `decision="allow"`}, 1},
		{"portcullis_request_duration_seconds_count", []string{`route="app"`}, 3},
		{"portcullis_request_duration_seconds_bucket", []string{`route="app"`, `le="+Inf"`}, 3},
		{"portcullis_upstream_errors_total", []string{`route="dead"`, `kind="unreachable"`}, 1},
		{"portcullis_upstream_errors_total", []string{`route="slow"`, `kind="timeout"`}, 1},
		{"portcullis_requests_in_flight", nil, 0},
	} {
		got, ok := adminMetricValue(t, metrics, m.name, m.labels...)
		if !ok || got != m.want {
			t.Errorf("%s%v = %v (found %v), want %v", m.name, m.labels, got, ok, m.want)
		}
	}
	// The latency histogram has buckets below a second for a route.
	if n := strings.Count(metrics, `portcullis_request_duration_seconds_bucket{route="app"`); n < 10 {
		t.Errorf("latency histogram of route app has %d buckets", n)
	}
	// The slow route's 504 took at least its 200ms timeout.
	if v, _ := adminMetricValue(t, metrics, "portcullis_request_duration_seconds_sum", `route="slow"`); v < 0.2 {
		t.Errorf("slow route latency sum = %v, want >= 0.2s", v)
	}

	// A pipeline that no longer takes events makes the proxy unready, and
	// /readyz names the check.
	if err := s.pipeline.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	code, body = adminGet(t, admin+"/readyz")
	if code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with audit closed = %d %s, want 503", code, body)
	}
	checks = nil
	if err := json.Unmarshal([]byte(body), &checks); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	if checks["config"] != "ok" || checks["audit"] == "ok" || !strings.Contains(checks["audit"], "audit") {
		t.Errorf("/readyz body = %s, want audit failing with its error and config ok", body)
	}
	// Liveness does not depend on readiness.
	if code, body := adminGet(t, admin+"/healthz"); code != 200 {
		t.Errorf("/healthz while unready = %d %s", code, body)
	}
}

// event returns the audit event of request id, once the file sink has it.
func (s *adminServer) event(t *testing.T, id string) audit.Event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(s.auditFile)
		for _, line := range strings.Split(string(b), "\n") {
			var ev audit.Event
			if json.Unmarshal([]byte(line), &ev) == nil && ev.RequestID == id {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no audit event for request %s", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPlainHTTPAndOptionsStarAreAudited: answers on listen.http (the
// redirect to https) and to "OPTIONS *" carry an X-Request-Id and are
// audited, like every request that reaches Portcullis.
func TestPlainHTTPAndOptionsStarAreAudited(t *testing.T) {
	s := startAdminServer(t, []Route{{Name: "app", Host: "app.test", Path: "/", Upstream: "http://127.0.0.1:9", Policy: "portcullis.routes.app"}})
	c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", "http://"+s.http+"/docs?x=1", nil)
	req.Host = "app.test"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id := resp.Header.Get("X-Request-Id")
	if resp.StatusCode != http.StatusPermanentRedirect || id == "" || resp.Header.Get("Location") != "https://app.test/docs?x=1" {
		t.Fatalf("plain HTTP: %d, X-Request-Id %q, Location %q; want 308 to https with a request id", resp.StatusCode, id, resp.Header.Get("Location"))
	}
	ev := s.event(t, id)
	if ev.Decision != "allow" || ev.Response.Status != 308 || ev.Route != "app" || ev.Request.Path != "/docs" || ev.Reason != "plain HTTP: redirected to https" {
		t.Errorf("plain HTTP event: %+v", ev)
	}

	conn, err := tls.Dial("tcp", s.https, &tls.Config{InsecureSkipVerify: true, ServerName: "app.test", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "OPTIONS * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
	resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id = resp.Header.Get("X-Request-Id")
	if resp.StatusCode != http.StatusBadRequest || id == "" {
		t.Fatalf("OPTIONS *: %d with X-Request-Id %q, want 400 with one", resp.StatusCode, id)
	}
	if ev := s.event(t, id); ev.Response.Status != 400 || ev.Decision != "deny" {
		t.Errorf("OPTIONS * event: %+v", ev)
	}
}
