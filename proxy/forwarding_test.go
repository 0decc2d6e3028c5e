package proxy

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/portcullis/portcullis/internal/confkit"
)

// forwardingUpstream answers by path: /upload hashes the body it reads;
// /stall never reads the body nor answers (until the test ends);
// /slow-download sends n bytes with a Content-Length in pieces over d;
// /early sends a 103 with a hop-by-hop field and an identity header first;
// /untyped has no Content-Type; /trailer echoes the request's trailers;
// anything else echoes the request target and Accept-Encoding.
func forwardingUpstream(t *testing.T) *httptest.Server {
	t.Helper()
	done := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			h := sha256.New()
			n, _ := io.Copy(h, r.Body)
			fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
		case "/stall":
			select {
			case <-done:
			case <-r.Context().Done():
			}
		case "/slow-download":
			const pieces, size = 20, 32 << 10
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", fmt.Sprint(pieces*size))
			for range pieces {
				w.Write(make([]byte, size))
				w.(http.Flusher).Flush()
				time.Sleep(30 * time.Millisecond)
			}
		case "/early":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.Header().Set("Keep-Alive", "timeout=5")
			w.Header().Set("Connection", "X-Hop")
			w.Header().Set("X-Hop", "secret")
			w.Header().Set("X-Portcullis-User", "upstream-spoof")
			w.WriteHeader(http.StatusEarlyHints)
			for _, k := range []string{"Link", "Keep-Alive", "Connection", "X-Hop", "X-Portcullis-User"} {
				w.Header().Del(k)
			}
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "final")
		case "/untyped":
			w.Header()["Content-Type"] = nil
			io.WriteString(w, "<html><body>x</body></html>")
		case "/cookies":
			http.SetCookie(w, &http.Cookie{Name: "_portcullis", Value: "upstream-chose-this", Path: "/"})
			http.SetCookie(w, &http.Cookie{Name: "theme", Value: "dark", Path: "/"})
		case "/trailer":
			io.Copy(io.Discard, r.Body)
			var got []string
			for k, v := range r.Trailer {
				if len(v) > 0 {
					got = append(got, k+"="+strings.Join(v, ","))
				}
			}
			slices.Sort(got)
			io.WriteString(w, strings.Join(got, " "))
		case "/pause-download":
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", "2048")
			w.Write(make([]byte, 1024))
			w.(http.Flusher).Flush()
			time.Sleep(900 * time.Millisecond)
			w.Write(make([]byte, 1024))
		default:
			fmt.Fprintf(w, "uri=%s accept-encoding=%q", r.RequestURI, r.Header.Get("Accept-Encoding"))
		}
	}))
	t.Cleanup(func() { close(done); up.Close() })
	return up
}

// h1Client speaks HTTP/1.1 to the test proxy (ps.Client() would pick
// HTTP/2).
func h1Client(ps *httptest.Server) *http.Client {
	tr := ps.Client().Transport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	return &http.Client{Timeout: 20 * time.Second, Transport: tr}
}

// h2Client speaks HTTP/2 to the test proxy.
func h2Client(ps *httptest.Server) *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http2.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
}

// slowBody yields n bytes in pieces, one every gap.
type slowBody struct {
	left, piece int
	gap         time.Duration
}

func (b *slowBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	time.Sleep(b.gap)
	n := min(b.left, b.piece, len(p))
	clear(p[:n])
	b.left -= n
	return n, nil
}

// TestUploadsOutlastTheRouteTimeout: the route timeout bounds the wait for
// the upstream's answer after the body has been sent, and each wait for
// the upstream to take more of it, not the upload itself; nor does
// write_timeout, over HTTP/2, where a write deadline also ends the
// request's body.
func TestUploadsOutlastTheRouteTimeout(t *testing.T) {
	up := forwardingUpstream(t)
	ps, _, _, _ := newTestProxyWith(t, []Route{{Name: "app", Host: "app.test", Path: "/", Upstream: up.URL, Public: true, Timeout: 700 * time.Millisecond}},
		func(c *ServerConfig) { c.WriteTimeout = 700 * time.Millisecond })
	for name, c := range map[string]*http.Client{"HTTP/1.1": h1Client(ps), "HTTP/2": h2Client(ps)} {
		t.Run(name, func(t *testing.T) {
			// 2.4 s of upload, over three times the route timeout.
			req, _ := http.NewRequest(http.MethodPost, ps.URL+"/upload", &slowBody{left: 24 << 10, piece: 1 << 10, gap: 100 * time.Millisecond})
			req.Host = "app.test"
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.HasPrefix(string(body), fmt.Sprint(24<<10, " ")) {
				t.Errorf("slow upload: %d %s, want 200 with all %d bytes", resp.StatusCode, body, 24<<10)
			}
		})
	}
	// An upstream that takes nothing of the body and never answers still
	// times out.
	req, _ := http.NewRequest(http.MethodPost, ps.URL+"/stall", strings.NewReader(strings.Repeat("x", 4<<20)))
	req.Host = "app.test"
	start := time.Now()
	resp, err := h1Client(ps).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(string(body), "gateway_timeout") {
		t.Errorf("stalled upstream: %d %s, want 504 gateway_timeout", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("stalled upstream answered after %s", d)
	}
}

// TestDownloadsOutlastTheWriteTimeout: write_timeout bounds each write,
// not a whole download with a Content-Length, nor an upstream's pause
// between two parts of a response (an HTTP/2 stream's deadline runs
// between writes).
func TestDownloadsOutlastTheWriteTimeout(t *testing.T) {
	up := forwardingUpstream(t)
	ps, _, _, _ := newTestProxyWith(t, []Route{{Name: "app", Host: "app.test", Path: "/", Upstream: up.URL, Public: true}},
		func(c *ServerConfig) { c.WriteTimeout = 300 * time.Millisecond })
	for _, tc := range []struct {
		path, what string
		want       int64
	}{
		{"/slow-download", "600 ms download", 20 * 32 << 10},
		{"/pause-download", "900 ms upstream pause", 2048},
	} {
		for name, c := range map[string]*http.Client{"HTTP/1.1": h1Client(ps), "HTTP/2": h2Client(ps)} {
			t.Run(tc.path+" "+name, func(t *testing.T) {
				req, _ := http.NewRequest(http.MethodGet, ps.URL+tc.path, nil)
				req.Host = "app.test"
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || n != tc.want {
					t.Errorf("%s with a 300 ms write_timeout: %d bytes, %v; want %d", tc.what, n, err, tc.want)
				}
			})
		}
	}
}

// TestInterimResponsesAreCleaned: a 103 reaches the client without
// hop-by-hop fields (fatal in HTTP/2) or identity headers, and the final
// response still carries X-Request-Id; a response without a Content-Type
// gets none.
func TestInterimResponsesAreCleaned(t *testing.T) {
	up := forwardingUpstream(t)
	ps, _, _, _ := newTestProxy(t, []Route{{Name: "app", Host: "app.test", Path: "/", Upstream: up.URL, Public: true}})
	for name, c := range map[string]*http.Client{"HTTP/1.1": h1Client(ps), "HTTP/2": h2Client(ps)} {
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			var interim []textproto.MIMEHeader
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				mu.Lock()
				interim = append(interim, h)
				mu.Unlock()
				return nil
			}}
			req, _ := http.NewRequest(http.MethodGet, ps.URL+"/early", nil)
			req.Host = "app.test"
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("request with a 103 on the way: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "final" || resp.Header.Get("X-Request-Id") == "" {
				t.Errorf("final response %d %q, X-Request-Id %q", resp.StatusCode, body, resp.Header.Get("X-Request-Id"))
			}
			mu.Lock()
			defer mu.Unlock()
			if len(interim) != 1 {
				t.Fatalf("%d interim responses, want 1", len(interim))
			}
			h := interim[0]
			if h.Get("Link") == "" || h.Get("X-Request-Id") != resp.Header.Get("X-Request-Id") {
				t.Errorf("103 lost its Link or X-Request-Id: %v", h)
			}
			for _, k := range []string{"Keep-Alive", "Connection", "X-Hop", "X-Portcullis-User"} {
				if v := h.Get(k); v != "" {
					t.Errorf("103 carries %s: %q", k, v)
				}
			}
			// Headers Portcullis set before forwarding (a refreshed
			// session's cookie) survive the interim response, which does
			// not carry them.
			req, _ = http.NewRequest(http.MethodGet, ps.URL+"/early", nil)
			req.Host = "app.test"
			req.Header.Set("Authorization", "Test refresh")
			interim = nil
			mu.Unlock()
			resp, err = c.Do(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
			mu.Lock()
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := resp.Header.Values("Set-Cookie"); len(got) != 1 || !strings.HasPrefix(got[0], "_portcullis=refreshed") {
				t.Errorf("final response Set-Cookie %q, want the refreshed session", got)
			}
			if len(interim) != 1 || interim[0].Get("Set-Cookie") != "" {
				t.Errorf("interim responses %v, want one without Set-Cookie", interim)
			}
			req, _ = http.NewRequest(http.MethodGet, ps.URL+"/untyped", nil)
			req.Host = "app.test"
			resp, err = c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if ct, ok := resp.Header["Content-Type"]; ok {
				t.Errorf("Content-Type %q invented for an untyped response", ct)
			}
		})
	}
}

// TestRequestTargetsReachTheUpstreamAsSent: sub-delimiters stay raw, the
// escapes of a base path stay escaped, Accept-Encoding is the client's,
// request trailers arrive.
func TestRequestTargetsReachTheUpstreamAsSent(t *testing.T) {
	up := forwardingUpstream(t)
	ps, _, _, _ := newTestProxy(t, []Route{
		{Name: "app", Host: "app.test", Path: "/", Upstream: up.URL, Public: true},
		{Name: "based", Host: "based.test", Path: "/", Upstream: up.URL + "/api/group%2Fproj%40x/", Public: true},
	})
	for _, tc := range []struct{ host, target, want string }{
		{"app.test", "/wiki/Foo_(bar)/it's/*/!x$&+,=:@?q=1", "uri=/wiki/Foo_(bar)/it's/*/!x$&+,=:@?q=1"},
		{"based.test", "/x", "uri=/api/group%2Fproj%40x/x"},
		{"based.test", "/a%3Fb", "uri=/api/group%2Fproj%40x/a%3Fb"},
	} {
		_, body := do(t, ps, "GET", tc.host, tc.target, http.Header{"Accept-Encoding": {"identity"}})
		if !strings.HasPrefix(body, tc.want+" ") {
			t.Errorf("%s%s reached the upstream as %s, want %s", tc.host, tc.target, body, tc.want)
		}
	}
	if _, body := do(t, ps, "GET", "app.test", "/plain", nil); !strings.HasSuffix(body, `accept-encoding=""`) {
		t.Errorf("upstream saw %s, want no Accept-Encoding the client did not send", body)
	}

	conn := dialHTTP1(t, ps, 10*time.Second)
	defer conn.Close()
	// Declared trailers go on when a header of that name could; identity,
	// credentials and undeclared ones never do.
	io.WriteString(conn, "POST /trailer HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"+
		"Trailer: X-Sum, X-Portcullis-User, Authorization, X-Role\r\n\r\n"+
		"5\r\nhello\r\n0\r\nX-Sum: abc\r\nX-Portcullis-User: root\r\nAuthorization: Bearer stolen\r\n"+
		"X-Role: admin\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "X-Sum=abc" {
		t.Errorf("upstream saw trailers %q, want only X-Sum=abc", body)
	}
}

// TestTunnelEndsWithTheClient: when the client leaves a WebSocket tunnel,
// the tunnel ends even if the upstream keeps its side open.
func TestTunnelEndsWithTheClient(t *testing.T) {
	upstreamSawEOF := make(chan struct{})
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(io.Discard, brw)
		close(upstreamSawEOF)
		<-release // an upstream that never closes its side
	}))
	defer up.Close()
	defer close(release)
	ps, _, _, h := newTestProxy(t, []Route{{Name: "app", Host: "app.test", Path: "/", Upstream: up.URL, Public: true}})
	conn := dialHTTP1(t, ps, 10*time.Second)
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	conn.Close()
	select {
	case <-upstreamSawEOF:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream never saw the client leave")
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.active.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the tunnel is still open (%d active) after the client left", h.active.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestUpstreamCannotSetTheSessionCookie: an upstream's Set-Cookie for
// Portcullis's own cookie never reaches the client; its others do.
func TestUpstreamCannotSetTheSessionCookie(t *testing.T) {
	up := forwardingUpstream(t)
	ps, _, _, _ := newTestProxy(t, []Route{{Name: "app", Host: "app.test", Path: "/", Upstream: up.URL, Public: true}})
	resp, _ := do(t, ps, "GET", "app.test", "/cookies", nil)
	if got := resp.Header.Values("Set-Cookie"); len(got) != 1 || !strings.HasPrefix(got[0], "theme=dark") {
		t.Errorf("Set-Cookie = %q, want only theme=dark", got)
	}
}

// TestUpstreamTrustsRouteCA: routes[].tls_ca_file makes an https upstream
// with a private CA reachable; without it, the upstream's certificate is
// refused (502).
func TestUpstreamTrustsRouteCA(t *testing.T) {
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "private") }))
	defer up.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	ps, _, _, _ := newTestProxy(t, []Route{
		{Name: "trusting", Host: "trusting.test", Path: "/", Upstream: up.URL, Public: true, TLSCAFile: caFile},
		{Name: "plain", Host: "plain.test", Path: "/", Upstream: up.URL, Public: true},
	})
	if resp, body := do(t, ps, "GET", "trusting.test", "/", nil); resp.StatusCode != 200 || body != "private" {
		t.Errorf("upstream with its CA trusted: %d %q", resp.StatusCode, body)
	}
	if resp, _ := do(t, ps, "GET", "plain.test", "/", nil); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("upstream with an unknown CA: %d, want 502", resp.StatusCode)
	}

	notPEM := filepath.Join(t.TempDir(), "x.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	routes := []Route{
		{Name: "a", Host: "a.test", Path: "/", Upstream: "https://u.test", Policy: "portcullis.routes.a", TLSCAFile: filepath.Join(t.TempDir(), "missing.pem")},
		{Name: "b", Host: "b.test", Path: "/", Upstream: "https://u.test", Policy: "portcullis.routes.a", TLSCAFile: notPEM},
		{Name: "c", Host: "c.test", Path: "/", Upstream: "http://u.test", Policy: "portcullis.routes.a", TLSCAFile: caFile},
	}
	for i := range routes {
		routes[i].SetDefaults()
	}
	var p confkit.Problems
	ValidateRoutes(&p, "routes", routes)
	got := fmt.Sprint(p.List())
	for _, want := range []string{"routes[0].tls_ca_file: cannot be read", "routes[1].tls_ca_file: " + notPEM + " holds no PEM certificate", "routes[2].tls_ca_file: is for an https upstream"} {
		if !strings.Contains(got, want) {
			t.Errorf("problems %s lack %q", got, want)
		}
	}
}

// TestH2CUpstream: an h2c:// upstream (a gRPC server without TLS) is
// spoken to in HTTP/2, and its response trailers reach the client.
func TestH2CUpstream(t *testing.T) {
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("Content-Type", "application/grpc")
		fmt.Fprintf(w, "HTTP/%d", r.ProtoMajor)
		w.Header().Set("Grpc-Status", "0")
	}))
	up.Config.Protocols = new(http.Protocols)
	up.Config.Protocols.SetUnencryptedHTTP2(true)
	up.Start()
	defer up.Close()
	ps, _, _, _ := newTestProxy(t, []Route{{Name: "grpc", Host: "grpc.test", Path: "/", Upstream: "h2c://" + up.Listener.Addr().String(), Public: true}})
	req, _ := http.NewRequest(http.MethodPost, ps.URL+"/pkg.Service/Method", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Host = "grpc.test"
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := h2Client(ps).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "HTTP/2" || resp.Trailer.Get("Grpc-Status") != "0" {
		t.Errorf("h2c upstream: %d %q trailer %v, want 200 HTTP/2 with Grpc-Status 0", resp.StatusCode, body, resp.Trailer)
	}
}

// TestRequestTrailersOverHTTP2: over HTTP/2 too, declared trailers a
// header could carry go on, identity ones never.
func TestRequestTrailersOverHTTP2(t *testing.T) {
	up := forwardingUpstream(t)
	ps, _, _, _ := newTestProxy(t, []Route{{Name: "app", Host: "app.test", Path: "/", Upstream: up.URL, Public: true}})
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, ps.URL+"/trailer", pr)
	req.Host = "app.test"
	req.Trailer = http.Header{"X-Sum": nil, "X-Portcullis-User": nil, "X-Auth-Request-User": nil}
	go func() {
		io.WriteString(pw, "hello")
		req.Trailer.Set("X-Sum", "abc")
		req.Trailer.Set("X-Portcullis-User", "root")
		req.Trailer.Set("X-Auth-Request-User", "root")
		pw.Close()
	}()
	resp, err := h2Client(ps).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "X-Sum=abc" {
		t.Errorf("upstream saw trailers %q, want only X-Sum=abc", body)
	}
}
