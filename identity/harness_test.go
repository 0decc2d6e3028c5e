package identity

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/internal/confkit"
	"github.com/portcullis/portcullis/internal/idtest"
)

// fakeClock is a settable clock; it starts at the wall time because the
// provider (mockoidc) signs tokens with the wall time.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

const (
	extHost = "auth.example.test" // external_url's host
	appHost = "app.example.test"  // route host under cookie_domain
	farHost = "far.other.test"    // route host outside cookie_domain
)

var testSecret = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))

// harness runs an Authenticator behind a small stand-in for the proxy on a
// loopback TLS server that answers for every *.test host, with a real
// provider (mockoidc) and a browser-like client.
type harness struct {
	t      *testing.T
	a      *Authenticator
	idp    *idtest.Provider
	srv    *httptest.Server
	port   string
	clock  *fakeClock
	client *http.Client
	cfg    Config
	acfg   AssertionConfig
	opts   Options
}

type harnessOpt func(*harness)

func newHarness(t *testing.T, mods ...harnessOpt) *harness {
	t.Helper()
	h := &harness{t: t, clock: newFakeClock()}
	h.idp = idtest.NewProvider(t)
	h.srv = httptest.NewUnstartedServer(http.HandlerFunc(h.front))
	h.srv.StartTLS()
	t.Cleanup(h.srv.Close)
	_, h.port, _ = net.SplitHostPort(h.srv.Listener.Addr().String())

	h.cfg = Config{
		ExternalURL: "https://" + extHost + ":" + h.port,
		Providers: []ProviderConfig{{
			Name: "corp", Issuer: h.idp.Issuer, ClientID: h.idp.ClientID, ClientSecret: h.idp.ClientSecret,
		}},
		Session: SessionConfig{CookieDomain: ".example.test", Secrets: []string{testSecret}},
		Bearer:  BearerConfig{Enabled: true, Audiences: []string{"portcullis"}},
	}
	h.acfg = AssertionConfig{}
	dir := t.TempDir()
	h.cfg.SetDefaults(dir)
	h.acfg.SetDefaults(dir)
	h.opts = Options{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Clock:  h.clock,
		HostAllowed: func(host string) bool {
			return host == appHost || host == farHost
		},
	}
	for _, m := range mods {
		m(h)
	}
	h.a = h.newAuthenticator()
	h.client = h.newClient()
	return h
}

func (h *harness) newAuthenticator() *Authenticator {
	h.t.Helper()
	var p confkit.Problems
	h.cfg.Validate(&p, "identity")
	if err := p.Err(); err != nil {
		h.t.Fatalf("config: %v", err)
	}
	a, err := New(context.Background(), h.cfg, h.acfg, h.opts)
	if err != nil {
		h.t.Fatalf("New: %v", err)
	}
	return a
}

// newClient is a browser: cookie jar, follows redirects, resolves every
// *.test host to the harness server.
func (h *harness) newClient() *http.Client {
	jar, _ := cookiejar.New(nil)
	addr := h.srv.Listener.Addr().String()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			if host, _, _ := net.SplitHostPort(a); strings.HasSuffix(host, ".test") {
				a = addr
			}
			return (&net.Dialer{}).DialContext(ctx, network, a)
		},
	}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Jar: jar, Transport: tr, Timeout: 20 * time.Second}
}

// noFollow is the same client that stops at the first redirect.
func (h *harness) noFollow(c *http.Client) *http.Client {
	cp := *c
	cp.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cp
}

func (h *harness) url(host, path string) string {
	return "https://" + host + ":" + h.port + path
}

// frontReply is what the stand-in proxy answers for an authenticated
// request to a route.
type frontReply struct {
	Identity  *Identity `json:"identity"`
	Assertion string    `json:"assertion"`
	Cookie    string    `json:"cookie"`
	Auth      string    `json:"authorization"`
}

// front plays the proxy's part: identity endpoints to the handler, then
// authenticate, start sign-in for browsers, 401 otherwise.
func (h *harness) front(w http.ResponseWriter, r *http.Request) {
	a := h.a
	if a.OwnsPath(r.URL.Path) {
		a.Handler().ServeHTTP(w, r)
		return
	}
	id, err := a.Authenticate(w, r)
	if err != nil {
		http.Error(w, "invalid credentials", http.StatusUnauthorized)
		return
	}
	if id == nil {
		if strings.Contains(r.Header.Get("Accept"), "text/html") {
			a.StartLogin(w, r)
			return
		}
		http.Error(w, "sign-in required", http.StatusUnauthorized)
		return
	}
	tok, err := a.Assertion(id, AssertionRequest{Route: "app", Audience: "https://upstream.test", RequestID: "req-1"})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	a.StripCredentials(r.Header)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(frontReply{Identity: id, Assertion: tok, Cookie: r.Header.Get("Cookie"), Auth: r.Header.Get("Authorization")})
}

// login signs the client in starting at startURL and returns the reply of
// the route it lands on.
func (h *harness) login(c *http.Client, startURL string) (frontReply, *http.Response) {
	h.t.Helper()
	resp := idtest.Login(h.t, c, startURL)
	var fr frontReply
	if err := json.NewDecoder(resp.Body).Decode(&fr); err != nil {
		h.t.Fatalf("landing page at %s is not the route's reply: %v", resp.Request.URL, err)
	}
	return fr, resp
}

func (h *harness) get(c *http.Client, rawURL string, header ...string) *http.Response {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		h.t.Fatalf("GET %s: %v", rawURL, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp
}

func readBody(resp *http.Response) string {
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// sessionCookies lists the session cookies the jar would send to host.
func (h *harness) sessionCookies(c *http.Client, host string) []*http.Cookie {
	u, _ := url.Parse(h.url(host, "/"))
	var out []*http.Cookie
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == h.cfg.Session.CookieName {
			out = append(out, ck)
		}
	}
	return out
}

func tempKeyFile(t *testing.T) string { return filepath.Join(t.TempDir(), "keys", "assertion.pem") }

type httpTestServer = httptest.Server

func startTLS(t *testing.T, h http.Handler) *httptest.Server {
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func jsonDecode(resp *http.Response, v any) error {
	return json.NewDecoder(resp.Body).Decode(v)
}
