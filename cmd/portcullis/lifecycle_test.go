package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/internal/idtest"
)

// lcDialRefused reports whether a new TCP connection to addr is refused.
func lcDialRefused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

// Cancelling the app's context is what SIGTERM does (main wraps it with
// signal.NotifyContext): listeners close at once, the request in flight
// completes, then the app exits cleanly.
func TestShutdownDrainsInFlightRequest(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/slow" {
			io.WriteString(w, "fast")
			return
		}
		close(arrived)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "slow answer, complete")
	}))
	defer up.Close()
	idp := idtest.NewProvider(t)
	s := newStack(t, rlConfig(idp, "routes:"+rlRoute("app", "app.example.test", up.URL)))
	rlWritePolicies(t, s)
	s.Start(appOptions{})
	client := s.Client()
	if code, body := rlGet(t, client, s.URL("app.example.test", "/")); code != 200 || body != "fast" {
		t.Fatalf("before shutdown: %d %q", code, body)
	}

	type result struct {
		code  int
		proto int
		body  string
		err   error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := client.Get(s.URL("app.example.test", "/slow"))
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{code: resp.StatusCode, proto: resp.ProtoMajor, body: string(b), err: err}
	}()
	<-arrived

	s.cancel() // SIGTERM
	deadline := time.Now().Add(5 * time.Second)
	for !lcDialRefused(s.HTTPS) || !lcDialRefused(s.HTTP) {
		if time.Now().After(deadline) {
			t.Fatal("the HTTPS and HTTP listeners still accept new connections after shutdown began")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// While requests drain, the admin listener reports not ready.
	code, body := rlGet(t, http.DefaultClient, "http://"+s.Admin+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Errorf("/readyz while draining = %d %s, want 503 naming the shutdown", code, body)
	}
	select {
	case r := <-done:
		t.Fatalf("the in-flight request ended before its upstream answered: %+v", r)
	default:
	}

	close(release)
	select {
	case r := <-done:
		if r.err != nil || r.code != 200 || r.body != "slow answer, complete" {
			t.Errorf("in-flight request = %d %q, %v; want 200 and the whole body", r.code, r.body, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("in-flight request did not complete")
	}
	s.Stop() // waits for Run, which must return nil
	for _, addr := range []string{s.HTTPS, s.HTTP, s.Admin} {
		if !lcDialRefused(addr) {
			t.Errorf("%s accepts connections after the app stopped", addr)
		}
	}
	if !strings.Contains(s.Logs.String(), "shutting down: draining in-flight requests") {
		t.Error("no drain log line")
	}
}

// A stream that outlives server.shutdown_timeout is cut when the deadline
// passes, and the app still exits cleanly.
func TestShutdownDrainDeadlineCutsEndlessStream(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for {
			io.WriteString(w, "data: tick\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-time.After(50 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	}))
	defer up.Close()
	idp := idtest.NewProvider(t)
	s := newStack(t, rlConfig(idp, "server:\n  shutdown_timeout: 500ms\nroutes:"+rlRoute("app", "app.example.test", up.URL)))
	rlWritePolicies(t, s)
	s.Start(appOptions{})
	resp, err := s.Client().Get(s.URL("app.example.test", "/events"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: tick\n" {
		t.Fatalf("first event = %q, %v", line, err)
	}
	streamEnded := make(chan struct{})
	go func() {
		io.Copy(io.Discard, resp.Body)
		close(streamEnded)
	}()
	s.Stop() // Run must return nil although the stream was cut
	select {
	case <-streamEnded:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream is still open after the app stopped")
	}
	if !strings.Contains(s.Logs.String(), "the drain deadline passed") {
		t.Error("no log line about the drain deadline")
	}
}

// An HTTP/2 client (ALPN h2 on the TLS listener) is served end to end,
// request bodies included; the upstream is reached over HTTP/1.1.
func TestHTTP2ClientThroughProxy(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Upstream-Proto", r.Proto)
		io.WriteString(w, r.Method+" "+r.URL.Path+" "+string(b))
	}))
	defer up.Close()
	idp := idtest.NewProvider(t)
	s := newStack(t, rlConfig(idp, "routes:"+rlRoute("app", "app.example.test", up.URL)))
	rlWritePolicies(t, s)
	s.Start(appOptions{})
	client := s.Client()

	resp, err := client.Get(s.URL("app.example.test", "/h2"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("client spoke HTTP/%d.%d, want 2", resp.ProtoMajor, resp.ProtoMinor)
	}
	if resp.StatusCode != 200 || string(b) != "GET /h2 " {
		t.Errorf("GET over h2 = %d %q", resp.StatusCode, b)
	}
	if resp.Header.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id over h2")
	}
	if got := resp.Header.Get("X-Upstream-Proto"); got != "HTTP/1.1" {
		t.Errorf("upstream saw %q", got)
	}

	body := bytes.Repeat([]byte("0123456789"), 10_000)
	resp, err = client.Post(s.URL("app.example.test", "/upload"), "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || string(b) != "POST /upload "+string(body) {
		t.Errorf("POST over h2 = HTTP/%d %d, %d bytes", resp.ProtoMajor, resp.StatusCode, len(b))
	}
}

// A request the drain deadline cuts before its upstream answered is still
// audited: the audit pipeline closes only after every handler has recorded
// its event. (It used to be dropped as "closed", and verify could not tell:
// the event never got a seq.)
func TestShutdownDrainDeadlineStillAuditsCutRequest(t *testing.T) {
	arrived := make(chan struct{})
	var once sync.Once
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(arrived) })
		<-r.Context().Done() // never answers
	}))
	defer up.Close()
	idp := idtest.NewProvider(t)
	s := newStack(t, rlConfig(idp, "server:\n  shutdown_timeout: 300ms\nroutes:"+rlRoute("app", "app.example.test", up.URL)))
	rlWritePolicies(t, s)
	s.Start(appOptions{})
	go func() {
		resp, err := s.Client().Get(s.URL("app.example.test", "/hang"))
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-arrived
	s.Stop()
	b, err := os.ReadFile(filepath.Join(s.Dir, "data", "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"path":"/hang"`) {
		t.Errorf("no audit event for the request the drain deadline cut:\n%s\nlogs:\n%s", b, s.Logs.String())
	}
	// Recorded as the proxy's doing, not the client's.
	if !strings.Contains(string(b), `"reason":"cut at shutdown: server.shutdown_timeout passed"`) {
		t.Errorf("the cut request's event does not say shutdown cut it:\n%s", b)
	}
	if strings.Contains(s.Logs.String(), "event dropped") {
		t.Errorf("an audit event was dropped at shutdown:\n%s", s.Logs.String())
	}
}
