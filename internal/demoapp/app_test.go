package demoapp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const (
	issuer   = "https://localhost:8443"
	audience = "http://127.0.0.1:9000"
)

// signer holds an ES256 key and signs assertions shaped like SPEC §4.
type signer struct {
	key *ecdsa.PrivateKey
	kid string
	alg jose.SignatureAlgorithm
}

func newSigner(t *testing.T) *signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk := jose.JSONWebKey{Key: &key.PublicKey}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{key: key, kid: base64.RawURLEncoding.EncodeToString(tp), alg: jose.ES256}
}

func (s *signer) jwks() []byte {
	b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &s.key.PublicKey, KeyID: s.kid, Algorithm: "ES256", Use: "sig"}}})
	return b
}

func (s *signer) sign(t *testing.T, claims map[string]any) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: s.alg, Key: jose.JSONWebKey{Key: s.key, KeyID: s.kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(claims)
	obj, err := sig.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func assertionClaims(now time.Time) map[string]any {
	return map[string]any{
		"iss": issuer, "aud": audience, "sub": "alice", "email": "alice@example.com",
		"groups": []string{"engineering"}, "route": "demo",
		"iat": now.Unix(), "exp": now.Add(60 * time.Second).Unix(), "jti": "req-1",
	}
}

type fixture struct {
	clock   *fakeClock
	signer  *signer
	fetches *atomic.Int32
	app     *App
}

func newFixture(t *testing.T, mutate func(*Options)) *fixture {
	t.Helper()
	f := &fixture{
		clock:   &fakeClock{t: time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)},
		signer:  newSigner(t),
		fetches: &atomic.Int32{},
	}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(f.signer.jwks())
	}))
	t.Cleanup(jwks.Close)
	opts := Options{
		Clock:         f.clock,
		JWKSURL:       jwks.URL + "/.well-known/portcullis/jwks.json",
		Issuer:        issuer,
		Audience:      audience,
		HTTPClient:    jwks.Client(),
		EventInterval: time.Millisecond,
		EventLimit:    2,
	}
	if mutate != nil {
		mutate(&opts)
	}
	app, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	f.app = app
	return f
}

// request builds a request as Portcullis would forward it.
func request(path, assertion, accept string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:9000"+path, nil)
	r.Header.Set("X-Portcullis-User", "alice")
	r.Header.Set("X-Portcullis-Email", "alice@example.com")
	r.Header.Set("X-Portcullis-Groups", "engineering")
	r.Header.Set("X-Request-Id", "req-1")
	r.Header.Set("X-Forwarded-For", "127.0.0.1")
	r.Header.Set("X-Forwarded-Proto", "https")
	r.Header.Set("X-Forwarded-Host", "localhost:8443")
	r.Header.Set("Cookie", "secret=1")
	if assertion != "" {
		r.Header.Set("X-Portcullis-Assertion", assertion)
	}
	if accept != "" {
		r.Header.Set("Accept", accept)
	}
	return r
}

func (f *fixture) getJSON(t *testing.T, r *http.Request) Report {
	t.Helper()
	rec := httptest.NewRecorder()
	f.app.ServeHTTP(rec, r)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status %d type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var rep Report
	if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestAssertionVerification(t *testing.T) {
	other := func(t *testing.T) *signer { return newSigner(t) }
	cases := []struct {
		name         string
		assertion    func(t *testing.T, f *fixture) string
		later        time.Duration
		wantVerified bool
		wantError    string
	}{
		{"valid", func(t *testing.T, f *fixture) string { return f.signer.sign(t, assertionClaims(f.clock.Now())) }, 0, true, ""},
		{"expired", func(t *testing.T, f *fixture) string { return f.signer.sign(t, assertionClaims(f.clock.Now())) }, 61 * time.Second, false, "expired"},
		{"wrong issuer", func(t *testing.T, f *fixture) string {
			c := assertionClaims(f.clock.Now())
			c["iss"] = "https://evil.example"
			return f.signer.sign(t, c)
		}, 0, false, "different provider"},
		{"wrong audience", func(t *testing.T, f *fixture) string {
			c := assertionClaims(f.clock.Now())
			c["aud"] = "http://127.0.0.1:9001"
			return f.signer.sign(t, c)
		}, 0, false, "audience"},
		{"unknown key", func(t *testing.T, f *fixture) string { return other(t).sign(t, assertionClaims(f.clock.Now())) }, 0, false, "signature"},
		{"known kid, foreign key", func(t *testing.T, f *fixture) string {
			o := other(t)
			o.kid = f.signer.kid
			return o.sign(t, assertionClaims(f.clock.Now()))
		}, 0, false, "signature"},
		{"ES384 not allowed", func(t *testing.T, f *fixture) string {
			k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			s := &signer{key: k, kid: f.signer.kid, alg: jose.ES384}
			return s.sign(t, assertionClaims(f.clock.Now()))
		}, 0, false, "ES256"},
		{"alg none", func(t *testing.T, f *fixture) string {
			h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"` + f.signer.kid + `"}`))
			b, _ := json.Marshal(assertionClaims(f.clock.Now()))
			return h + "." + base64.RawURLEncoding.EncodeToString(b) + "."
		}, 0, false, "ES256"},
		{"sub differs from X-Portcullis-User", func(t *testing.T, f *fixture) string {
			c := assertionClaims(f.clock.Now())
			c["sub"] = "bob"
			return f.signer.sign(t, c)
		}, 0, false, "does not match X-Portcullis-User"},
		{"garbage", func(*testing.T, *fixture) string { return "not.a.jwt" }, 0, false, "ES256 JWS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			raw := tc.assertion(t, f)
			f.clock.Add(tc.later)
			rep := f.getJSON(t, request("/", raw, "application/json"))
			a := rep.Assertion
			if !a.Present || a.Verified != tc.wantVerified || !strings.Contains(a.Error, tc.wantError) {
				t.Errorf("assertion = verified %v error %q, want verified %v error containing %q", a.Verified, a.Error, tc.wantVerified, tc.wantError)
			}
			if tc.wantVerified && (a.KeyID != f.signer.kid || !a.JTIMatchesRequestID || a.Claims["route"] != "demo") {
				t.Errorf("report = kid %q jti-ok %v claims %v, want kid %q", a.KeyID, a.JTIMatchesRequestID, a.Claims, f.signer.kid)
			}
		})
	}
}

func TestReportJSON(t *testing.T) {
	f := newFixture(t, nil)
	rep := f.getJSON(t, request("/some/path", f.signer.sign(t, assertionClaims(f.clock.Now())), ""))
	want := Report{
		Area: "home", Method: "GET", Path: "/some/path", User: "alice", Email: "alice@example.com",
		Groups: []string{"engineering"}, RequestID: "req-1",
		Forwarded: Forwarded{For: "127.0.0.1", Proto: "https", Host: "localhost:8443"},
	}
	if rep.Area != want.Area || rep.Path != want.Path || rep.User != want.User || rep.Email != want.Email ||
		strings.Join(rep.Groups, ",") != "engineering" || rep.RequestID != want.RequestID || rep.Forwarded != want.Forwarded {
		t.Errorf("report = %+v, want %+v", rep, want)
	}
	if got := rep.Headers.Get("Cookie"); got != "(redacted)" {
		t.Errorf("Cookie shown as %q, want (redacted)", got)
	}
	if !rep.Assertion.Verified {
		t.Errorf("assertion not verified: %s", rep.Assertion.Error)
	}
}

func TestNoAssertion(t *testing.T) {
	f := newFixture(t, nil)
	r := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:9000/", nil)
	rep := f.getJSON(t, r)
	if rep.Assertion.Present || rep.Assertion.Verified || rep.User != "" || len(rep.Groups) != 0 {
		t.Errorf("report = %+v, want no identity", rep)
	}
	if f.fetches.Load() != 0 {
		t.Errorf("JWKS fetched %d times without an assertion", f.fetches.Load())
	}
}

func TestJWKSIsCached(t *testing.T) {
	f := newFixture(t, nil)
	for i := range 3 {
		rep := f.getJSON(t, request("/", f.signer.sign(t, assertionClaims(f.clock.Now())), ""))
		if !rep.Assertion.Verified {
			t.Fatalf("request %d: %s", i, rep.Assertion.Error)
		}
	}
	if n := f.fetches.Load(); n != 1 {
		t.Errorf("JWKS fetched %d times for 3 assertions, want 1", n)
	}
}

func TestAudienceFromRequest(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Audience = "" })
	c := assertionClaims(f.clock.Now())
	rep := f.getJSON(t, request("/", f.signer.sign(t, c), ""))
	if !rep.Assertion.Verified || rep.Assertion.Audience != audience {
		t.Errorf("verified %v audience %q (%s), want verified for %s", rep.Assertion.Verified, rep.Assertion.Audience, rep.Assertion.Error, audience)
	}
}

func TestJWKSUnreachableFailsCleanly(t *testing.T) {
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); hang.Close() })
	f := newFixture(t, func(o *Options) {
		o.JWKSURL = hang.URL
		o.HTTPClient = &http.Client{Timeout: 100 * time.Millisecond}
		o.VerifyTimeout = 100 * time.Millisecond
	})
	rep := f.getJSON(t, request("/", f.signer.sign(t, assertionClaims(f.clock.Now())), ""))
	if rep.Assertion.Verified || rep.Assertion.Error == "" {
		t.Errorf("assertion = %+v, want a verification error", rep.Assertion)
	}
}

func TestHTMLPages(t *testing.T) {
	cases := []struct {
		name    string
		path    string
		mutate  func(r *http.Request)
		want    []string
		notWant []string
	}{
		{"home", "/", nil, []string{"Hello, alice", "alice@example.com", "engineering", "Assertion verified ✓", `href="/.portcullis/logout"`, "Sign out"}, []string{"<h1>Admin area"}},
		{"admin", "/admin", nil, []string{"<h1>Admin area", "Assertion verified ✓"}, nil},
		{"admin subpath", "/admin/users", nil, []string{"<h1>Admin area"}, nil},
		{"escaped", "/", func(r *http.Request) { r.Header.Set("X-Portcullis-Email", `<script>x</script>@example.com`) },
			[]string{"&lt;script&gt;x&lt;/script&gt;@example.com"}, []string{"<script>x</script>"}},
		{"not verified", "/", func(r *http.Request) { r.Header.Set("X-Portcullis-User", "mallory") },
			[]string{"Assertion not verified", "does not match X-Portcullis-User"}, []string{"Assertion verified ✓"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			r := request(tc.path, f.signer.sign(t, assertionClaims(f.clock.Now())), "text/html,application/xhtml+xml")
			if tc.mutate != nil {
				tc.mutate(r)
			}
			rec := httptest.NewRecorder()
			f.app.ServeHTTP(rec, r)
			body := rec.Body.String()
			if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
				t.Fatalf("status %d type %q", rec.Code, rec.Header().Get("Content-Type"))
			}
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("page lacks %q", w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(body, w) {
					t.Errorf("page contains %q", w)
				}
			}
			if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
				t.Errorf("CSP = %q", csp)
			}
		})
	}
}

func TestEvents(t *testing.T) {
	f := newFixture(t, nil)
	srv := httptest.NewServer(f.app)
	t.Cleanup(srv.Close)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/events", nil)
	req.Header.Set("X-Portcullis-User", "alice")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body) // EventLimit 2 ends the stream
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q", ct)
	}
	got := string(body)
	for _, want := range []string{"event: hello\ndata: {\"request_id\":\"\",\"user\":\"alice\"}\n\n", `"n":1`, `"n":2`} {
		if !strings.Contains(got, want) {
			t.Errorf("stream lacks %q:\n%s", want, got)
		}
	}
	if strings.Count(got, "event: tick") != 2 {
		t.Errorf("stream has %d ticks, want 2", strings.Count(got, "event: tick"))
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	cases := []struct {
		name string
		opts Options
	}{
		{"no jwks", Options{Issuer: issuer}},
		{"relative jwks", Options{Issuer: issuer, JWKSURL: "/jwks.json"}},
		{"no issuer", Options{JWKSURL: "https://x.example/jwks.json"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.opts); err == nil {
				t.Errorf("New(%+v) succeeded", tc.opts)
			}
		})
	}
}

func TestSplitGroupsDecodesNames(t *testing.T) {
	got := splitGroups("engineering%2Cadmins, 100%25,ops%0D%0AX,")
	want := []string{"engineering,admins", "100%", "ops\r\nX"}
	if !slices.Equal(got, want) {
		t.Errorf("splitGroups = %q, want %q", got, want)
	}
}
