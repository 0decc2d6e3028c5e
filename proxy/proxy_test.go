package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/identity"
	"github.com/portcullis/portcullis/internal/confkit"
	"github.com/portcullis/portcullis/policy"
)

// fakeAuth authenticates "Authorization: Test <sub>" and stands in for the
// identity package, whose real flows are tested there and end to end.
type fakeAuth struct{}

func (fakeAuth) Authenticate(w http.ResponseWriter, r *http.Request) (*identity.Identity, error) {
	v := r.Header.Get("Authorization")
	sub, ok := strings.CutPrefix(v, "Test ")
	if !ok {
		if v != "" {
			return nil, identity.ErrInvalidCredentials
		}
		return nil, nil
	}
	groups := []string{"engineering"}
	if sub == "refresh" {
		// A session refreshed on this request: a new cookie goes out.
		http.SetCookie(w, &http.Cookie{Name: "_portcullis", Value: "refreshed", Path: "/"})
	}
	if sub == "mallory" {
		// A provider that lets users name their own groups.
		groups = []string{"engineering,admins", "100%", "ops\r\nX-Evil: 1", " admins ", "Domain Admins"}
	}
	return &identity.Identity{Authenticated: true, Sub: sub, Email: sub + "@example.com", Groups: groups, AuthMethod: "bearer"}, nil
}
func (fakeAuth) StartLogin(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, "https://idp.test/authorize", http.StatusFound)
}
func (fakeAuth) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "own:"+r.URL.Path) })
}
func (fakeAuth) OwnsPath(p string) bool { return strings.HasPrefix(p, "/.portcullis/") }
func (fakeAuth) StripCredentials(h http.Header) {
	h.Del("Authorization")
}
func (fakeAuth) OwnsCookie(name string) bool { return name == "_portcullis" }
func (fakeAuth) Assertion(id *identity.Identity, req identity.AssertionRequest) (string, error) {
	return "signed." + id.Sub + "." + req.Route + "." + req.Audience + "." + req.Method + " " + req.URL, nil
}

// fakePolicy allows everything except paths under /deny.
type fakePolicy struct{}

func (fakePolicy) Eval(ctx context.Context, pkg string, in *policy.Input) policy.Decision {
	if strings.HasPrefix(in.Request.Path, "/deny") {
		return policy.Decision{Outcome: "deny", Reason: "denied by test", Status: 403, Package: pkg}
	}
	if strings.HasPrefix(in.Request.Path, "/hidden") {
		return policy.Decision{Outcome: "deny", Reason: "source address outside the office ranges", Status: 404, Package: pkg}
	}
	if strings.HasPrefix(in.Request.Path, "/broken") {
		return policy.Decision{Outcome: "error", Reason: "policy evaluation failed: /srv/policies/app.rego:3: eval_conflict_error", Package: pkg}
	}
	return policy.Decision{Allow: true, Outcome: "allow", Package: pkg, Revision: "sha256:test",
		Headers: map[string]string{"X-Policy-Header": "yes"}, Controls: []string{"X-Policy-Header", "X-Role", "X_Tenant"}}
}

// memRecorder keeps events in memory.
type memRecorder struct {
	mu     sync.Mutex
	events []*audit.Event
}

func (m *memRecorder) Record(ctx context.Context, ev *audit.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.events = append(m.events, ev)
	return nil
}
func (m *memRecorder) Accepting() bool { return true }
func (m *memRecorder) all() []*audit.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*audit.Event(nil), m.events...)
}

type upstreamSeen struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (u *upstreamSeen) last() *http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		return nil
	}
	return u.reqs[len(u.reqs)-1]
}

// newTestProxy starts an upstream recording what it receives and a proxy
// (HTTPS with HTTP/2, self-made cert) in front of it.
func newTestProxy(t *testing.T, routes []Route) (*httptest.Server, *upstreamSeen, *memRecorder, *Handler) {
	t.Helper()
	return newTestProxyWith(t, routes, nil)
}

// newTestProxyWith is newTestProxy with the server settings changed by
// server (nil: the defaults).
func newTestProxyWith(t *testing.T, routes []Route, server func(*ServerConfig)) (*httptest.Server, *upstreamSeen, *memRecorder, *Handler) {
	t.Helper()
	seen := &upstreamSeen{}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.mu.Lock()
		seen.reqs = append(seen.reqs, r.Clone(context.Background()))
		seen.mu.Unlock()
		w.Header().Set("X-Portcullis-User", "upstream-spoof")
		w.Header().Set("X-Request-Id", "upstream-chose-this")
		fmt.Fprintf(w, "path=%s raw=%s", r.URL.Path, r.URL.RawPath)
	}))
	t.Cleanup(up.Close)
	if routes == nil {
		routes = []Route{{Name: "app", Host: "app.test", Path: "/", Upstream: up.URL, Policy: "portcullis.routes.app"}}
	}
	for i := range routes {
		if routes[i].Upstream == "" {
			routes[i].Upstream = up.URL
		}
		if routes[i].Policy == "" {
			routes[i].Policy = "portcullis.routes.app"
		}
		routes[i].SetDefaults()
	}
	var p confkit.Problems
	ValidateRoutes(&p, "routes", routes)
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
	rec := &memRecorder{}
	var srvCfg ServerConfig
	srvCfg.SetDefaults()
	if server != nil {
		server(&srvCfg)
	}
	h, err := NewHandler(&State{Routes: routes, Server: srvCfg, Auth: fakeAuth{}, Policy: fakePolicy{}, ExternalHost: "auth.test"},
		Options{Logger: slog.New(slog.DiscardHandler), Audit: rec})
	if err != nil {
		t.Fatal(err)
	}
	ps := httptest.NewUnstartedServer(h)
	ps.EnableHTTP2 = true
	ps.StartTLS()
	t.Cleanup(ps.Close)
	return ps, seen, rec, h
}

// dialHTTP1 opens a TLS connection to ps that speaks HTTP/1.1 and must be
// done within timeout.
func dialHTTP1(t *testing.T, ps *httptest.Server, timeout time.Duration) *tls.Conn {
	t.Helper()
	conn, err := tls.Dial("tcp", ps.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(timeout))
	return conn
}

// do sends one HTTP/1.1 request over its own TLS connection with the
// request-target and header names written verbatim, the way an attacker's
// client would (Go's client would canonicalize or refuse some of them).
func do(t *testing.T, ps *httptest.Server, method, host, target string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	conn := dialHTTP1(t, ps, 10*time.Second)
	defer conn.Close()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, host)
	for k, vs := range hdr {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	b.WriteString("Content-Length: 0\r\n\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestSpoofedIdentityHeadersNeverReachUpstream(t *testing.T) {
	ps, seen, _, _ := newTestProxy(t, nil)
	variants := []string{
		"X-Portcullis-User", "x-portcullis-user", "X-PORTCULLIS-USER", "X-Portcullis-Email",
		"X-Portcullis-Groups", "X-Portcullis-Assertion", "X_Portcullis_User", "x_portcullis_email",
		"X-Portcullis_Groups", "X_PORTCULLIS_ASSERTION", "X-Portcullis-Admin", "X-Portcullis-Anything",
		"x-pORTCULLIS-gROUPS", "X-Portcullis-User-Id", "X-Portcullis", "X-Original-URL", "X-Rewrite-URL",
		"X-Forwarded-Uri", "Forwarded", "X-Request-Id", "X_Forwarded_For", "X-Original-Uri",
		// Client addresses and other forwarding headers (X-Real-Ip is
		// Portcullis's own), whatever their spelling.
		"X-Real-IP", "X-Real-Ip", "X_Real_IP", "X-Client-IP", "True-Client-IP", "CF-Connecting-IP",
		"Fastly-Client-IP", "X-Forwarded-Port", "X-Forwarded-Server", "X-Forwarded-Ssl", "X-Forwarded-Scheme",
		"X-Forwarded-Client-Cert", "X-Forwarded-Prefix",
		// Other identity-aware proxies' identity headers.
		"X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups", "X-Forwarded-Preferred-Username",
		"X-Forwarded-Access-Token", "X-Auth-Request-User", "X-Auth-Request-Email", "Remote-User", "Remote_User", "Remote-Groups", "Remote-Email", "Remote-Name", "X-Email", "X-Preferred-Username",
		"X-Remote-User", "X-Pomerium-Jwt-Assertion", "X-Pomerium-Claim-Email", "Cf-Access-Jwt-Assertion",
		"Cf-Access-Authenticated-User-Email", "X-Goog-Iap-Jwt-Assertion", "X-Goog-Authenticated-User-Email",
		"X-Amzn-Oidc-Data", "X-Amzn-Oidc-Identity", "X-Ms-Client-Principal-Name", "X-Webauth-User",
		"Http2-Settings",
	}
	for _, authed := range []bool{false, true} {
		for _, name := range variants {
			t.Run(fmt.Sprintf("%s/authenticated=%v", name, authed), func(t *testing.T) {
				hdr := http.Header{name: {"attacker"}}
				// Raw names keep their spelling: set them outside canonicalization.
				hdr = http.Header{}
				hdr[name] = []string{"attacker"}
				hdr["Connection"] = []string{"X-Portcullis-User, X-Request-Id"}
				if authed {
					hdr["Authorization"] = []string{"Test alice"}
				}
				resp, _ := do(t, ps, "GET", "app.test", "/x", hdr)
				if !authed {
					// Not signed in on a private route: never forwarded.
					if resp.StatusCode != http.StatusUnauthorized {
						t.Fatalf("status = %d, want 401", resp.StatusCode)
					}
					return
				}
				if resp.StatusCode != 200 {
					t.Fatalf("status = %d, want 200", resp.StatusCode)
				}
				r := seen.last()
				for k, vs := range r.Header {
					for _, v := range vs {
						if v == "attacker" {
							t.Errorf("upstream received spoofed %s: %s", k, v)
						}
					}
				}
				if got := r.Header.Get("X-Portcullis-User"); got != "alice" {
					t.Errorf("X-Portcullis-User = %q, want alice (Connection trick must not remove it)", got)
				}
				if r.Header.Get("X-Request-Id") == "" || r.Header.Get("X-Portcullis-Assertion") == "" {
					t.Errorf("proxy's own headers missing: %v", r.Header)
				}
				if r.Header.Get("Authorization") != "" {
					t.Errorf("credentials forwarded upstream")
				}
				if got := resp.Header.Get("X-Portcullis-User"); got != "" {
					t.Errorf("upstream's X-Portcullis-User reached the client: %q", got)
				}
			})
		}
	}
}

func TestTraversalPathsAreRefusedOrForwardedAsRouted(t *testing.T) {
	ps, seen, rec, _ := newTestProxy(t, []Route{
		{Name: "public", Host: "app.test", Path: "/public", Public: true},
		{Name: "root", Host: "app.test", Path: "/"},
	})
	tests := []struct {
		target    string
		wantPath  string // "" = 400
		wantRoute string
	}{
		{"/public/a", "/public/a", "public"},
		{"/public/../admin", "/admin", "root"},
		{"/public/%2e%2e/admin", "/admin", "root"},
		{"/public/%2E%2e/admin", "/admin", "root"},
		{"/public/.%2E/admin", "/admin", "root"},
		{"//public//a", "/public/a", "public"},
		{"/public/./a", "/public/a", "public"},
		{"/%70ublic/a", "/public/a", "public"},
		{"/public%2f..%2fadmin", "", ""},
		{"/public%2F..%2Fadmin", "", ""},
		{"/public%5c..%5cadmin", "", ""},
		{"/public\\..\\admin", "", ""},
		{"/public/%252e%252e/admin", "", ""},
		{"/public/%00/a", "", ""},
		{"/public/%0d%0aSet-Cookie:x", "", ""},
		{"/public/..;/admin", "", ""},
		{"/public/a%zz", "", ""},
		{"/public/a%", "", ""},
		{"http://app.test/public/a", "", ""},
		{"/public/\x7f", "", ""},
		{"/public/a#b", "", ""},
		{"/publicx", "/publicx", "root"},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			before := len(rec.all())
			hdr := http.Header{"Authorization": {"Test alice"}}
			resp, body := do(t, ps, "GET", "app.test", tt.target, hdr)
			if tt.wantPath == "" {
				if resp.StatusCode != http.StatusBadRequest {
					t.Fatalf("status = %d (%s), want 400", resp.StatusCode, body)
				}
			} else {
				if resp.StatusCode != 200 {
					t.Fatalf("status = %d (%s), want 200", resp.StatusCode, body)
				}
				if got := seen.last().URL.Path; got != tt.wantPath {
					t.Errorf("upstream path = %q, want %q", got, tt.wantPath)
				}
			}
			evs := rec.all()
			if len(evs) == before && tt.wantPath == "" && resp.Header.Get("X-Request-Id") == "" {
				// net/http refused the request line itself (invalid
				// escapes, control bytes) before any handler ran.
				return
			}
			if len(evs) != before+1 {
				t.Fatalf("audit events = %d, want one more than %d", len(evs), before)
			}
			ev := evs[len(evs)-1]
			if ev.Route != tt.wantRoute {
				t.Errorf("audited route = %q, want %q", ev.Route, tt.wantRoute)
			}
			if tt.wantPath != "" && ev.Request.Path != tt.wantPath {
				t.Errorf("audited path = %q, want the routed path %q", ev.Request.Path, tt.wantPath)
			}
		})
	}
}

func TestDecisionsAndStatuses(t *testing.T) {
	ps, seen, rec, _ := newTestProxy(t, []Route{
		{Name: "app", Host: "app.test", Path: "/"},
		{Name: "open", Host: "open.test", Path: "/", Public: true},
		{Name: "sub", Host: "sub.test", Path: "/app"},
	})
	alice := http.Header{"Authorization": {"Test alice"}}
	tests := []struct {
		name, host, target string
		hdr                http.Header
		wantStatus         int
		wantDecision       string
	}{
		{"allowed", "app.test", "/x?secret=1", alice, 200, "allow"},
		{"encoded question mark", "app.test", "/q%3Fsecret=1", alice, 200, "allow"},
		{"denied", "app.test", "/deny/x", alice, 403, "deny"},
		{"policy error", "app.test", "/broken", alice, 403, "error"},
		{"policy hides the route", "app.test", "/hidden", alice, 404, "deny"},
		{"no route", "nothing.test", "/", alice, 404, "deny"},
		{"browser sign-in", "app.test", "/x", http.Header{"Accept": {"text/html"}}, 302, "unauthenticated"},
		{"browser sign-in, media type in capitals", "app.test", "/x", http.Header{"Accept": {"application/xml", "Text/HTML;q=0.9"}}, 302, "unauthenticated"},
		{"api sign-in", "app.test", "/x", nil, 401, "unauthenticated"},
		{"bad credentials", "app.test", "/x", http.Header{"Authorization": {"Bearer forged"}}, 401, "unauthenticated"},
		{"public anonymous", "open.test", "/x", nil, 200, "allow"},
		{"own endpoint", "app.test", "/.portcullis/me", nil, 200, "allow"},
		{"own endpoint on external host", "auth.test", "/.portcullis/login", nil, 200, "allow"},
		{"own endpoint on a host without a / route", "sub.test", "/.portcullis/callback", nil, 200, "allow"},
		{"no route on a host without a / route", "sub.test", "/other", alice, 404, "deny"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, ps, "GET", tt.host, tt.target, tt.hdr)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d (%s), want %d", resp.StatusCode, body, tt.wantStatus)
			}
			rid := resp.Header.Get("X-Request-Id")
			if ids := resp.Header.Values("X-Request-Id"); len(ids) != 1 || rid == "" || rid == "upstream-chose-this" {
				t.Errorf("response X-Request-Id = %q, want exactly one, Portcullis's", ids)
			}
			evs := rec.all()
			ev := evs[len(evs)-1]
			if ev.Decision != tt.wantDecision || ev.Response.Status != tt.wantStatus || ev.RequestID != rid {
				t.Errorf("audit event = %s/%d/%s, want %s/%d/%s", ev.Decision, ev.Response.Status, ev.RequestID, tt.wantDecision, tt.wantStatus, rid)
			}
			if strings.Contains(ev.Request.Path, "secret") && ev.Request.Path != "/q%3Fsecret=1" || strings.Contains(ev.Request.Path, "?") {
				t.Errorf("query string recorded, or a path that reads as one: %q", ev.Request.Path)
			}
			if tt.name == "policy hides the route" {
				// Indistinguishable from a request for no route; the
				// audit event keeps the policy's reason.
				_, noRoute := do(t, ps, "GET", "nothing.test", "/", alice)
				var a, b map[string]string
				json.Unmarshal([]byte(body), &a)
				json.Unmarshal([]byte(noRoute), &b)
				if a["error"] != b["error"] || a["reason"] != b["reason"] || a["error"] != "not_found" {
					t.Errorf("policy 404 body %s differs from a no-route 404 %s", body, noRoute)
				}
				if ev.Reason != "source address outside the office ranges" {
					t.Errorf("audited reason %q, want the policy's", ev.Reason)
				}
			}
			switch tt.wantStatus {
			case 403:
				var j map[string]string
				wantReason := "denied by test"
				if tt.wantDecision == "error" {
					// The policy's internals go to the audit event only.
					wantReason = "the access policy could not be evaluated; quote the request id to an administrator"
					if !strings.Contains(ev.Reason, "app.rego:3") {
						t.Errorf("audited reason %q lost the policy's error", ev.Reason)
					}
				}
				if err := json.Unmarshal([]byte(body), &j); err != nil || j["error"] != "forbidden" || j["request_id"] != rid || j["reason"] != wantReason {
					t.Errorf("403 body = %s, want JSON error/request_id/reason %q", body, wantReason)
				}
			case 401:
				if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("401 without WWW-Authenticate: Bearer")
				}
			}
		})
	}
	// Policy headers reach the upstream on allow, and public anonymous
	// requests carry no identity.
	do(t, ps, "GET", "open.test", "/y", nil)
	r := seen.last()
	if r.Header.Get("X-Policy-Header") != "yes" || r.Header.Get("X-Portcullis-User") != "" {
		t.Errorf("public request headers = %v", r.Header)
	}
	// Headers the policy controls carry its value or none, whatever the
	// client sends, in whichever spelling.
	do(t, ps, "GET", "app.test", "/x", http.Header{"Authorization": {"Test alice"},
		"X-Role": {"admin"}, "X_Role": {"admin"}, "X_Policy_Header": {"evil"}, "x-policy-header": {"evil"}, "X-Tenant": {"evil"}})
	if h := seen.last().Header; h.Get("X-Role") != "" || h.Get("X_Role") != "" || h.Get("X-Tenant") != "" || len(h.Values("X-Policy-Header")) != 1 ||
		h.Get("X-Policy-Header") != "yes" || h.Get("X_Policy_Header") != "" {
		t.Errorf("policy-controlled headers at the upstream: %v", h)
	}
	// A group name cannot pass for several groups, or break the header.
	if resp, body := do(t, ps, "GET", "app.test", "/x", http.Header{"Authorization": {"Test mallory"}}); resp.StatusCode != 200 {
		t.Errorf("user with odd group names: %d %s", resp.StatusCode, body)
	} else if got, want := seen.last().Header.Get("X-Portcullis-Groups"), "engineering%2Cadmins,100%25,ops%0D%0AX-Evil: 1,%20admins%20,Domain Admins"; got != want {
		t.Errorf("X-Portcullis-Groups = %q, want %q", got, want)
	}
	// A browser's form post is sent to sign in too (after it the browser
	// comes back with a GET).
	if resp, body := do(t, ps, "POST", "app.test", "/form", http.Header{"Accept": {"text/html,*/*"}}); resp.StatusCode != 302 {
		t.Errorf("browser POST while signed out: %d %s, want 302", resp.StatusCode, body)
	}
	// A browser gets an HTML deny page.
	resp, body := do(t, ps, "GET", "app.test", "/deny", http.Header{"Authorization": {"Test alice"}, "Accept": {"text/html"}})
	if resp.StatusCode != 403 || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(body, "denied by test") {
		t.Errorf("browser deny page: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func TestForwardedHeadersFromUntrustedClientsAreReplaced(t *testing.T) {
	ps, seen, rec, _ := newTestProxy(t, nil)
	hdr := http.Header{"Authorization": {"Test alice"}, "X-Forwarded-For": {"6.6.6.6"}, "X-Forwarded-Host": {"evil.test"}, "X-Forwarded-Proto": {"http"},
		"X-Real-Ip": {"6.6.6.6"}}
	do(t, ps, "GET", "app.test", "/", hdr)
	r := seen.last()
	if got := r.Header.Get("X-Forwarded-For"); got != "127.0.0.1" {
		t.Errorf("X-Forwarded-For = %q, want 127.0.0.1", got)
	}
	if got := r.Header.Values("X-Real-Ip"); len(got) != 1 || got[0] != "127.0.0.1" {
		t.Errorf("X-Real-Ip = %q, want Portcullis's 127.0.0.1", got)
	}
	if r.Header.Get("X-Forwarded-Host") != "app.test" || r.Header.Get("X-Forwarded-Proto") != "https" {
		t.Errorf("X-Forwarded-Host/Proto = %q/%q", r.Header.Get("X-Forwarded-Host"), r.Header.Get("X-Forwarded-Proto"))
	}
	if ev := rec.all()[0]; ev.Request.RemoteAddr != "127.0.0.1" {
		t.Errorf("audited remote_addr = %q", ev.Request.RemoteAddr)
	}
	if got := r.Header.Get("X-Portcullis-Assertion"); !strings.HasSuffix(got, "."+seenOrigin(r)+".GET "+seenOrigin(r)+"/") {
		t.Errorf("assertion = %q, want the upstream origin as audience, bound to GET and the path", got)
	}
	// The assertion names the method and the path exactly as the upstream
	// receives them (escaped), so that a copy of it serves no other request.
	req, _ := http.NewRequest("DELETE", ps.URL+"/a%3Fb/c%20d", nil)
	req.Host = "app.test"
	req.Header.Set("Authorization", "Test alice")
	resp, err := ps.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("DELETE /a%%3Fb/c%%20d: %d", resp.StatusCode)
	}
	r = seen.last()
	if got, want := r.Header.Get("X-Portcullis-Assertion"), ".DELETE "+seenOrigin(r)+r.URL.EscapedPath(); r.URL.EscapedPath() != "/a%3Fb/c%20d" || !strings.HasSuffix(got, want) {
		t.Errorf("upstream path %q, assertion %q, want it to end in %q", r.URL.EscapedPath(), got, want)
	}
}

func seenOrigin(r *http.Request) string { return "http://" + r.Host }

func TestWebSocketThroughProxy(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo:"), msg...)); err != nil {
				return
			}
		}
	}))
	defer up.Close()
	ps, _, _, _ := newTestProxy(t, []Route{{Name: "ws", Host: "app.test", Path: "/", Upstream: up.URL}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// WebSockets upgrade over HTTP/1.1.
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", ps.Listener.Addr().String())
		},
	}}
	c, _, err := websocket.Dial(ctx, "wss://app.test/ws", &websocket.DialOptions{
		HTTPClient: client, HTTPHeader: http.Header{"Authorization": {"Test alice"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	for i := 0; i < 3; i++ {
		msg := fmt.Sprintf("hello %d", i)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "echo:"+msg {
			t.Errorf("got %q, want %q", got, "echo:"+msg)
		}
	}
}

func TestServerSentEventsArriveOneByOne(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "data: event %d\n\n", i)
			w.(http.Flusher).Flush()
			<-release // the next event is only sent once the client saw this one
		}
	}))
	defer up.Close()
	ps, _, _, _ := newTestProxy(t, []Route{{Name: "sse", Host: "app.test", Path: "/", Upstream: up.URL}})
	req, _ := http.NewRequest("GET", ps.URL+"/events", nil)
	req.Host = "app.test"
	req.Header.Set("Authorization", "Test alice")
	resp, err := ps.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := 0; i < 3; i++ {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("data: event %d\n", i); line != want {
			t.Fatalf("line = %q, want %q", line, want)
		}
		br.ReadString('\n')
		release <- struct{}{}
	}
}

func TestUpstreamFailures(t *testing.T) {
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
	ps, _, rec, _ := newTestProxy(t, []Route{
		{Name: "slow", Host: "slow.test", Path: "/", Upstream: slow.URL, Timeout: 200 * time.Millisecond},
		{Name: "dead", Host: "dead.test", Path: "/", Upstream: deadURL},
	})
	alice := http.Header{"Authorization": {"Test alice"}}
	for host, want := range map[string]int{"slow.test": 504, "dead.test": 502} {
		resp, body := do(t, ps, "GET", host, "/", alice)
		if resp.StatusCode != want {
			t.Errorf("%s: status = %d, want %d", host, resp.StatusCode, want)
		}
		rid := resp.Header.Get("X-Request-Id")
		if rid == "" || !strings.Contains(body, rid) {
			t.Errorf("%s: error page %q does not carry request id %q", host, body, rid)
		}
		evs := rec.all()
		if ev := evs[len(evs)-1]; ev.Response.Status != want {
			t.Errorf("%s: audited status %d, want %d", host, ev.Response.Status, want)
		}
	}
}

func TestAuditPath(t *testing.T) {
	for in, want := range map[string]string{
		"/": "/", "/a/b": "/a/b", "/a?b=1": "/a%3Fb=1", "/100%": "/100%25", "/a%3Fb": "/a%253Fb", "/?%?": "/%3F%25%3F",
	} {
		if got := auditPath(in); got != want {
			t.Errorf("auditPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOnlyWebSocketUpgradesBecomeTunnels: an h2c upgrade (or any but
// WebSocket) would let the client send requests inside the tunnel that no
// policy decides. The upstream never sees the upgrade; one that switches
// protocols anyway gets the client a 502, not a tunnel.
func TestOnlyWebSocketUpgradesBecomeTunnels(t *testing.T) {
	for _, always := range []bool{false, true} {
		t.Run(fmt.Sprintf("upstream switches regardless=%v", always), func(t *testing.T) {
			var sawUpgrade atomic.Bool
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Upgrade") != "" || r.Header.Get("Http2-Settings") != "" {
					sawUpgrade.Store(true)
				}
				if r.Header.Get("Upgrade") == "" && !always {
					io.WriteString(w, "plain")
					return
				}
				conn, brw, err := http.NewResponseController(w).Hijack()
				if err != nil {
					return
				}
				defer conn.Close()
				brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\ntunnel open")
				brw.Flush()
			}))
			defer up.Close()
			ps, _, _, _ := newTestProxy(t, []Route{{Name: "app", Host: "app.test", Path: "/", Upstream: up.URL}})
			hdr := http.Header{"Authorization": {"Test alice"}, "Connection": {"Upgrade, HTTP2-Settings"},
				"Upgrade": {"h2c"}, "Http2-Settings": {"AAMAAABkAARAAAAAAAIAAAAA"}}
			resp, body := do(t, ps, "GET", "app.test", "/", hdr)
			if sawUpgrade.Load() {
				t.Error("the upstream received the h2c upgrade")
			}
			want := 200
			if always {
				want = http.StatusBadGateway
			}
			if resp.StatusCode != want || (!always && body != "plain") {
				t.Errorf("status %d %q, want %d (never 101: no tunnel)", resp.StatusCode, body, want)
			}
		})
	}
}
