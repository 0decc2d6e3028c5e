package identity

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oauth2-proxy/mockoidc"

	"github.com/portcullis/portcullis/internal/idtest"
)

func testSession(clock Clock) *session {
	now := clock.Now()
	return &session{
		Sub: "alice", Email: "alice@example.test", EmailV: true, Groups: []string{"eng"},
		Issuer: "https://idp.example.test", Provider: "corp", Exp: now.Add(time.Hour).Unix(),
	}
}

// sealedCookie returns the session cookie a would set for s.
func sealedCookie(t testing.TB, a *Authenticator, s *session) *http.Cookie {
	t.Helper()
	rec := httptest.NewRecorder()
	if err := a.setSession(rec, httptest.NewRequest(http.MethodGet, "https://app.example.test/", nil), s); err != nil {
		t.Fatal(err)
	}
	for _, c := range rec.Result().Cookies() {
		if c.Name == a.cfg.Session.CookieName {
			return c
		}
	}
	t.Fatal("no session cookie set")
	return nil
}

func authWithCookie(a *Authenticator, name, value string) (*Identity, error, *httptest.ResponseRecorder) {
	r := httptest.NewRequest(http.MethodGet, "https://app.example.test/", nil)
	r.AddCookie(&http.Cookie{Name: name, Value: value})
	rec := httptest.NewRecorder()
	id, err := a.Authenticate(rec, r)
	return id, err, rec
}

func newSessionAuthenticator(t testing.TB, clock Clock, cookieName string, secrets ...string) *Authenticator {
	t.Helper()
	if len(secrets) == 0 {
		secrets = []string{testSecret}
	}
	// The provider testSession names; it is never contacted (its issuer
	// does not resolve), sessions only need it configured.
	cfg := Config{ExternalURL: "https://auth.example.test", Session: SessionConfig{CookieName: cookieName, Secrets: secrets},
		Providers: []ProviderConfig{{Name: "corp", Issuer: "https://idp.example.test", ClientID: "portcullis", ClientSecret: "unused"}}}
	cfg.SetDefaults("")
	acfg := AssertionConfig{SigningKeyFile: tempKeyFileTB(t)}
	acfg.SetDefaults("")
	a, err := New(context.Background(), cfg, acfg, Options{Clock: clock})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

func tempKeyFileTB(t testing.TB) string { return t.TempDir() + "/assertion.pem" }

func secretOf(s string) string {
	return base64.StdEncoding.EncodeToString([]byte(strings.Repeat(s, 32)[:32]))
}

func TestTamperedCookiesAreNoSession(t *testing.T) {
	clock := newFakeClock()
	a := newSessionAuthenticator(t, clock, "")
	good := sealedCookie(t, a, testSession(clock)).Value

	if id, err, _ := authWithCookie(a, "_portcullis", good); err != nil || id == nil || id.Sub != "alice" || id.AuthMethod != MethodSession {
		t.Fatalf("good cookie: %+v, %v", id, err)
	}

	raw, _ := base64.RawURLEncoding.DecodeString(good)
	flip := func(i int) string {
		b := append([]byte(nil), raw...)
		b[i] ^= 0x01
		return base64.RawURLEncoding.EncodeToString(b)
	}
	otherKey := newSessionAuthenticator(t, clock, "", secretOf("k"))
	otherName := newSessionAuthenticator(t, clock, "_other")
	expiredByClock := good

	cases := []struct{ name, value string }{
		{"bit flip in ciphertext", flip(len(raw) / 2)},
		{"bit flip in tag", flip(len(raw) - 1)},
		{"bit flip in nonce", flip(5)},
		{"key id changed", flip(1)},
		{"version changed", flip(0)},
		{"truncated", good[:len(good)-10]},
		{"truncated to header", good[:20]},
		{"sealed with another secret", sealedCookie(t, otherKey, testSession(clock)).Value},
		{"sealed for another cookie name", sealedCookie(t, otherName, testSession(clock)).Value},
		{"empty", ""},
		{"garbage", "not-a-cookie!!"},
		{"base64 of nothing", base64.RawURLEncoding.EncodeToString([]byte{1, 2, 3})},
		{"padded base64", good + "=="},
		{"oversized", strings.Repeat("A", 20000)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err, rec := authWithCookie(a, "_portcullis", tc.value)
			if id != nil || err != nil {
				t.Fatalf("Authenticate = %+v, %v; want no session, no error", id, err)
			}
			if tc.value == "" {
				return
			}
			cleared := false
			for _, c := range rec.Result().Cookies() {
				if c.Name == "_portcullis" && c.MaxAge < 0 {
					cleared = true
				}
			}
			if !cleared {
				t.Error("the bad cookie was not cleared")
			}
		})
	}
	t.Run("expired", func(t *testing.T) {
		clock.Advance(2 * time.Hour)
		defer clock.Advance(-2 * time.Hour)
		if id, err, _ := authWithCookie(a, "_portcullis", expiredByClock); id != nil || err != nil {
			t.Errorf("expired cookie: %+v, %v", id, err)
		}
	})
	t.Run("no cookie", func(t *testing.T) {
		r := httptest.NewRequest(http.MethodGet, "https://app.example.test/", nil)
		rec := httptest.NewRecorder()
		if id, err := a.Authenticate(rec, r); id != nil || err != nil || len(rec.Result().Cookies()) != 0 {
			t.Errorf("no cookie: %+v, %v, cookies %v", id, err, rec.Result().Cookies())
		}
	})
}

func TestSecretRotation(t *testing.T) {
	clock := newFakeClock()
	oldS, newS := secretOf("o"), secretOf("n")
	before := newSessionAuthenticator(t, clock, "", oldS)
	during := newSessionAuthenticator(t, clock, "", newS, oldS)
	after := newSessionAuthenticator(t, clock, "", newS)

	oldCookie := sealedCookie(t, before, testSession(clock)).Value
	if id, _, _ := authWithCookie(during, "_portcullis", oldCookie); id == nil {
		t.Error("a cookie sealed with the old secret does not open while the old secret is second")
	}
	newCookie := sealedCookie(t, during, testSession(clock)).Value
	if id, _, _ := authWithCookie(after, "_portcullis", newCookie); id == nil {
		t.Error("a new cookie is not sealed with the first secret")
	}
	if id, _, _ := authWithCookie(before, "_portcullis", newCookie); id != nil {
		t.Error("a new cookie opens with the old secret alone: it was sealed with the old one")
	}
	if id, _, _ := authWithCookie(after, "_portcullis", oldCookie); id != nil {
		t.Error("a cookie sealed with a retired secret still opens")
	}
}

func TestSessionCookieStaysUnder4KB(t *testing.T) {
	clock := newFakeClock()
	a := newSessionAuthenticator(t, clock, "")
	s := testSession(clock)
	s.IDToken = strings.Repeat("i", 1500)
	s.Refresh = strings.Repeat("r", 800)
	for i := range 400 {
		s.Groups = append(s.Groups, fmt.Sprintf("group-with-a-long-name-%03d", i))
	}
	c := sealedCookie(t, a, s)
	if n := len(c.String()); n > 4096 {
		t.Fatalf("Set-Cookie is %d bytes, want at most 4096", n)
	}
	id, err, _ := authWithCookie(a, "_portcullis", c.Value)
	if err != nil || id == nil {
		t.Fatalf("shrunk cookie does not open: %v", err)
	}
	if len(id.Groups) == 0 || len(id.Groups) >= 401 || id.Groups[0] != "eng" {
		t.Errorf("kept %d groups (first %q), want a prefix of the 401", len(id.Groups), id.Groups[0])
	}
	got, _ := a.readSession(reqWithCookie("_portcullis", c.Value))
	if got.Refresh != s.Refresh || got.IDToken != "" {
		t.Errorf("shrinking must keep the refresh token and drop the ID token first")
	}
}

func reqWithCookie(name, value string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "https://app.example.test/", nil)
	r.AddCookie(&http.Cookie{Name: name, Value: value})
	return r
}

func TestRefreshPicksUpGroupChanges(t *testing.T) {
	h := newHarness(t)
	u := idtest.NewUser("dave", "dave@example.test", "eng", "admins")
	h.idp.QueueUserValue(u)
	fr, _ := h.login(h.client, h.url(appHost, "/"))
	if !slices.Equal(fr.Identity.Groups, []string{"eng", "admins"}) {
		t.Fatalf("groups at sign-in = %v", fr.Identity.Groups)
	}
	u.SetGroups("eng") // an administrator removes dave from admins

	// Before the refresh is due nothing changes.
	h.clock.Advance(5 * time.Minute)
	if id := h.me(t); !slices.Equal(id.Groups, []string{"eng", "admins"}) {
		t.Errorf("groups before refresh = %v", id.Groups)
	}
	// Near the ID token's expiry (10 minutes at mockoidc) the session is
	// refreshed and the removed group is gone.
	h.clock.Advance(3 * time.Minute)
	resp := h.get(h.client, h.url(appHost, PathMe))
	reissued := false
	for _, c := range resp.Cookies() {
		if c.Name == "_portcullis" && c.MaxAge > 0 {
			reissued = true
		}
	}
	if !reissued {
		t.Error("refresh did not re-issue the session cookie")
	}
	if id := h.me(t); !slices.Equal(id.Groups, []string{"eng"}) {
		t.Errorf("groups after refresh = %v, want [eng]", id.Groups)
	}
}

func TestRefreshRefusedSignsOut(t *testing.T) {
	h := newHarness(t)
	h.idp.QueueUser("erin", "erin@example.test", []string{"eng"})
	h.login(h.client, h.url(appHost, "/"))
	h.idp.Mock.QueueError(&mockoidc.ServerError{Code: http.StatusBadRequest, Error: "invalid_grant", Description: "grant revoked"})
	h.clock.Advance(9 * time.Minute)
	resp := h.get(h.client, h.url(appHost, PathMe))
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/me after a revoked grant = %d, want 401", resp.StatusCode)
	}
	if len(h.sessionCookies(h.client, appHost)) != 0 {
		t.Error("session cookie kept after the provider revoked the grant")
	}
}

func TestRefreshOutageKeepsSession(t *testing.T) {
	h := newHarness(t)
	h.idp.QueueUser("fay", "fay@example.test", []string{"eng"})
	h.login(h.client, h.url(appHost, "/"))
	h.idp.Mock.QueueError(&mockoidc.ServerError{Code: http.StatusServiceUnavailable, Error: "temporarily_unavailable"})
	h.clock.Advance(9 * time.Minute)
	if id := h.me(t); id.Sub != "fay" || !slices.Equal(id.Groups, []string{"eng"}) {
		t.Errorf("identity during a provider outage = %+v", id)
	}
}

func (h *harness) me(t *testing.T) *Identity {
	t.Helper()
	resp := h.get(h.client, h.url(appHost, "/whoami"))
	var fr frontReply
	if err := jsonDecode(resp, &fr); err != nil || fr.Identity == nil {
		t.Fatalf("route answered %d: %v", resp.StatusCode, err)
	}
	return fr.Identity
}

func BenchmarkAuthenticateSession(b *testing.B) {
	a := newSessionAuthenticator(b, wallClock{}, "", testSecret)
	s := testSession(wallClock{})
	s.Refresh = strings.Repeat("r", 600)
	s.Groups = []string{"engineering", "admins", "ops"}
	c := sealedCookie(b, a, s)
	r := httptest.NewRequest(http.MethodGet, "https://app.example.test/", nil)
	r.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	r.AddCookie(&http.Cookie{Name: "theme", Value: "dark"})
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		id, err := a.Authenticate(w, r)
		if err != nil || id == nil {
			b.Fatal("no identity")
		}
	}
}

// TestSessionCache: a cookie value that opened is decoded once and then
// served from memory, with the same identity, until the session expires;
// values that do not open are never remembered (the bound is
// internal/twogen's).
func TestSessionCache(t *testing.T) {
	clock := newFakeClock()
	a := newSessionAuthenticator(t, clock, "")
	good := sealedCookie(t, a, testSession(clock)).Value
	first, err, _ := authWithCookie(a, "_portcullis", good)
	if err != nil || first == nil {
		t.Fatalf("good cookie: %+v, %v", first, err)
	}
	if s, _ := a.sessions.Get(good); s == nil {
		t.Fatal("an opened session cookie was not remembered")
	}
	again, err, _ := authWithCookie(a, "_portcullis", good)
	if err != nil || again == nil || fmt.Sprint(*again) != fmt.Sprint(*first) {
		t.Fatalf("remembered session gives %+v, want %+v", again, first)
	}

	raw, _ := base64.RawURLEncoding.DecodeString(good)
	raw[len(raw)/2] ^= 1
	forged := base64.RawURLEncoding.EncodeToString(raw)
	for range 2 {
		if id, _, _ := authWithCookie(a, "_portcullis", forged); id != nil {
			t.Fatalf("forged cookie opened: %+v", id)
		}
	}
	if s, _ := a.sessions.Get(forged); s != nil {
		t.Fatal("a cookie that did not open was remembered")
	}

	clock.Advance(2 * time.Hour)
	id, err, rec := authWithCookie(a, "_portcullis", good)
	if id != nil || err != nil {
		t.Fatalf("remembered session past its expiry: %+v, %v", id, err)
	}
	if c := rec.Result().Cookies(); len(c) == 0 || c[0].MaxAge >= 0 {
		t.Errorf("the expired cookie was not cleared: %v", c)
	}
}
