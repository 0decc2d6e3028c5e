package main

// Sign-in through the whole proxy (SPEC §3, §4): the identity package's own
// tests cover its pieces (tampered cookies, rotation, refresh, the bearer
// attack table, the rd corpus against the validator); these drive the real
// app, listeners and all, with a browser-like client against two providers:
// mockoidc (code this project did not write) and the embedded devidp.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/portcullis/portcullis/internal/devidp"
	"github.com/portcullis/portcullis/internal/idtest"
)

const (
	e2eAppHost = "app.example.test"
	e2eExtHost = "auth.example.test"
	// e2eWLHost is the route host of the open-redirect corpus
	// (testdata/README.md), outside cookie_domain.
	e2eWLHost = "www.whitelisteddomain.tld"
)

// e2eUpstream records what the upstream received.
type e2eUpstream struct {
	*httptest.Server
	mu   sync.Mutex
	last http.Header
}

func newE2EUpstream(t *testing.T) *e2eUpstream {
	u := &e2eUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.last = r.Header.Clone()
		u.mu.Unlock()
		io.WriteString(w, "upstream "+r.URL.Path)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *e2eUpstream) Last() http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last
}

// e2eClient is a browser without auto-redirects: it dials the proxy for the
// test's route hosts and the network for everything else (the providers),
// keeps cookies, and skips certificate checks (proxy/certs tests those).
func e2eClient(s *stack) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{
		Jar:     jar,
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				host, _, _ := net.SplitHostPort(addr)
				if strings.HasSuffix(host, ".example.test") || host == e2eWLHost {
					addr = s.HTTPS
				}
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func e2eGet(t *testing.T, c *http.Client, u string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/html")
	for k, v := range hdr {
		req.Header[k] = v
	}
	return devDo(t, c, req)
}

func e2eLocation(t *testing.T, resp *http.Response, body string) *url.URL {
	t.Helper()
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("%s: status %d without a redirect: %.500s", resp.Request.URL, resp.StatusCode, body)
	}
	return loc
}

func e2eCookie(resp *http.Response, match func(name string) bool) *http.Cookie {
	for _, c := range resp.Cookies() {
		if match(c.Name) {
			return c
		}
	}
	return nil
}

// e2eCheckCookieAttrs: SPEC §3 and the issue: every Portcullis cookie is
// Secure, HttpOnly and SameSite=Lax.
func e2eCheckCookieAttrs(t *testing.T, c *http.Cookie) {
	t.Helper()
	if !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode {
		t.Errorf("cookie %s: Secure=%v HttpOnly=%v SameSite=%v, want Secure, HttpOnly, Lax", c.Name, c.Secure, c.HttpOnly, c.SameSite)
	}
}

// e2eProvider is the provider side of a sign-in.
type e2eProvider struct {
	issuer, clientID, clientSecret string
	// signIn completes the provider's part of a sign-in started at authURL
	// and returns its redirect back to Portcullis's callback.
	signIn     func(t *testing.T, c *http.Client, authURL *url.URL) *url.URL
	endSession string // end_session_endpoint
	sub, email string
	groups     []string
}

// e2eConfig is baseConfig for p with bearer tokens enabled and routes
// app.example.test (docs policy: any signed-in reader) and the corpus's
// www.whitelisteddomain.tld, both to up.
func e2eConfig(p *idtest.Provider, up string) string {
	return stackConfig{IDP: p, Bearer: true}.YAML() + `
routes:
  - name: app
    host: ` + e2eAppHost + `
    upstream: ` + up + `
    policy: portcullis.routes.docs
  - name: wl
    host: ` + e2eWLHost + `
    upstream: ` + up + `
    policy: portcullis.routes.docs
`
}

func e2eMockOIDC(t *testing.T) (*idtest.Provider, *e2eProvider) {
	idp := idtest.NewProvider(t)
	groups := []string{"engineering", "oncall"}
	idp.QueueUser("alice-sub", "alice@example.test", groups)
	return idp, &e2eProvider{
		issuer: idp.Issuer, clientID: idp.ClientID, clientSecret: idp.ClientSecret,
		endSession: idp.EndSessionURL,
		sub:        "alice-sub", email: "alice@example.test", groups: groups,
		signIn: e2eMockSignIn,
	}
}

// e2eMockSignIn: mockoidc signs the next queued user in without a form.
func e2eMockSignIn(t *testing.T, c *http.Client, authURL *url.URL) *url.URL {
	t.Helper()
	resp, body := e2eGet(t, c, authURL.String(), nil)
	return e2eLocation(t, resp, body)
}

// e2eDevIDP starts the embedded provider on loopback http with a client
// registered for the stack's callback and logout URLs.
func e2eDevIDP(t *testing.T, s *stack) *e2eProvider {
	ext := s.URL(e2eExtHost, "")
	client, err := devidp.DemoClient([]string{ext + "/.portcullis/callback"}, []string{ext + "/.portcullis/logout"})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenLoopback(t)
	issuer := "http://" + ln.Addr().String() + "/.devidp"
	idp, err := devidp.New(devidp.Options{Issuer: issuer, Users: devidp.DemoUsers(), Clients: []devidp.Client{client}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: idp}}
	srv.Start()
	t.Cleanup(srv.Close)
	return &e2eProvider{
		issuer: issuer, clientID: client.ID, clientSecret: client.Secret,
		endSession: issuer + "/end_session",
		sub:        "alice", email: "alice@example.com", groups: []string{"engineering"},
		signIn: func(t *testing.T, c *http.Client, authURL *url.URL) *url.URL {
			t.Helper()
			resp, body := e2eGet(t, c, authURL.String(), nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("devidp authorize: %d, want the sign-in form: %.500s", resp.StatusCode, body)
			}
			resp, body = devidpSubmit(t, c, resp.Request.URL, body, "alice", "alice")
			return e2eLocation(t, resp, body)
		},
	}
}

var e2eChallenge = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

// e2eLoginFlow is the whole sign-in, use and sign-out of a browser on the
// app route, checking each step's protocol details.
func e2eLoginFlow(t *testing.T, s *stack, up *e2eUpstream, p *e2eProvider) {
	c := e2eClient(s)
	ext := s.URL(e2eExtHost, "")
	start := s.URL(e2eAppHost, "/docs/page?x=1")

	// 1. A browser without a session is sent to the provider, with PKCE
	// (S256), state and nonce, and a sealed login-state cookie.
	resp, body := e2eGet(t, c, start, nil)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("unauthenticated GET: %d, want 302: %.500s", resp.StatusCode, body)
	}
	auth := e2eLocation(t, resp, body)
	if !strings.HasPrefix(auth.String(), p.issuer+"/") {
		t.Fatalf("redirected to %s, want the provider at %s", auth, p.issuer)
	}
	q := auth.Query()
	for k, want := range map[string]string{
		"response_type": "code", "client_id": p.clientID, "redirect_uri": ext + "/.portcullis/callback",
		"code_challenge_method": "S256",
	} {
		if got := q.Get(k); got != want {
			t.Errorf("authorization request %s = %q, want %q", k, got, want)
		}
	}
	if !e2eChallenge.MatchString(q.Get("code_challenge")) {
		t.Errorf("code_challenge = %q, want 43 base64url characters (S256)", q.Get("code_challenge"))
	}
	state, nonce := q.Get("state"), q.Get("nonce")
	if len(state) < 32 || len(nonce) < 32 || state == nonce {
		t.Errorf("state %q and nonce %q: want two distinct values of 256 bits", state, nonce)
	}
	if !slices.Contains(strings.Fields(q.Get("scope")), "openid") {
		t.Errorf("scope = %q, want openid among them", q.Get("scope"))
	}
	loginCookie := e2eCookie(resp, func(n string) bool { return strings.HasPrefix(n, "_portcullis_login_") })
	if loginCookie == nil {
		t.Fatalf("no login-state cookie in %v", resp.Header.Values("Set-Cookie"))
	}
	e2eCheckCookieAttrs(t, loginCookie)
	if strings.Contains(loginCookie.Value, state) || strings.Contains(loginCookie.Value, nonce) {
		t.Errorf("login-state cookie carries state or nonce in clear")
	}

	// 2. The provider signs alice in and sends her back with state.
	cb := p.signIn(t, c, auth)
	if got := cb.Scheme + "://" + cb.Host + cb.Path; got != ext+"/.portcullis/callback" {
		t.Fatalf("provider redirected to %s, want the callback", cb)
	}
	if cb.Query().Get("state") != state || cb.Query().Get("code") == "" {
		t.Fatalf("callback query %v: want the same state and a code", cb.Query())
	}

	// 3. The callback sets the session and returns to the original URL.
	resp, body = e2eGet(t, c, cb.String(), nil)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != start {
		t.Fatalf("callback: %d to %q, want 302 to %s: %.500s", resp.StatusCode, resp.Header.Get("Location"), start, body)
	}
	sess := e2eCookie(resp, func(n string) bool { return n == "_portcullis" })
	if sess == nil || sess.Value == "" {
		t.Fatalf("callback set no session cookie: %v", resp.Header.Values("Set-Cookie"))
	}
	e2eCheckCookieAttrs(t, sess)
	if sess.Domain != "example.test" && sess.Domain != ".example.test" {
		t.Errorf("session cookie domain %q, want the configured cookie_domain .example.test", sess.Domain)
	}

	// 4. The same callback again, even with the login-state cookie put
	// back (an attacker who captured both), is refused cleanly and signs
	// nobody in.
	t.Run("replayed state", func(t *testing.T) {
		rc := e2eClient(s)
		extURL, _ := url.Parse(ext)
		rc.Jar.SetCookies(extURL, []*http.Cookie{{Name: loginCookie.Name, Value: loginCookie.Value, Path: "/"}})
		resp, body := e2eGet(t, rc, cb.String(), nil)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("replayed callback: %d, want 400: %.300s", resp.StatusCode, body)
		}
		if ck := e2eCookie(resp, func(n string) bool { return n == "_portcullis" }); ck != nil && ck.MaxAge >= 0 {
			t.Errorf("replayed callback set a session cookie")
		}
		resp, _ = e2eGet(t, rc, s.URL(e2eAppHost, "/.portcullis/me"), http.Header{"Accept": {"application/json"}})
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("after a replayed callback /.portcullis/me: %d, want 401", resp.StatusCode)
		}
	})

	// 5. Signed in, the request reaches the upstream with the identity
	// headers; client-supplied copies are replaced and the session cookie
	// is not forwarded (other cookies are).
	appURL, _ := url.Parse(s.URL(e2eAppHost, "/"))
	c.Jar.SetCookies(appURL, []*http.Cookie{{Name: "theme", Value: "dark", Path: "/"}})
	resp, body = e2eGet(t, c, start, http.Header{
		"X-Portcullis-User": {"mallory"}, "X-Portcullis-Groups": {"admins"},
		"X-Portcullis-Assertion": {"forged"}, "x-portcullis-email": {"mallory@evil.test"},
	})
	if resp.StatusCode != http.StatusOK || body != "upstream /docs/page" {
		t.Fatalf("signed-in GET: %d %q, want 200 from the upstream", resp.StatusCode, body)
	}
	h := up.Last()
	if got := h.Values("X-Portcullis-User"); len(got) != 1 || got[0] != p.sub {
		t.Errorf("X-Portcullis-User = %q, want [%s]", got, p.sub)
	}
	if got := h.Values("X-Portcullis-Email"); len(got) != 1 || got[0] != p.email {
		t.Errorf("X-Portcullis-Email = %q, want [%s]", got, p.email)
	}
	if got := h.Values("X-Portcullis-Groups"); len(got) != 1 || got[0] != strings.Join(p.groups, ",") {
		t.Errorf("X-Portcullis-Groups = %q, want [%s]", got, strings.Join(p.groups, ","))
	}
	if ck := h.Get("Cookie"); strings.Contains(ck, "_portcullis") || !strings.Contains(ck, "theme=dark") {
		t.Errorf("upstream Cookie = %q, want theme=dark without the session cookie", ck)
	}
	if got := h.Values("X-Portcullis-Assertion"); len(got) != 1 {
		t.Fatalf("X-Portcullis-Assertion = %q, want one", got)
	}
	e2eVerifyAssertion(t, c, s, h, p, ext, up.URL)

	// 6. /.portcullis/me tells the browser who it is.
	resp, body = e2eGet(t, c, s.URL(e2eAppHost, "/.portcullis/me"), http.Header{"Accept": {"application/json"}})
	var me struct {
		Sub        string `json:"sub"`
		AuthMethod string `json:"auth_method"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &me) != nil || me.Sub != p.sub || me.AuthMethod != "session" {
		t.Errorf("/.portcullis/me: %d %s, want 200 with sub %s by session", resp.StatusCode, body, p.sub)
	}

	// 7. Logout clears the session and continues at the provider's
	// end_session_endpoint, which returns to external_url's logout.
	resp, body = e2eGet(t, c, s.URL(e2eAppHost, "/.portcullis/logout"), nil)
	cleared := e2eCookie(resp, func(n string) bool { return n == "_portcullis" })
	if cleared == nil || cleared.MaxAge >= 0 {
		t.Errorf("logout did not expire the session cookie: %v", resp.Header.Values("Set-Cookie"))
	}
	end := e2eLocation(t, resp, body)
	if !strings.HasPrefix(end.String(), p.endSession) {
		t.Fatalf("logout redirected to %s, want the provider's end_session_endpoint %s", end, p.endSession)
	}
	eq := end.Query()
	if eq.Get("post_logout_redirect_uri") != ext+"/.portcullis/logout" || eq.Get("id_token_hint") == "" || eq.Get("client_id") != p.clientID {
		t.Errorf("end-session request %v: want post_logout_redirect_uri %s/.portcullis/logout, id_token_hint and client_id", eq, ext)
	}
	resp, body = e2eGet(t, c, end.String(), nil)
	back := e2eLocation(t, resp, body)
	resp, body = e2eGet(t, c, back.String(), nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "signed out") {
		t.Errorf("back from the provider at %s: %d, want the signed-out page: %.300s", back, resp.StatusCode, body)
	}
	resp, _ = e2eGet(t, c, s.URL(e2eAppHost, "/.portcullis/me"), http.Header{"Accept": {"application/json"}})
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("after logout /.portcullis/me: %d, want 401", resp.StatusCode)
	}
	resp, body = e2eGet(t, c, start, nil)
	if loc, _ := resp.Location(); resp.StatusCode != http.StatusFound || loc == nil || !strings.HasPrefix(loc.String(), p.issuer+"/") {
		t.Errorf("after logout the app: %d to %v, want 302 to the provider: %.300s", resp.StatusCode, loc, body)
	}
}

// e2eVerifyAssertion checks X-Portcullis-Assertion with golang-jwt (not the
// go-jose the proxy signs with) against the JWKS the proxy serves.
func e2eVerifyAssertion(t *testing.T, c *http.Client, s *stack, h http.Header, p *e2eProvider, ext, upstream string) {
	t.Helper()
	resp, body := e2eGet(t, c, s.URL(e2eAppHost, "/.well-known/portcullis/jwks.json"), http.Header{"Accept": {"application/json"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("JWKS: %d %s", resp.StatusCode, body)
	}
	keys := e2eParseJWKS(t, []byte(body))
	raw := h.Get("X-Portcullis-Assertion")
	keyFunc := func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		k, ok := keys[kid]
		if !ok {
			return nil, fmt.Errorf("kid %q is not in the JWKS", kid)
		}
		return k, nil
	}
	type assertionClaims struct {
		jwt.RegisteredClaims
		Email  string   `json:"email"`
		Groups []string `json:"groups"`
		Route  string   `json:"route"`
	}
	var cl assertionClaims
	_, err := jwt.ParseWithClaims(raw, &cl, keyFunc,
		jwt.WithValidMethods([]string{"ES256"}), jwt.WithIssuer(ext), jwt.WithAudience(upstream),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithLeeway(5*time.Second))
	if err != nil {
		t.Fatalf("assertion does not verify with the served JWKS: %v", err)
	}
	if cl.Subject != p.sub || cl.Email != p.email || !slices.Equal(cl.Groups, p.groups) || cl.Route != "app" {
		t.Errorf("assertion sub %q email %q groups %v route %q, want %s %s %v app", cl.Subject, cl.Email, cl.Groups, cl.Route, p.sub, p.email, p.groups)
	}
	if cl.ID == "" || cl.ID != h.Get("X-Request-Id") {
		t.Errorf("assertion jti %q, want X-Request-Id %q", cl.ID, h.Get("X-Request-Id"))
	}
	if life := cl.ExpiresAt.Sub(cl.IssuedAt.Time); life != 60*time.Second {
		t.Errorf("exp - iat = %s, want assertion.lifetime 60s", life)
	}
	// Exactly the claims of SPEC §4, plus htm and htu (README: the request
	// the assertion is for).
	var all map[string]any
	parts := strings.Split(raw, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if err := json.Unmarshal(payload, &all); err != nil {
		t.Fatal(err)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range all {
			if !yield(k) {
				return
			}
		}
	})
	if want := []string{"aud", "email", "exp", "groups", "htm", "htu", "iat", "iss", "jti", "route", "sub"}; !slices.Equal(names, want) {
		t.Errorf("assertion claims %v, want %v", names, want)
	}
	if all["htm"] != "GET" || all["htu"] != upstream+"/docs/page" {
		t.Errorf("assertion htm %v htu %v, want GET %s/docs/page", all["htm"], all["htu"], upstream)
	}
	// The same token for another audience does not verify: the library
	// really checks what it was told to.
	if _, err := jwt.Parse(raw, keyFunc, jwt.WithValidMethods([]string{"ES256"}), jwt.WithAudience("http://other.example.test")); err == nil {
		t.Errorf("assertion verified for a foreign audience")
	}
}

// e2eParseJWKS reads EC P-256 keys by kid, by hand from RFC 7517 fields.
func e2eParseJWKS(t *testing.T, data []byte) map[string]*ecdsa.PublicKey {
	t.Helper()
	var set struct {
		Keys []struct {
			Kty, Crv, Kid, Alg, Use, X, Y string
		} `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		t.Fatalf("JWKS: %v: %s", err, data)
	}
	out := map[string]*ecdsa.PublicKey{}
	for _, k := range set.Keys {
		if k.Kty != "EC" || k.Crv != "P-256" {
			t.Errorf("JWKS key %s: kty %s crv %s, want EC P-256", k.Kid, k.Kty, k.Crv)
			continue
		}
		x, errX := base64.RawURLEncoding.DecodeString(k.X)
		y, errY := base64.RawURLEncoding.DecodeString(k.Y)
		if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
			t.Fatalf("JWKS key %s: bad coordinates", k.Kid)
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			t.Fatalf("JWKS key %s: %v", k.Kid, err)
		}
		out[k.Kid] = pub
	}
	if len(out) == 0 {
		t.Fatalf("JWKS without keys: %s", data)
	}
	return out
}

func TestE2ELoginFlowMockOIDC(t *testing.T) {
	up := newE2EUpstream(t)
	idp, p := e2eMockOIDC(t)
	s := newStack(t, e2eConfig(idp, up.URL))
	s.Start(appOptions{})
	e2eLoginFlow(t, s, up, p)
	if reqs := idp.AuthorizeRequests(); len(reqs) != 1 || reqs[0].Get("code_challenge_method") != "S256" {
		t.Errorf("mockoidc saw %d authorization requests (%v), want 1 with PKCE S256", len(reqs), reqs)
	}
}

func TestE2ELoginFlowDevIDP(t *testing.T) {
	up := newE2EUpstream(t)
	// The stack's port goes into the provider's registered redirect URIs,
	// so the config is written once the provider exists.
	s := newStack(t, "")
	p := e2eDevIDP(t, s)
	s.WriteConfig(e2eConfig(&idtest.Provider{Issuer: p.issuer, ClientID: p.clientID, ClientSecret: p.clientSecret}, up.URL))
	s.Start(appOptions{})
	e2eLoginFlow(t, s, up, p)
}

// TestE2EForgedStateFailsCleanly: callbacks that no sign-in started are 400
// pages, never a 5xx and never a session.
func TestE2EForgedStateFailsCleanly(t *testing.T) {
	up := newE2EUpstream(t)
	idp, _ := e2eMockOIDC(t)
	s := newStack(t, e2eConfig(idp, up.URL))
	s.Start(appOptions{})

	// A real login-state cookie, for the cases that pair it with a wrong
	// state.
	c := e2eClient(s)
	resp, body := e2eGet(t, c, s.URL(e2eAppHost, "/"), nil)
	auth := e2eLocation(t, resp, body)
	realState := auth.Query().Get("state")
	login := e2eCookie(resp, func(n string) bool { return strings.HasPrefix(n, "_portcullis_login_") })
	if login == nil {
		t.Fatal("no login-state cookie")
	}
	forged := "AAAA" + realState[4:]
	cases := []struct {
		name   string
		query  string
		cookie *http.Cookie
	}{
		{"no state", "code=abc", nil},
		{"short state", "code=abc&state=x", nil},
		{"random state, no cookie", "code=abc&state=" + strings.Repeat("Q", 43), nil},
		{"real state, no cookie", "code=abc&state=" + realState, nil},
		{"forged state with the real cookie", "code=abc&state=" + forged, login},
		{"real state with a forged cookie value", "code=abc&state=" + realState, &http.Cookie{Name: login.Name, Value: login.Value[:len(login.Value)-4] + "AAAA"}},
		{"real state with a cookie renamed to the forged state", "code=abc&state=" + forged, &http.Cookie{Name: "_portcullis_login_" + forged[:12], Value: login.Value}},
		{"oversized state", "code=abc&state=" + strings.Repeat("Q", 5000), nil},
		{"provider error with forged state", "error=access_denied&state=" + forged, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fc := e2eClient(s)
			u := s.URL(e2eExtHost, "/.portcullis/callback?"+tc.query)
			hdr := http.Header{}
			if tc.cookie != nil {
				hdr.Set("Cookie", tc.cookie.Name+"="+tc.cookie.Value)
			}
			resp, body := e2eGet(t, fc, u, hdr)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%d, want 400: %.300s", resp.StatusCode, body)
			}
			if ck := e2eCookie(resp, func(n string) bool { return n == "_portcullis" }); ck != nil && ck.MaxAge >= 0 {
				t.Errorf("a session cookie was set")
			}
		})
	}
	// The real sign-in still completes afterwards: the forgeries did not
	// use up its state.
	cb := e2eMockSignIn(t, c, auth)
	resp, body = e2eGet(t, c, cb.String(), nil)
	if resp.StatusCode != http.StatusFound || e2eCookie(resp, func(n string) bool { return n == "_portcullis" }) == nil {
		t.Errorf("the genuine callback after the forgeries: %d, want 302 with a session: %.300s", resp.StatusCode, body)
	}
}

// TestE2EProviderUnavailable: credentials that cannot be checked because
// the provider is down are 503 (not 401); invalid ones stay 401.
func TestE2EProviderUnavailable(t *testing.T) {
	up := newE2EUpstream(t)
	ln := listenLoopback(t)
	down := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there
	s := newStack(t, e2eConfig(&idtest.Provider{Issuer: down, ClientID: "portcullis", ClientSecret: "secret"}, up.URL))
	s.Start(appOptions{})
	c := e2eClient(s)

	seg := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	token := func(iss string) string {
		return seg(map[string]string{"alg": "ES256", "kid": "k1"}) + "." +
			seg(map[string]any{"iss": iss, "sub": "robot", "aud": "portcullis", "exp": time.Now().Add(time.Hour).Unix()}) + "." +
			base64.RawURLEncoding.EncodeToString([]byte("signature"))
	}
	for _, tc := range []struct {
		name  string
		token string
		want  int
	}{
		{"token of the unreachable provider", token(down), http.StatusServiceUnavailable},
		{"token of an unknown issuer", token("https://evil.example"), http.StatusUnauthorized},
		{"not a JWT", "garbage", http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e2eGet(t, c, s.URL(e2eAppHost, "/api"), http.Header{
				"Accept": {"application/json"}, "Authorization": {"Bearer " + tc.token},
			})
			if resp.StatusCode != tc.want {
				t.Errorf("%d, want %d: %.300s", resp.StatusCode, tc.want, body)
			}
			if tc.want == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
				t.Errorf("503 without Retry-After")
			}
		})
	}
	// A browser is sent to the sign-in page, which says the provider is
	// unreachable.
	resp, body := e2eGet(t, c, s.URL(e2eAppHost, "/"), nil)
	loc := e2eLocation(t, resp, body)
	resp, body = e2eGet(t, c, loc.String(), nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("sign-in while the provider is down: %d, want 503: %.300s", resp.StatusCode, body)
	}
	if up.Last() != nil {
		t.Errorf("the upstream was reached")
	}
}

// e2eRedirectPayloads returns a spread of the public open-redirect corpus
// (testdata/openredirects.txt, each line query-unescaped once as a
// browser delivers ?rd=...) and payloads aimed at this test's own hosts.
func e2eRedirectPayloads(t *testing.T, port string) []string {
	t.Helper()
	path := filepath.Join("..", "..", "testdata", "openredirects.txt")
	f, err := os.Open(path)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("open-redirect corpus missing under CI: %v", err)
		}
		t.Skipf("open-redirect corpus not found (%v): it lives in testdata/ at the repository root", err)
	}
	defer f.Close()
	var corpus []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rd, err := url.QueryUnescape(sc.Text()); err == nil && strings.TrimSpace(rd) != "" {
			corpus = append(corpus, rd)
		}
	}
	if len(corpus) < 500 {
		t.Fatalf("corpus has %d usable lines, want about 559", len(corpus))
	}
	var out []string
	for i := 0; i < len(corpus); i += len(corpus) / 40 {
		out = append(out, corpus[i])
	}
	ours := []string{
		"//evil.example",
		"/\\evil.example",
		"https://evil.example/",
		"https://" + e2eAppHost + ".evil.example:" + port + "/",
		"https://" + e2eAppHost + ":" + port + "@evil.example/",
		"https://evil.example@" + e2eAppHost + ":" + port + "/",
		"https://" + e2eAppHost + ":" + port + "\\@evil.example/",
		"http://" + e2eAppHost + ":" + port + "/",       // a downgrade to http
		"https://xn--pp-7kc.example.test:" + port + "/", // "аpp" with a Cyrillic а, in punycode
		"https://аpp.example.test:" + port + "/",        // and as Unicode
		"https:%2f%2fevil.example",
		"/%2f%2fevil.example",
		"/%252f%252fevil.example",
		"javascript:alert(document.domain)//" + e2eAppHost,
		"data:text/html,<script>alert(1)</script>",
		"\t//evil.example",
		" https://evil.example",
		"https://evil.example%2f" + e2eAppHost,
		"//" + e2eAppHost + "%2f@evil.example",
	}
	return append(out, ours...)
}

// e2eFollow follows redirects one by one from u, failing the test when a
// hop leaves the configured hosts (or goes to another host than the
// provider's), and returns the last response, its body and every URL
// visited.
func e2eFollow(t *testing.T, c *http.Client, s *stack, u string, providerHosts ...string) (*http.Response, string, []string) {
	t.Helper()
	_, port, _ := net.SplitHostPort(s.HTTPS)
	ours := map[string]bool{e2eAppHost: true, e2eExtHost: true, e2eWLHost: true}
	var hops []string
	for range 12 {
		resp, body := e2eGet(t, c, u, nil)
		hops = append(hops, u)
		if resp.StatusCode < 300 || resp.StatusCode > 399 {
			return resp, body, hops
		}
		loc := e2eLocation(t, resp, body)
		switch {
		case slices.Contains(providerHosts, loc.Host):
		case loc.Scheme == "https" && ours[loc.Hostname()] && loc.Port() == port && loc.User == nil:
		default:
			t.Errorf("redirected off the configured hosts to %q (hops %q)", loc.String(), hops)
			return resp, body, hops
		}
		u = loc.String()
	}
	t.Errorf("more than 12 redirects: %q", hops)
	return nil, "", hops
}

// TestE2ERdPayloadsStayOnConfiguredHosts sends open-redirect payloads as
// the rd of /.portcullis/login (and /logout) on a route host outside the
// cookie domain, completes the sign-in at the provider each time, and
// checks that every redirect stays on a configured host and that the
// browser lands on the route host's root, the safe default.
func TestE2ERdPayloadsStayOnConfiguredHosts(t *testing.T) {
	up := newE2EUpstream(t)
	idp, _ := e2eMockOIDC(t)
	s := newStack(t, e2eConfig(idp, up.URL))
	_, port, _ := net.SplitHostPort(s.HTTPS)
	payloads := e2eRedirectPayloads(t, port)
	if len(payloads) < 40 {
		t.Fatalf("%d payloads, want at least 40", len(payloads))
	}
	s.Start(appOptions{})
	var providerHosts []string
	for _, raw := range []string{idp.Issuer, idp.EndSessionURL} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		providerHosts = append(providerHosts, u.Host)
	}
	safe := s.URL(e2eWLHost, "/")

	for i, rd := range payloads {
		t.Run(fmt.Sprintf("%02d", i), func(t *testing.T) {
			c := e2eClient(s)
			resp, body, hops := e2eFollow(t, c, s, s.URL(e2eWLHost, "/.portcullis/login?rd="+url.QueryEscape(rd)), providerHosts...)
			if t.Failed() {
				t.Logf("rd %q", rd)
				return
			}
			last := hops[len(hops)-1]
			if resp.StatusCode != http.StatusOK || last != safe || body != "upstream /" {
				t.Errorf("rd %q: ended at %s with %d %.100q, want %s from the upstream (hops %q)", rd, last, resp.StatusCode, body, safe, hops)
			}
			// Signed in now: logout with the same rd ends at Portcullis's
			// signed-out page or the safe default, never elsewhere.
			resp, body, hops = e2eFollow(t, c, s, s.URL(e2eWLHost, "/.portcullis/logout?rd="+url.QueryEscape(rd)), providerHosts...)
			if t.Failed() {
				t.Logf("rd %q (logout)", rd)
				return
			}
			if resp.StatusCode != http.StatusOK {
				t.Errorf("logout rd %q: %d at %s, want 200 (hops %q): %.200s", rd, resp.StatusCode, hops[len(hops)-1], hops, body)
			}
		})
	}

	// Controls: genuine targets are followed, so the refusals above are
	// not a validator that refuses everything.
	for _, tc := range []struct{ rd, want string }{
		{"/docs/page?x=1", s.URL(e2eWLHost, "/docs/page?x=1")},
		{s.URL(e2eAppHost, "/elsewhere"), s.URL(e2eAppHost, "/elsewhere")},
	} {
		c := e2eClient(s)
		resp, _, hops := e2eFollow(t, c, s, s.URL(e2eWLHost, "/.portcullis/login?rd="+url.QueryEscape(tc.rd)), providerHosts...)
		if last := hops[len(hops)-1]; resp == nil || resp.StatusCode != http.StatusOK || last != tc.want {
			t.Errorf("rd %q: ended at %s, want %s", tc.rd, last, tc.want)
		}
	}
}
