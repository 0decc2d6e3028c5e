package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis/portcullis/internal/idtest"
)

// rlConfig is baseConfig with a policy directory of its own (one package
// that allows everyone, so anonymous requests to public routes pass) and
// the given routes section.
func rlConfig(idp *idtest.Provider, routes string) string {
	return stackConfig{IDP: idp, PolicyDir: "{{DIR}}/policies"}.YAML() + routes
}

// rlWritePolicies writes the policy directory rlConfig names.
func rlWritePolicies(t *testing.T, s *stack) {
	t.Helper()
	dir := filepath.Join(s.Dir, "policies")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "open.rego"), []byte("package portcullis.routes.open\n\nallow := true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func rlRoute(name, host, upstream string) string {
	return fmt.Sprintf(`
  - name: %s
    host: %s
    path: /
    upstream: %s
    policy: portcullis.routes.open
    public: true
`, name, host, upstream)
}

// rlUpstream answers "<name>:<path>", and on /stream sends one SSE event,
// waits for release, then sends a second one and ends the response.
type rlUpstream struct {
	*httptest.Server
	name    string
	release chan struct{}
}

func newRLUpstream(t *testing.T, name string) *rlUpstream {
	u := &rlUpstream{name: name, release: make(chan struct{})}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stream" {
			io.WriteString(w, name+":"+r.URL.Path)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: %s first\n\n", name)
		w.(http.Flusher).Flush()
		select {
		case <-u.release:
		case <-r.Context().Done():
			return
		}
		fmt.Fprintf(w, "data: %s second\n\n", name)
	}))
	t.Cleanup(u.Close)
	return u
}

// rlGet returns the status and body of one GET through the proxy.
func rlGet(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// rlWaitBody polls url until it answers 200 with want, or fails the test.
func rlWaitBody(t *testing.T, c *http.Client, url, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body := rlGet(t, c, url)
		if code == 200 && body == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %d %q, want 200 %q", url, code, body, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rlWaitLog waits until the app's log holds n lines containing sub.
func rlWaitLog(t *testing.T, s *stack, sub string, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for strings.Count(s.Logs.String(), sub) < n {
		if time.Now().After(deadline) {
			t.Fatalf("log has %d lines with %q, want %d", strings.Count(s.Logs.String(), sub), sub, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rlMetric reads one sample from the admin /metrics page: the series name
// with labels exactly as exposed (labels sorted by name), e.g.
// portcullis_config_reloads_total{result="ok"}. Missing series read as 0.
func rlMetric(t *testing.T, s *stack, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestReloadSwapsRoutesWhileStreamingRequestCompletes(t *testing.T) {
	a, b, c := newRLUpstream(t, "A"), newRLUpstream(t, "B"), newRLUpstream(t, "C")
	idp := idtest.NewProvider(t)
	s := newStack(t, rlConfig(idp, "routes:"+rlRoute("app", "app.example.test", a.URL)))
	rlWritePolicies(t, s)
	s.Start(appOptions{})
	client := s.Client()
	appURL := s.URL("app.example.test", "/x")
	if code, body := rlGet(t, client, appURL); code != 200 || body != "A:/x" {
		t.Fatalf("before reload: %d %q", code, body)
	}

	// A streaming response from the old route's upstream is in flight.
	resp, err := client.Get(s.URL("app.example.test", "/stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("stream: status %d over HTTP/%d", resp.StatusCode, resp.ProtoMajor)
	}
	stream := bufio.NewReader(resp.Body)
	if line, err := stream.ReadString('\n'); err != nil || line != "data: A first\n" {
		t.Fatalf("first event = %q, %v", line, err)
	}

	// 1. The config file changes: fsnotify reloads it. The route now goes
	// to B and a new host appears.
	s.WriteConfig(rlConfig(idp, "routes:"+rlRoute("app", "app.example.test", b.URL)+rlRoute("new", "new.example.test", c.URL)))
	rlWaitBody(t, client, appURL, "B:/x")
	rlWaitLog(t, s, "configuration file changed: reloading", 1)
	if code, body := rlGet(t, client, s.URL("new.example.test", "/y")); code != 200 || body != "C:/y" {
		t.Errorf("new route after reload: %d %q", code, body)
	}

	// The stream that started before the swap completes intact, from the
	// upstream it started with.
	close(a.release)
	rest, err := io.ReadAll(stream)
	if err != nil {
		t.Fatalf("stream broken after the swap: %v", err)
	}
	if string(rest) != "\ndata: A second\n\n" {
		t.Errorf("rest of the stream = %q", rest)
	}

	// 2. Reload as SIGHUP does it: the swap is done when Reload returns.
	s.WriteConfig(rlConfig(idp, "routes:"+rlRoute("app", "app.example.test", c.URL)))
	if err := s.App.Reload(context.Background(), appOptions{}); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if code, body := rlGet(t, client, appURL); code != 200 || body != "C:/x" {
		t.Errorf("right after Reload: %d %q, want C:/x", code, body)
	}
	if code, _ := rlGet(t, client, s.URL("new.example.test", "/y")); code != http.StatusNotFound {
		t.Errorf("removed route still answers %d", code)
	}

	// 3. A real SIGHUP reaches the app's handler. Notify here too so a
	// signal sent before the app subscribed cannot end the test process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(s.Logs.String(), "SIGHUP: reloading configuration") {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not reload")
		}
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		time.Sleep(200 * time.Millisecond)
	}
	if code, body := rlGet(t, client, appURL); code != 200 || body != "C:/x" {
		t.Errorf("after SIGHUP: %d %q", code, body)
	}
	if v := rlMetric(t, s, `portcullis_config_reloads_total{result="ok"}`); v < 3 {
		t.Errorf("reloads ok = %v, want >= 3", v)
	}
	if v := rlMetric(t, s, `portcullis_config_reloads_total{result="error"}`); v != 0 {
		t.Errorf("reloads error = %v, want 0", v)
	}
}

func TestBrokenReloadKeepsTheOldConfig(t *testing.T) {
	a, b := newRLUpstream(t, "A"), newRLUpstream(t, "B")
	idp := idtest.NewProvider(t)
	s := newStack(t, rlConfig(idp, "routes:"+rlRoute("app", "app.example.test", a.URL)))
	rlWritePolicies(t, s)
	s.Start(appOptions{})
	client := s.Client()
	appURL := s.URL("app.example.test", "/x")
	if code, body := rlGet(t, client, appURL); code != 200 || body != "A:/x" {
		t.Fatalf("before reload: %d %q", code, body)
	}

	// A new config that would send the route to B, with a misspelt key
	// and an invalid value.
	broken := rlConfig(idp, "routes:"+rlRoute("app", "app.example.test", b.URL)+
		"    upstraem: "+b.URL+"\n    timeout: soon\n")
	s.WriteConfig(broken)
	rlWaitLog(t, s, "reload failed: the previous configuration keeps serving", 1)
	logs := s.Logs.String()
	for _, want := range []string{"routes[0].upstraem", "routes[0].timeout"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the reload failure does not name %s:\n%s", want, logs)
		}
	}
	// The old routes keep serving, and the proxy stays ready.
	for range 3 {
		if code, body := rlGet(t, client, appURL); code != 200 || body != "A:/x" {
			t.Fatalf("after a broken reload: %d %q, want the old route's A:/x", code, body)
		}
	}
	if code, body := rlGet(t, http.DefaultClient, "http://"+s.Admin+"/readyz"); code != 200 {
		t.Errorf("/readyz after a broken reload = %d %s", code, body)
	}
	if v := rlMetric(t, s, `portcullis_config_reloads_total{result="error"}`); v < 1 {
		t.Errorf("reloads error = %v, want >= 1", v)
	}
	if v := rlMetric(t, s, `portcullis_config_reloads_total{result="ok"}`); v != 0 {
		t.Errorf("reloads ok = %v, want 0", v)
	}
	// SIGHUP's path reports the same problems to its caller.
	if err := s.App.Reload(context.Background(), appOptions{}); err == nil ||
		!strings.Contains(err.Error(), "routes[0].upstraem") || !strings.Contains(err.Error(), "routes[0].timeout") {
		t.Errorf("Reload of the broken file = %v, want both problems", err)
	}

	// Fixing the file brings the new routes in.
	s.WriteConfig(rlConfig(idp, "routes:"+rlRoute("app", "app.example.test", b.URL)))
	rlWaitBody(t, client, appURL, "B:/x")
	if v := rlMetric(t, s, `portcullis_config_reloads_total{result="ok"}`); v < 1 {
		t.Errorf("reloads ok after the fix = %v, want >= 1", v)
	}
}
