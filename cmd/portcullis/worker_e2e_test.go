package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/portcullis/portcullis/internal/idtest"
)

// The edge Worker (SPEC §7, deploy/worker) in the real Workers runtime,
// between a real Portcullis and an origin:
//
//	client ──► Portcullis ──(assertion)──► workerd (the Worker) ──► origin
//	               ▲                          │
//	               └── JWKS over HTTPS ───────┘
//
// The Worker fetches the key set from Portcullis's identity.external_url as
// it would in production. That host must resolve to loopback for workerd
// and carry a certificate from Portcullis's local CA, so external_url is
// https://localhost:PORT here (the self-signed leaf for localhost names
// 127.0.0.1 too); route hosts stay under .example.test and receive the
// session by handover.

const wkWorkerDir = "../../deploy/worker"

// wkRequireWorkerd returns the node binary, or skips (fails with CI=true)
// when node or the Worker's npm dependencies are missing.
func wkRequireWorkerd(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(wkWorkerDir, "node_modules", "workerd", "package.json"))
	}
	if err != nil {
		msg := fmt.Sprintf("workerd is not available (%v): run bash .ci/worker.sh", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return node
}

// wkFreePort reserves a loopback port and releases it for workerd.
func wkFreePort(t *testing.T) int {
	t.Helper()
	ln := listenLoopback(t)
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// wkStartWorker runs deploy/worker/test/run-workerd.mjs with args until the
// test ends. Its log is shown when the test fails.
func wkStartWorker(t *testing.T, node string, args ...string) {
	t.Helper()
	script, err := filepath.Abs(filepath.Join(wkWorkerDir, "test", "run-workerd.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, append([]string{script, "--stdin-lifeline"}, args...)...)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	cmd.WaitDelay = 10 * time.Second
	// The lifeline: if this test binary dies, the pipe closes and the
	// launcher stops workerd.
	lifeline, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting run-workerd.mjs: %v", err)
	}
	exited := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" {
				close(ready)
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Logf("run-workerd.mjs: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("run-workerd.mjs did not stop within 15s after SIGTERM; killing it")
			_ = cmd.Process.Kill()
			<-exited
		}
		lifeline.Close()
		if t.Failed() {
			t.Logf("workerd log:\n%s", logs)
		}
	})
	select {
	case <-ready:
	case err := <-exited:
		t.Fatalf("run-workerd.mjs exited before ready (%v):\n%s", err, logs)
	case <-time.After(90 * time.Second):
		t.Fatalf("workerd not ready within 90s:\n%s", logs)
	}
}

// wkClient trusts only Portcullis's local CA and sends every request for a
// Portcullis host (route hosts, external_url) to the HTTPS listener; other
// addresses (the identity provider, the Worker) are dialed as given.
func wkClient(t *testing.T, s *stack) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(s.App.certs.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in the local CA file")
	}
	_, port, _ := net.SplitHostPort(s.HTTPS)
	jar, _ := cookiejar.New(nil)
	return &http.Client{
		Jar:     jar,
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: roots},
			ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				host, p, _ := net.SplitHostPort(addr)
				if p == port && (host == "localhost" || strings.HasSuffix(host, ".example.test")) {
					addr = s.HTTPS
				}
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			},
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			return nil
		},
	}
}

// wkOrigin is the backend behind the Worker; it records what reaches it.
type wkOrigin struct {
	mu   sync.Mutex
	seen []wkSeen
}

type wkSeen struct {
	Method, Path, Query, Host, Body string
	Header                          http.Header
}

func (o *wkOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	o.mu.Lock()
	o.seen = append(o.seen, wkSeen{r.Method, r.URL.Path, r.URL.RawQuery, r.Host, string(body), r.Header.Clone()})
	o.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "origin: %s %s for %s", r.Method, r.URL.Path, r.Header.Get("X-Portcullis-User"))
}

func (o *wkOrigin) requests() []wkSeen {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]wkSeen(nil), o.seen...)
}

// wkJWT decodes a JWT's header and payload without verifying it.
func wkJWT(t *testing.T, tok string) (header, claims map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	for i, dst := range []*map[string]any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatalf("JWT part %d: %v", i, err)
		}
		if err := json.Unmarshal(b, dst); err != nil {
			t.Fatalf("JWT part %d: %v", i, err)
		}
	}
	return header, claims
}

func wkDo(t *testing.T, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp, string(b)
}

func TestWorkerEndToEnd(t *testing.T) {
	node := wkRequireWorkerd(t)

	origin := &wkOrigin{}
	originSrv := httptest.NewServer(origin)
	defer originSrv.Close()

	idp := idtest.NewProvider(t)
	workerURL := fmt.Sprintf("http://127.0.0.1:%d", wkFreePort(t))
	// The Worker fetches the JWKS from external_url: localhost resolves
	// to loopback in workerd, and the local CA issues a leaf for it.
	cfg := stackConfig{IDP: idp, ExternalHost: "localhost"}.YAML() + `
routes:
  - name: app
    host: app.example.test
    path: /
    upstream: ` + workerURL + `
    policy: portcullis.routes.demo
`
	s := newStack(t, cfg)
	s.Start(appOptions{})
	_, httpsPort, _ := net.SplitHostPort(s.HTTPS)
	issuer := "https://localhost:" + httpsPort
	jwksURL := issuer + "/.well-known/portcullis/jwks.json"

	// The Worker expects aud = the route's upstream origin, which is what
	// Portcullis signs (no assertion_audience needed). It is set explicitly,
	// as the README advises for production.
	_, workerPort, _ := net.SplitHostPort(strings.TrimPrefix(workerURL, "http://"))
	wkStartWorker(t, node,
		"--port", workerPort,
		"--origin", originSrv.URL,
		"--jwks", jwksURL,
		"--issuer", issuer,
		"--audience", workerURL,
		"--ca-file", s.App.certs.CAFile(),
	)
	if n := len(origin.requests()); n != 0 {
		t.Fatalf("the origin was reached %d times before any request", n)
	}

	client := wkClient(t, s)
	idp.QueueUser("alice", "alice@example.test", []string{"engineering", "ops"})
	idtest.Login(t, client, s.URL("app.example.test", "/"))
	before := len(origin.requests())
	if before == 0 {
		t.Fatal("sign-in ended on the route but the origin saw nothing")
	}

	// (1) A signed-in request through Portcullis and the Worker reaches the
	// origin with the identity the Worker derived from the assertion; a
	// client's copy of an identity header goes nowhere.
	var assertion string
	t.Run("through Portcullis", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, s.URL("app.example.test", "/reports/q3?year=2026"), strings.NewReader("report body"))
		req.Header.Set("Accept", "application/json")
		req.Header.Set("X-Portcullis-User", "mallory")
		req.Header.Set("X-Portcullis-Groups", "admins")
		resp, body := wkDo(t, client, req)
		if resp.StatusCode != http.StatusOK || body != "origin: POST /reports/q3 for alice" {
			t.Fatalf("got %d %q, want 200 from the origin for alice", resp.StatusCode, body)
		}
		seen := origin.requests()
		if len(seen) != before+1 {
			t.Fatalf("origin saw %d requests, want %d", len(seen), before+1)
		}
		got := seen[len(seen)-1]
		if got.Method != http.MethodPost || got.Path != "/reports/q3" || got.Query != "year=2026" || got.Body != "report body" {
			t.Errorf("origin saw %s %s?%s body %q", got.Method, got.Path, got.Query, got.Body)
		}
		if want := strings.TrimPrefix(originSrv.URL, "http://"); got.Host != want {
			t.Errorf("origin saw Host %q, want %q (from ORIGIN_URL)", got.Host, want)
		}
		for name, want := range map[string]string{
			"X-Portcullis-User":   "alice",
			"X-Portcullis-Email":  "alice@example.test",
			"X-Portcullis-Groups": "engineering,ops",
			"X-Request-Id":        resp.Header.Get("X-Request-Id"),
			"X-Demo-Role":         "member", // set by the route's policy
		} {
			if v := got.Header.Values(name); len(v) != 1 || v[0] != want || want == "" {
				t.Errorf("origin saw %s = %q, want %q", name, v, want)
			}
		}
		if c := got.Header.Get("Cookie"); strings.Contains(c, "_portcullis") {
			t.Errorf("the session cookie reached the origin: %q", c)
		}
		assertion = got.Header.Get("X-Portcullis-Assertion")
		if assertion == "" {
			t.Fatal("the origin did not receive X-Portcullis-Assertion")
		}
		_, claims := wkJWT(t, assertion)
		if claims["iss"] != issuer || claims["aud"] != workerURL || claims["sub"] != "alice" || claims["route"] != "app" {
			t.Errorf("assertion claims %v: want iss %s, aud %s, sub alice, route app", claims, issuer, workerURL)
		}
	})
	if assertion == "" {
		t.FailNow()
	}

	direct := &http.Client{Timeout: 30 * time.Second}
	sessionCookies := client.Jar.Cookies(&url.URL{Scheme: "https", Host: "app.example.test"})
	if len(sessionCookies) == 0 {
		t.Fatal("no session cookie for app.example.test after sign-in")
	}
	// unauthorized sends req straight to the Worker and wants 401 with
	// reason, and the origin untouched.
	unauthorized := func(t *testing.T, req *http.Request, reason string) {
		t.Helper()
		n := len(origin.requests())
		resp, body := wkDo(t, direct, req)
		var got struct{ Error, Reason string }
		if err := json.Unmarshal([]byte(body), &got); err != nil || resp.StatusCode != http.StatusUnauthorized ||
			got.Error != "unauthorized" || got.Reason != reason {
			t.Errorf("got %d %q, want 401 with reason %q", resp.StatusCode, body, reason)
		}
		if m := len(origin.requests()); m != n {
			t.Errorf("the origin was reached (%d requests, had %d)", m, n)
		}
	}

	// (2) The same request without Portcullis: the session cookie means
	// nothing to the Worker.
	t.Run("straight to the Worker", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, workerURL+"/reports/q3?year=2026", strings.NewReader("report body"))
		req.Header.Set("Accept", "application/json")
		for _, c := range sessionCookies {
			req.AddCookie(c)
		}
		unauthorized(t, req, "missing assertion")
	})

	// (3) Straight to the Worker with spoofed identity headers and a forged
	// assertion: whatever the forgery, 401 and the origin saw nothing.
	header, _ := wkJWT(t, assertion)
	kid, _ := header["kid"].(string)
	if header["alg"] != "ES256" || kid == "" {
		t.Fatalf("assertion header %v: want alg ES256 and a kid", header)
	}
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	claims := jwt.MapClaims{
		"iss": issuer, "aud": workerURL, "sub": "admin", "email": "admin@example.test",
		"groups": []string{"admins"}, "route": "app", "jti": "forged-1",
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
	}
	signedByOther := func(t *testing.T) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
		tok.Header["kid"] = kid // Portcullis's key id, someone else's key
		s, err := tok.SignedString(otherKey)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tampered := func(t *testing.T) string {
		// Portcullis's real signature over a payload with another subject.
		parts := strings.Split(assertion, ".")
		_, c := wkJWT(t, assertion)
		c["sub"], c["groups"] = "admin", []string{"admins"}
		b, _ := json.Marshal(c)
		return parts[0] + "." + base64.RawURLEncoding.EncodeToString(b) + "." + parts[2]
	}
	algNone := func(t *testing.T) string {
		h, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT", "kid": kid})
		b, _ := json.Marshal(claims)
		return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(b) + "."
	}
	for _, tc := range []struct {
		name   string
		forge  func(*testing.T) string
		reason string
	}{
		{"signed with another key under Portcullis's kid", signedByOther, "bad signature"},
		{"Portcullis's signature over a changed payload", tampered, "bad signature"},
		{"alg none", algNone, "unsupported alg"},
	} {
		t.Run("forged: "+tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, workerURL+"/reports/q3", nil)
			req.Header.Set("Accept", "application/json")
			req.Header.Set("X-Portcullis-User", "alice")
			req.Header.Set("X-Portcullis-Email", "alice@example.test")
			req.Header.Set("X-Portcullis-Groups", "admins")
			req.Header.Set("X-Portcullis-Assertion", tc.forge(t))
			unauthorized(t, req, tc.reason)
		})
	}
	// (4) Portcullis's real assertion, taken from a request the origin
	// saw, replayed straight to the Worker for another method or path.
	for _, tc := range []struct{ name, method, path, reason string }{
		{"another path", http.MethodPost, "/admin/users", "wrong path"},
		{"another method", http.MethodDelete, "/reports/q3", "wrong method"},
	} {
		t.Run("replayed for "+tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, workerURL+tc.path, strings.NewReader("x"))
			req.Header.Set("X-Portcullis-Assertion", assertion)
			unauthorized(t, req, tc.reason)
		})
	}
	t.Run("spoofed identity headers alone", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, workerURL+"/reports/q3", nil)
		req.Header.Set("X-Portcullis-User", "alice")
		req.Header.Set("X-Portcullis-Groups", "admins")
		unauthorized(t, req, "missing assertion")
	})
}
