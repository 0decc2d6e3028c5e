package identity

import (
	"crypto/sha256"
	"encoding/base64"
	"html"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/portcullis/portcullis/internal/idtest"
)

func TestLoginFlowAgainstMockOIDC(t *testing.T) {
	h := newHarness(t)
	h.idp.QueueUser("alice", "alice@example.test", []string{"engineering", "ops"})

	// The first answer is a redirect straight to the provider carrying
	// PKCE (S256), state and nonce; the return target is not in it.
	start := h.url(appHost, "/reports/q3?year=2026")
	nf := h.noFollow(h.client)
	resp := h.get(nf, start, "Accept", "text/html")
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("status = %d, want 302", resp.StatusCode)
	}
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if !strings.HasPrefix(loc.String(), h.idp.Issuer+"/authorize") {
		t.Fatalf("redirect to %s, want the provider's authorization endpoint", loc)
	}
	q := loc.Query()
	for _, k := range []string{"state", "nonce", "code_challenge"} {
		if len(q.Get(k)) < 32 {
			t.Errorf("authorization request %s = %q, want a random value", k, q.Get(k))
		}
	}
	if got := q.Get("code_challenge_method"); got != "S256" {
		t.Errorf("code_challenge_method = %q, want S256", got)
	}
	if got, want := q.Get("redirect_uri"), h.cfg.ExternalURL+PathCallback; got != want {
		t.Errorf("redirect_uri = %q, want %q", got, want)
	}
	if strings.Contains(loc.String(), "reports") {
		t.Errorf("the return target leaks into the provider URL: %s", loc)
	}
	var loginCookie *http.Cookie
	for _, c := range resp.Cookies() {
		if strings.HasPrefix(c.Name, "_portcullis_login_") {
			loginCookie = c
		}
	}
	if loginCookie == nil || !loginCookie.Secure || !loginCookie.HttpOnly || loginCookie.SameSite != http.SameSiteLaxMode || loginCookie.MaxAge != 600 {
		t.Fatalf("login-state cookie = %+v, want Secure HttpOnly SameSite=Lax Max-Age=600", loginCookie)
	}

	// Follow the whole flow: back on the page with the identity.
	fr, final := h.login(h.client, start)
	if got := final.Request.URL.String(); got != start {
		t.Errorf("landed on %s, want %s", got, start)
	}
	id := fr.Identity
	if id.Sub != "alice" || id.Email != "alice@example.test" || !id.EmailVerified || id.AuthMethod != MethodSession ||
		id.Provider != "corp" || id.Issuer != h.idp.Issuer || !slices.Equal(id.Groups, []string{"engineering", "ops"}) {
		t.Errorf("identity = %+v", id)
	}
	if fr.Cookie != "" {
		t.Errorf("session cookie forwarded upstream: %q", fr.Cookie)
	}
	claims := verifyAssertionIndependently(t, h.client, h.url(appHost, PathJWKS), fr.Assertion)
	if claims["sub"] != "alice" || claims["iss"] != h.cfg.ExternalURL || claims["aud"] != "https://upstream.test" ||
		claims["route"] != "app" || claims["jti"] != "req-1" || claims["email"] != "alice@example.test" {
		t.Errorf("assertion claims = %v", claims)
	}

	// The session cookie is on the cookie domain with the right attributes.
	ck := h.sessionCookies(h.client, "other.example.test")
	if len(ck) != 1 {
		t.Fatalf("session cookie not shared under .example.test: %v", ck)
	}
	// Another route host under the domain is signed in without a new login.
	resp = h.get(h.noFollow(h.client), h.url(appHost, "/again"), "Accept", "text/html")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("second request status = %d, want 200", resp.StatusCode)
	}
	if n := len(h.idp.AuthorizeRequests()); n != 1 {
		t.Errorf("provider saw %d authorization requests, want 1", n)
	}
}

func TestSessionCookieAttributes(t *testing.T) {
	h := newHarness(t)
	h.idp.QueueUser("alice", "alice@example.test", nil)
	nf := h.noFollow(h.client)
	resp := h.get(nf, h.url(appHost, "/"), "Accept", "text/html")
	for resp.StatusCode == http.StatusFound {
		loc, _ := resp.Request.URL.Parse(resp.Header.Get("Location"))
		if loc.Path == PathCallback && loc.Hostname() == extHost {
			break
		}
		resp = h.get(nf, loc.String())
	}
	loc, _ := resp.Request.URL.Parse(resp.Header.Get("Location"))
	resp = h.get(nf, loc.String())
	var sc *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "_portcullis" {
			sc = c
		}
	}
	if sc == nil {
		t.Fatalf("callback set no session cookie; status %d", resp.StatusCode)
	}
	if !sc.Secure || !sc.HttpOnly || sc.SameSite != http.SameSiteLaxMode || sc.Path != "/" || sc.Domain != "example.test" {
		t.Errorf("session cookie = %+v, want Secure HttpOnly SameSite=Lax Path=/ Domain=example.test", sc)
	}
	if line := resp.Header.Get("Set-Cookie"); len(line) > 4096 {
		t.Errorf("Set-Cookie is %d bytes, want at most 4096", len(line))
	}
	if got := time.Duration(sc.MaxAge) * time.Second; got < 11*time.Hour || got > 12*time.Hour {
		t.Errorf("Max-Age = %s, want about the 12h session lifetime", got)
	}
}

func TestHandoverToHostOutsideCookieDomain(t *testing.T) {
	h := newHarness(t)
	h.idp.QueueUser("bob", "bob@example.test", []string{"admins"})
	start := h.url(farHost, "/dash")

	nf := h.noFollow(h.client)
	resp := h.get(nf, start, "Accept", "text/html")
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || loc.Hostname() != extHost || loc.Path != PathLogin {
		t.Fatalf("first answer %d to %s, want 302 to external_url's login", resp.StatusCode, loc)
	}

	// Record the hand-over URL on the way.
	var handoverURL string
	c := *h.client
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if req.URL.Query().Get("handover") != "" {
			handoverURL = req.URL.String()
		}
		return nil
	}
	fr, final := h.login(&c, start)
	if final.Request.URL.String() != start || fr.Identity.Sub != "bob" {
		t.Fatalf("landed on %s as %+v", final.Request.URL, fr.Identity)
	}
	if handoverURL == "" || !strings.HasPrefix(handoverURL, h.url(farHost, PathCallback)) {
		t.Fatalf("hand-over went through %q, want the far host's own callback", handoverURL)
	}
	if n := len(h.sessionCookies(h.client, farHost)); n != 1 {
		t.Errorf("far host has %d session cookies, want 1 (host-only)", n)
	}

	// The code is one-time: a replay, even from a fresh browser, is refused.
	fresh := h.newClient()
	if resp := h.get(h.noFollow(fresh), handoverURL); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("replayed hand-over status = %d, want 400", resp.StatusCode)
	}
	// And it is sealed for its host: presented on another host it fails.
	other := strings.Replace(handoverURL, farHost, appHost, 1)
	if resp := h.get(h.noFollow(h.newClient()), other); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("hand-over on another host status = %d, want 400", resp.StatusCode)
	}
	// A later sign-in on the far host reuses the central session: no new
	// authorization request.
	before := len(h.idp.AuthorizeRequests())
	jar2 := h.newClient()
	jar2.Jar = h.client.Jar
	for _, ck := range h.sessionCookies(h.client, farHost) {
		_ = ck
	}
	u, _ := url.Parse(h.url(farHost, "/"))
	h.client.Jar.SetCookies(u, []*http.Cookie{{Name: "_portcullis", Value: "", MaxAge: -1, Path: "/"}})
	if fr, _ := h.login(h.client, h.url(farHost, "/again")); fr.Identity.Sub != "bob" {
		t.Errorf("second far sign-in identity %+v", fr.Identity)
	}
	if after := len(h.idp.AuthorizeRequests()); after != before {
		t.Errorf("provider saw %d new authorization requests, want 0 (SSO)", after-before)
	}
}

func TestCallbackRefusesForgedAndReplayedState(t *testing.T) {
	h := newHarness(t)
	h.idp.QueueUser("alice", "alice@example.test", nil)
	nf := h.noFollow(h.client)

	// Walk to the callback URL without calling it.
	resp := h.get(nf, h.url(appHost, "/"), "Accept", "text/html")
	authz := resp.Header.Get("Location")
	resp = h.get(nf, authz)
	callback := resp.Header.Get("Location")
	cbURL, _ := url.Parse(callback)
	jarCookies := h.client.Jar.Cookies(cbURL)

	cases := []struct {
		name string
		mod  func(q url.Values)
	}{
		{"forged state", func(q url.Values) { q.Set("state", strings.Repeat("A", 43)) }},
		{"missing state", func(q url.Values) { q.Del("state") }},
		{"short state", func(q url.Values) { q.Set("state", "abc") }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u := *cbURL
			q := u.Query()
			tc.mod(q)
			u.RawQuery = q.Encode()
			resp := h.get(h.noFollow(h.newClient()), u.String())
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("status = %d, want 400", resp.StatusCode)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
				t.Errorf("content type %q, want an HTML page", ct)
			}
		})
	}
	t.Run("state from another browser", func(t *testing.T) {
		resp := h.get(h.noFollow(h.newClient()), callback)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("status = %d, want 400", resp.StatusCode)
		}
	})

	// The real callback works once ...
	resp = h.get(nf, callback)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("callback status = %d, want 302: %s", resp.StatusCode, readBody(resp))
	}
	cleared := false
	for _, c := range resp.Cookies() {
		if strings.HasPrefix(c.Name, "_portcullis_login_") && c.MaxAge < 0 {
			cleared = true
		}
	}
	if !cleared {
		t.Error("the login-state cookie was not cleared")
	}
	// ... and a replay with the same login cookie is refused.
	replay := h.newClient()
	replay.Jar.SetCookies(cbURL, jarCookies)
	if resp := h.get(h.noFollow(replay), callback); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("replayed state status = %d, want 400", resp.StatusCode)
	}
}

func TestCallbackWithProviderError(t *testing.T) {
	h := newHarness(t)
	nf := h.noFollow(h.client)
	resp := h.get(nf, h.url(appHost, "/"), "Accept", "text/html")
	authz, _ := url.Parse(resp.Header.Get("Location"))
	state := authz.Query().Get("state")
	resp = h.get(nf, h.url(extHost, PathCallback+"?error=access_denied&error_description=%3Cb%3Eno%3C%2Fb%3E&state="+state))
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("status = %d, want 403", resp.StatusCode)
	}
	if body := readBody(resp); strings.Contains(body, "<b>no</b>") || !strings.Contains(body, "&lt;b&gt;no") {
		t.Errorf("provider's error description not escaped: %s", body)
	}
}

func TestProviderChoicePage(t *testing.T) {
	second := idtest.NewProvider(t)
	h := newHarness(t, func(h *harness) {
		c := &h.cfg
		c.Providers = append(c.Providers, ProviderConfig{
			Name: "partner", Issuer: second.Issuer, ClientID: second.ClientID, ClientSecret: second.ClientSecret,
			Scopes: []string{"openid", "email"}, GroupsClaim: "groups",
		})
	})
	// With two providers StartLogin goes through the choice page.
	resp := h.get(h.noFollow(h.client), h.url(appHost, "/x"), "Accept", "text/html")
	if loc, _ := url.Parse(resp.Header.Get("Location")); resp.StatusCode != http.StatusFound || loc.Path != PathLogin {
		t.Fatalf("StartLogin: %d to %s, want the login page", resp.StatusCode, loc)
	}
	resp = h.get(h.noFollow(h.client), h.url(extHost, PathLogin+"?rd="+url.QueryEscape(h.url(appHost, "/x?a=1&b=<i>"))))
	body := readBody(resp)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Continue with corp") || !strings.Contains(body, "Continue with partner") {
		t.Fatalf("choice page: %d %.500s", resp.StatusCode, body)
	}
	if strings.Contains(body, "<i>") {
		t.Error("choice page does not escape the return target")
	}
	second.QueueUser("pat", "pat@partner.test", []string{"partners"})
	fr, _ := h.login(h.client, h.url(extHost, PathLogin+"?provider=partner&rd="+url.QueryEscape(h.url(appHost, "/x"))))
	if fr.Identity.Provider != "partner" || fr.Identity.Sub != "pat" || fr.Identity.Issuer != second.Issuer {
		t.Errorf("identity = %+v, want pat from partner", fr.Identity)
	}
	resp = h.get(h.noFollow(h.newClient()), h.url(extHost, PathLogin+"?provider=nope"))
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown provider: %d, want 400", resp.StatusCode)
	}
}

func TestLoginRdValidation(t *testing.T) {
	h := newHarness(t)
	h.idp.QueueUser("alice", "alice@example.test", nil)
	h.idp.QueueUser("alice", "alice@example.test", nil)
	cases := []struct{ rd, want string }{
		{"https://" + appHost + ":" + h.port + "/x?y=1", "https://" + appHost + ":" + h.port + "/x?y=1"},
		{"https://evil.test/", "https://" + extHost + ":" + h.port + "/"},
	}
	for _, tc := range cases {
		c := h.newClient()
		var last string
		c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
			last = req.URL.String()
			if req.URL.Hostname() == "evil.test" {
				return http.ErrUseLastResponse
			}
			return nil
		}
		resp := h.get(c, h.url(extHost, PathLogin+"?rd="+url.QueryEscape(tc.rd)), "Accept", "text/html")
		_ = resp
		if last != tc.want {
			t.Errorf("rd %q: ended at %q, want %q", tc.rd, last, tc.want)
		}
	}
}

func TestProviderDownAnswers503AndRecovers(t *testing.T) {
	// Reserve an address, configure it, and start the provider only later.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	h := newHarness(t, func(h *harness) {
		c := &h.cfg
		c.Providers[0].Issuer = "http://" + addr + "/oidc"
		c.Providers[0].ClientID, c.Providers[0].ClientSecret = "late-client", "late-secret"
	})
	start := time.Now()
	resp := h.get(h.noFollow(h.client), h.url(extHost, PathLogin+"?rd=/x"))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("login while the provider is down: %d, want 503", resp.StatusCode)
	}
	if body := readBody(resp); !strings.Contains(body, "unreachable") {
		t.Errorf("503 page does not say what is wrong: %.200s", body)
	}
	if time.Since(start) > 15*time.Second {
		t.Errorf("login took %s while the provider was down", time.Since(start))
	}
	// StartLogin goes to the login page (which says 503) rather than failing.
	resp = h.get(h.noFollow(h.client), h.url(appHost, "/p"), "Accept", "text/html")
	if resp.StatusCode != http.StatusFound || !strings.Contains(resp.Header.Get("Location"), PathLogin) {
		t.Errorf("StartLogin while down: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// The provider comes up; once the backoff has passed, sign-in works.
	idp := idtest.NewProviderWith(t, idtest.Settings{Addr: addr, ClientID: "late-client", ClientSecret: "late-secret"})
	resp = h.get(h.noFollow(h.client), h.url(extHost, PathLogin+"?rd=/x"))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("within the backoff: %d, want 503 without hammering the provider", resp.StatusCode)
	}
	h.clock.Advance(2 * time.Minute)
	resp = h.get(h.noFollow(h.client), h.url(extHost, PathLogin+"?rd=/x"))
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(resp.Header.Get("Location"), idp.Issuer) {
		t.Errorf("after recovery: %d to %q, want 302 to the provider", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestGroupsFromUserinfoAndEmailVerified(t *testing.T) {
	h := newHarness(t)
	u := idtest.NewUser("carol", "carol@example.test", "finance")
	u.GroupsOnlyInUserinfo = true
	u.EmailVerified = false
	h.idp.QueueUserValue(u)
	fr, _ := h.login(h.client, h.url(appHost, "/"))
	if !slices.Equal(fr.Identity.Groups, []string{"finance"}) {
		t.Errorf("groups = %v, want [finance] from userinfo", fr.Identity.Groups)
	}
	if fr.Identity.EmailVerified {
		t.Error("email_verified = true for an unverified email")
	}
}

func TestMeEndpoint(t *testing.T) {
	h := newHarness(t)
	resp := h.get(h.client, h.url(appHost, PathMe))
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(readBody(resp), `"unauthenticated"`) {
		t.Errorf("signed out: %d, want 401 JSON", resp.StatusCode)
	}
	h.idp.QueueUser("alice", "alice@example.test", []string{"eng"})
	h.login(h.client, h.url(appHost, "/"))
	resp = h.get(h.client, h.url(appHost, PathMe))
	body := readBody(resp)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"sub":"alice"`) || !strings.Contains(body, `"groups":["eng"]`) {
		t.Errorf("signed in: %d %s", resp.StatusCode, body)
	}
	for _, secret := range []string{"eyJ", "refresh", "id_token"} {
		if strings.Contains(body, secret) {
			t.Errorf("/me leaks %q: %s", secret, body)
		}
	}
}

func TestLogoutWithEndSession(t *testing.T) {
	h := newHarness(t)
	h.idp.QueueUser("alice", "alice@example.test", nil)
	h.login(h.client, h.url(appHost, "/"))

	nf := h.noFollow(h.client)
	rd := h.url(appHost, "/bye")
	resp := h.get(nf, h.url(appHost, PathLogout+"?rd="+url.QueryEscape(rd)))
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("logout status = %d, want 302", resp.StatusCode)
	}
	var hostOnly, domain bool
	for _, c := range resp.Cookies() {
		if c.Name == "_portcullis" && c.MaxAge < 0 {
			if c.Domain == "" {
				hostOnly = true
			} else if c.Domain == "example.test" {
				domain = true
			}
		}
	}
	if !hostOnly || !domain {
		t.Errorf("logout cleared host-only=%v domain=%v, want both", hostOnly, domain)
	}
	end, _ := url.Parse(resp.Header.Get("Location"))
	if !strings.HasPrefix(end.String(), h.idp.EndSessionURL) {
		t.Fatalf("logout redirected to %s, want the provider's end_session_endpoint", end)
	}
	q := end.Query()
	if q.Get("id_token_hint") == "" || q.Get("client_id") != h.idp.ClientID ||
		q.Get("post_logout_redirect_uri") != h.cfg.ExternalURL+PathLogout || q.Get("state") == "" {
		t.Errorf("end-session query = %v", q)
	}
	if strings.Contains(end.String(), "bye") {
		t.Error("rd leaks in plain into the end-session URL")
	}
	// The provider sends the browser back to external_url's logout with
	// the state, which redirects to rd.
	resp = h.get(nf, end.String())
	back, _ := url.Parse(resp.Header.Get("Location"))
	if back.Host != extHost+":"+h.port || back.Path != PathLogout {
		t.Fatalf("provider sent the browser to %s", back)
	}
	resp = h.get(nf, back.String())
	if got := resp.Header.Get("Location"); resp.StatusCode != http.StatusFound || got != rd {
		t.Errorf("after the provider, logout answered %d to %q, want %q", resp.StatusCode, got, rd)
	}
	if len(h.sessionCookies(h.client, appHost)) != 0 {
		t.Error("session cookie still in the jar after logout")
	}
	if resp := h.get(h.client, h.url(appHost, PathMe)); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/me after logout = %d, want 401", resp.StatusCode)
	}
}

func TestLogoutWithoutEndSession(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.idp.DisableEndSession() })
	h.idp.QueueUser("alice", "alice@example.test", nil)
	h.login(h.client, h.url(appHost, "/"))
	resp := h.get(h.noFollow(h.client), h.url(appHost, PathLogout+"?rd=/bye"))
	if got, want := resp.Header.Get("Location"), h.url(appHost, "/bye"); resp.StatusCode != http.StatusFound || got != want {
		t.Errorf("logout: %d to %q, want 302 to %q", resp.StatusCode, got, want)
	}
	resp = h.get(h.noFollow(h.client), h.url(extHost, PathLogout))
	if resp.StatusCode != http.StatusOK || !strings.Contains(readBody(resp), "signed out") {
		t.Errorf("logout without rd: %d, want the signed-out page", resp.StatusCode)
	}
	// A hostile rd falls back to the signed-out page, not the other site.
	resp = h.get(h.noFollow(h.client), h.url(extHost, PathLogout+"?rd=https://evil.test/"))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("logout with hostile rd: %d to %q, want 200 page", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func sha256b64(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func TestLogoutOnHostOutsideCookieDomainEndsCentralSession(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.idp.DisableEndSession() })
	h.idp.QueueUser("bob", "bob@example.test", nil)
	h.login(h.client, h.url(farHost, "/"))
	if len(h.sessionCookies(h.client, farHost)) != 1 || len(h.sessionCookies(h.client, extHost)) != 1 {
		t.Fatal("expected sessions on the far host and on external_url's host")
	}
	nf := h.noFollow(h.client)
	resp := h.get(nf, h.url(farHost, PathLogout+"?rd=/bye"))
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || loc.Hostname() != extHost || loc.Path != PathLogout || loc.Query().Get("rd") != h.url(farHost, "/bye") {
		t.Fatalf("far logout: %d to %s, want external_url's logout with an absolute rd", resp.StatusCode, loc)
	}
	// The browser comes from another site, but it is Portcullis's own
	// redirect (it carries a confirmation): no question asked.
	resp = h.get(nf, loc.String(), "Sec-Fetch-Site", "cross-site")
	if got := resp.Header.Get("Location"); got != h.url(farHost, "/bye") {
		t.Errorf("central logout sent to %q, want back to the far host", got)
	}
	if n := len(h.sessionCookies(h.client, farHost)) + len(h.sessionCookies(h.client, extHost)); n != 0 {
		t.Errorf("%d session cookies left after logout", n)
	}
}

// TestCrossSiteLogoutAsksFirst: a logout another site triggers (a link, an
// image, a form) shows a confirmation page and ends nothing; its button,
// posted from Portcullis's origin, signs out; a confirmation sealed for
// another session does not.
func TestCrossSiteLogoutAsksFirst(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.idp.DisableEndSession() })
	h.idp.QueueUser("alice", "alice@example.test", nil)
	h.login(h.client, h.url(appHost, "/"))
	nf := h.noFollow(h.client)
	resp := h.get(nf, h.url(appHost, PathLogout+"?rd=/bye"), "Sec-Fetch-Site", "cross-site")
	body := readBody(resp)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Sign out?") || !strings.Contains(body, `method="post"`) {
		t.Fatalf("cross-site logout: %d, want the confirmation page:\n%s", resp.StatusCode, body)
	}
	for _, c := range resp.Cookies() {
		if c.Name == "_portcullis" {
			t.Fatalf("cross-site logout touched the session cookie: %v", c)
		}
	}
	if r := h.get(nf, h.url(appHost, PathMe)); r.StatusCode != http.StatusOK {
		t.Fatalf("after an unconfirmed cross-site logout /me = %d, want 200", r.StatusCode)
	}
	confirm := regexp.MustCompile(`name="confirm" value="([^"]+)"`).FindStringSubmatch(body)
	if confirm == nil || !strings.Contains(body, `name="rd" value="`+h.url(appHost, "/bye")+`"`) {
		t.Fatalf("confirmation form lacks confirm or rd:\n%s", body)
	}

	// A confirmation is bound to its session: bob's does not sign alice out.
	other := h.newClient()
	h.idp.QueueUser("bob", "bob@example.test", nil)
	h.login(other, h.url(appHost, "/"))
	ob := readBody(h.get(h.noFollow(other), h.url(appHost, PathLogout), "Sec-Fetch-Site", "cross-site"))
	bobConfirm := regexp.MustCompile(`name="confirm" value="([^"]+)"`).FindStringSubmatch(ob)
	if bobConfirm == nil {
		t.Fatal("no confirmation for bob")
	}
	resp = h.get(nf, h.url(appHost, PathLogout+"?confirm="+url.QueryEscape(bobConfirm[1])), "Sec-Fetch-Site", "cross-site")
	if !strings.Contains(readBody(resp), "Sign out?") {
		t.Errorf("bob's confirmation signed alice out: %d", resp.StatusCode)
	}

	// The button: a same-origin POST with the form's fields.
	form := url.Values{"confirm": {html.UnescapeString(confirm[1])}, "rd": {h.url(appHost, "/bye")}}
	req, _ := http.NewRequest(http.MethodPost, h.url(appHost, PathLogout), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err := nf.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != h.url(appHost, "/bye") {
		t.Errorf("confirmed logout: %d to %q, want 302 to rd", resp.StatusCode, resp.Header.Get("Location"))
	}
	if r := h.get(nf, h.url(appHost, PathMe)); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("after the confirmed logout /me = %d, want 401", r.StatusCode)
	}
}

func TestOwnsPathAndUnknownPaths(t *testing.T) {
	h := newHarness(t)
	for path, want := range map[string]bool{
		PathLogin: true, PathCallback: true, PathLogout: true, PathMe: true, PathJWKS: true,
		"/.portcullis/other": true, "/.well-known/other": false, "/": false, "/login": false,
	} {
		if got := h.a.OwnsPath(path); got != want {
			t.Errorf("OwnsPath(%q) = %v, want %v", path, got, want)
		}
	}
	resp := h.get(h.client, h.url(appHost, "/.portcullis/nothing"))
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown /.portcullis/ path = %d, want 404", resp.StatusCode)
	}
	resp = h.get(h.client, h.url(appHost, PathJWKS))
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "public, max-age=300" {
		t.Errorf("jwks: %d cache %q", resp.StatusCode, resp.Header.Get("Cache-Control"))
	}
}

// TestCallbackWithRefusedCodeIs400: a callback whose state is this
// browser's but whose code the provider refuses (another browser's code, a
// used or made-up one) is the request's fault, not the provider's: 400.
func TestCallbackWithRefusedCodeIs400(t *testing.T) {
	h := newHarness(t)
	nf := h.noFollow(h.client)
	resp := h.get(nf, h.url(appHost, "/x"), "Accept", "text/html")
	loc, _ := url.Parse(resp.Header.Get("Location"))
	state := loc.Query().Get("state")
	if state == "" {
		t.Fatalf("no state in %s", loc)
	}
	resp = h.get(nf, h.cfg.ExternalURL+PathCallback+"?state="+url.QueryEscape(state)+"&code=made-up")
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("callback with a refused code: %d, want 400", resp.StatusCode)
	}
}

// TestIDTokenWithoutSubjectIsRefused: go-oidc accepts an ID token without
// "sub"; a session without one would be refused on every request and send
// the browser round the provider for ever.
func TestIDTokenWithoutSubjectIsRefused(t *testing.T) {
	h := newHarness(t)
	for _, sub := range []string{"", "bad\nsubject"} {
		h.idp.QueueUser(sub, "nobody@example.test", nil)
		nf := h.noFollow(h.newClient())
		resp := h.get(nf, h.url(appHost, "/x"), "Accept", "text/html")
		for i := 0; i < 10 && resp.StatusCode == http.StatusFound; i++ {
			next, err := resp.Location()
			if err != nil {
				t.Fatal(err)
			}
			resp = h.get(nf, next.String())
		}
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("sub %q: sign-in ended with %d, want 400", sub, resp.StatusCode)
		}
		for _, c := range resp.Cookies() {
			if c.Name == h.cfg.Session.CookieName && c.MaxAge >= 0 && c.Value != "" {
				t.Errorf("sub %q: a session cookie was set", sub)
			}
		}
	}
}

// TestSessionOfRemovedProviderIsRefused: a session signed in through a
// provider the configuration no longer has (removed, or renamed) stops
// counting at once, not when it next refreshes.
func TestSessionOfRemovedProviderIsRefused(t *testing.T) {
	h := newHarness(t)
	h.idp.QueueUser("alice", "alice@example.test", nil)
	h.login(h.client, h.url(appHost, "/"))
	if r := h.get(h.client, h.url(appHost, PathMe)); r.StatusCode != http.StatusOK {
		t.Fatalf("/me after sign-in = %d", r.StatusCode)
	}
	h.cfg.Providers[0].Name = "corp-new" // a reload without "corp"
	h.a = h.newAuthenticator()
	if r := h.get(h.noFollow(h.client), h.url(appHost, PathMe)); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("/me with a session of a provider no longer configured = %d, want 401", r.StatusCode)
	}
}

// TestHandoverCodeWorksOnlyInTheBrowserThatAsked: an attacker mints
// hand-over codes for the attacker's own session on demand; opened in a
// victim's browser, such a code must not sign the victim in as the attacker
// (login CSRF), whether the attacker minted it with a binding of its own or
// without one. The browser that started the sign-in is signed in.
func TestHandoverCodeWorksOnlyInTheBrowserThatAsked(t *testing.T) {
	h := newHarness(t)
	h.idp.QueueUser("mallory", "mallory@example.test", nil)
	attacker := h.newClient()
	h.login(attacker, h.url(appHost, "/"))
	an := h.noFollow(attacker)
	inbox := h.url(farHost, "/inbox")

	mint := func(startURL string) string {
		t.Helper()
		resp := h.get(an, startURL)
		for resp.StatusCode == http.StatusFound {
			loc, _ := url.Parse(resp.Header.Get("Location"))
			if loc.Hostname() == farHost && loc.Path == PathCallback {
				return loc.String()
			}
			resp = h.get(an, loc.String())
		}
		t.Fatalf("no hand-over code from %s: %d", startURL, resp.StatusCode)
		return ""
	}
	victimGets := func(code string) *http.Response {
		t.Helper()
		victim := h.newClient()
		resp := h.get(h.noFollow(victim), code, "Sec-Fetch-Site", "cross-site")
		if me := h.get(h.noFollow(victim), h.url(farHost, PathMe)); me.StatusCode != http.StatusUnauthorized {
			t.Errorf("the victim's browser is signed in after opening the attacker's code: /me = %d %s", me.StatusCode, readBody(me))
		}
		return resp
	}

	// Minted without a binding (straight at external_url's sign-in): the
	// far host starts its own sign-in instead.
	resp := victimGets(mint(h.url(extHost, PathLogin+"?rd="+url.QueryEscape(inbox))))
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || loc.Hostname() != extHost || loc.Path != PathLogin || loc.Query().Get("hb") == "" {
		t.Errorf("unbound code: %d to %s, want this host's own bound sign-in", resp.StatusCode, loc)
	}

	// Minted through the far host's own sign-in: bound to the attacker's
	// browser.
	code := mint(h.url(farHost, PathLogin+"?rd="+url.QueryEscape(inbox)))
	if resp := victimGets(code); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("code bound to another browser: %d, want 400", resp.StatusCode)
	}
	// The attacker's own browser could use a fresh one.
	code = mint(h.url(farHost, PathLogin+"?rd="+url.QueryEscape(inbox)))
	if resp := h.get(an, code); resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != inbox {
		t.Errorf("code in the browser that asked: %d to %q, want 302 to %s", resp.StatusCode, resp.Header.Get("Location"), inbox)
	}
	if me := h.get(an, h.url(farHost, PathMe)); me.StatusCode != http.StatusOK {
		t.Errorf("the browser that asked is not signed in on the far host: %d", me.StatusCode)
	}
}

// TestUsedHandoverStaysUsedAcrossReload: a reload builds a new
// Authenticator; with the process's ReplayCache, a hand-over code used
// before it is still refused after it.
func TestUsedHandoverStaysUsedAcrossReload(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.opts.Replay = NewReplayCache() })
	h.idp.QueueUser("alice", "alice@example.test", nil)
	c := h.newClient()
	h.login(c, h.url(appHost, "/"))
	nf := h.noFollow(c)
	resp := h.get(nf, h.url(farHost, PathLogin+"?rd=/"))
	for resp.StatusCode == http.StatusFound {
		loc, _ := url.Parse(resp.Header.Get("Location"))
		if loc.Hostname() == farHost && loc.Path == PathCallback {
			break
		}
		resp = h.get(nf, loc.String())
	}
	code := resp.Header.Get("Location")
	cu, _ := url.Parse(code)
	binding := c.Jar.Cookies(cu) // the browser's hand-over binding
	if r := h.get(nf, code); r.StatusCode != http.StatusFound {
		t.Fatalf("first use: %d", r.StatusCode)
	}
	c.Jar.SetCookies(cu, binding) // so that only the replay check can refuse
	h.a = h.newAuthenticator()    // a configuration reload
	if r := h.get(nf, code); r.StatusCode != http.StatusBadRequest {
		t.Errorf("the used code after a reload: %d, want 400", r.StatusCode)
	}
}
