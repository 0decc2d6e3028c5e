package devidp

import (
	"context"
	"encoding/json"
	"errors"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
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
	rpCallback  = "https://rp.example/callback"
	rpLoggedOut = "https://rp.example/signed-out"
)

// harness runs a Provider under /idp on an httptest server and plays both a
// browser (cookie jar, no automatic redirects) and a relying party built on
// go-oidc and x/oauth2.
type harness struct {
	t        *testing.T
	clock    *fakeClock
	srv      *httptest.Server
	idp      *Provider
	client   Client
	browser  *http.Client
	ctx      context.Context
	provider *oidc.Provider
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)}
	client, err := DemoClient([]string{rpCallback}, []string{rpLoggedOut})
	if err != nil {
		t.Fatalf("DemoClient: %v", err)
	}
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	idp, err := New(Options{
		Logger:  slog.New(slog.DiscardHandler),
		Clock:   clock,
		Issuer:  srv.URL + "/idp",
		Users:   DemoUsers(),
		Clients: []Client{client},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	mux.Handle("/idp/", idp)
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	browser := &http.Client{
		Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	ctx := oidc.ClientContext(t.Context(), srv.Client())
	provider, err := oidc.NewProvider(ctx, idp.Issuer())
	if err != nil {
		t.Fatalf("oidc.NewProvider (discovery): %v", err)
	}
	return &harness{t: t, clock: clock, srv: srv, idp: idp, client: client, browser: browser, ctx: ctx, provider: provider}
}

func (h *harness) oauthConfig(style oauth2.AuthStyle) *oauth2.Config {
	ep := h.provider.Endpoint()
	ep.AuthStyle = style
	return &oauth2.Config{
		ClientID:     h.client.ID,
		ClientSecret: h.client.Secret,
		Endpoint:     ep,
		RedirectURL:  rpCallback,
		Scopes:       []string{oidc.ScopeOpenID, "email", "profile"},
	}
}

func (h *harness) verifier() *oidc.IDTokenVerifier {
	return h.provider.Verifier(&oidc.Config{ClientID: h.client.ID, Now: h.clock.Now})
}

func (h *harness) get(u string) (*http.Response, string) {
	h.t.Helper()
	resp, err := h.browser.Get(u)
	if err != nil {
		h.t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func (h *harness) post(u string, form url.Values) (*http.Response, string) {
	h.t.Helper()
	resp, err := h.browser.PostForm(u, form)
	if err != nil {
		h.t.Fatalf("POST %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

var hiddenField = regexp.MustCompile(`<input type="hidden" name="([a-z_]+)" value="([^"]*)">`)

// formFields returns the hidden fields of the sign-in form.
func formFields(t *testing.T, body string) url.Values {
	t.Helper()
	v := url.Values{}
	for _, m := range hiddenField.FindAllStringSubmatch(body, -1) {
		v.Set(m[1], html.UnescapeString(m[2]))
	}
	if v.Get("request") == "" || v.Get("csrf") == "" {
		t.Fatalf("no sign-in form in page:\n%s", body)
	}
	return v
}

// startLogin sends the browser to the authorization endpoint and returns
// the sign-in form's hidden fields.
func (h *harness) startLogin(authURL string) url.Values {
	h.t.Helper()
	resp, body := h.get(authURL)
	if resp.StatusCode != http.StatusOK {
		h.t.Fatalf("GET authorize: status %d, want 200\n%s", resp.StatusCode, body)
	}
	return formFields(h.t, body)
}

// submit posts the sign-in form and returns the response.
func (h *harness) submit(fields url.Values, username, password string) (*http.Response, string) {
	h.t.Helper()
	f := url.Values{}
	for k, v := range fields {
		f[k] = v
	}
	f.Set("username", username)
	f.Set("password", password)
	return h.post(h.idp.Issuer()+pathAuthorize, f)
}

// callbackParams checks that resp redirects to the RP's callback and returns
// the query it carries.
func callbackParams(t *testing.T, resp *http.Response) url.Values {
	t.Helper()
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("status %d, no redirect: %v", resp.StatusCode, err)
	}
	if got := loc.Scheme + "://" + loc.Host + loc.Path; got != rpCallback {
		t.Fatalf("redirected to %s, want %s", got, rpCallback)
	}
	return loc.Query()
}

// login runs a whole sign-in and returns the code and the PKCE verifier.
func (h *harness) login(conf *oauth2.Config, username, nonce string) (code, verifier string) {
	h.t.Helper()
	verifier = oauth2.GenerateVerifier()
	state := "state-" + username
	fields := h.startLogin(conf.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)))
	resp, _ := h.submit(fields, username, username)
	if resp.StatusCode != http.StatusSeeOther {
		h.t.Fatalf("sign-in POST: status %d, want 303", resp.StatusCode)
	}
	q := callbackParams(h.t, resp)
	if q.Get("state") != state {
		h.t.Fatalf("state = %q, want %q", q.Get("state"), state)
	}
	if q.Get("iss") != h.idp.Issuer() {
		h.t.Fatalf("iss = %q, want %q", q.Get("iss"), h.idp.Issuer())
	}
	return q.Get("code"), verifier
}

type claims struct {
	Email         string   `json:"email"`
	EmailVerified bool     `json:"email_verified"`
	Name          string   `json:"name"`
	Groups        []string `json:"groups"`
	AMR           []string `json:"amr"`
	AuthTime      int64    `json:"auth_time"`
}

func TestDiscovery(t *testing.T) {
	h := newHarness(t)
	resp, body := h.get(h.idp.Issuer() + pathDiscovery)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"issuer":                                h.idp.Issuer(),
		"authorization_endpoint":                h.idp.Issuer() + "/authorize",
		"token_endpoint":                        h.idp.Issuer() + "/token",
		"userinfo_endpoint":                     h.idp.Issuer() + "/userinfo",
		"jwks_uri":                              h.idp.Issuer() + "/jwks",
		"end_session_endpoint":                  h.idp.Issuer() + "/end_session",
		"response_types_supported":              []any{"code"},
		"id_token_signing_alg_values_supported": []any{"ES256"},
		"code_challenge_methods_supported":      []any{"S256"},
		"grant_types_supported":                 []any{"authorization_code", "refresh_token"},
		"token_endpoint_auth_methods_supported": []any{"client_secret_basic", "client_secret_post"},
	}
	for k, w := range want {
		t.Run(k, func(t *testing.T) {
			got, _ := json.Marshal(doc[k])
			wantJSON, _ := json.Marshal(w)
			if string(got) != string(wantJSON) {
				t.Errorf("%s = %s, want %s", k, got, wantJSON)
			}
		})
	}
	for _, k := range []string{"subject_types_supported", "scopes_supported", "claims_supported"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("discovery lacks %s", k)
		}
	}
	var rest struct {
		EndSession string `json:"end_session_endpoint"`
	}
	if err := h.provider.Claims(&rest); err != nil || rest.EndSession == "" {
		t.Errorf("go-oidc sees end_session_endpoint %q (err %v)", rest.EndSession, err)
	}
}

func TestOutsideIssuerPathIsNotFound(t *testing.T) {
	h := newHarness(t)
	for _, p := range []string{"/", "/idpx/.well-known/openid-configuration", "/idp/nope", "/.well-known/openid-configuration"} {
		t.Run(p, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.idp.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
			if rec.Code != http.StatusNotFound {
				t.Errorf("GET %s: status %d, want 404", p, rec.Code)
			}
		})
	}
}

// TestCodeFlowWithRealClient signs alice and bob in through go-oidc and
// x/oauth2, with each client authentication method, and checks the ID
// token, userinfo and refresh.
func TestCodeFlowWithRealClient(t *testing.T) {
	cases := []struct {
		name       string
		style      oauth2.AuthStyle
		user       string
		wantEmail  string
		wantGroups []string
	}{
		{"alice basic", oauth2.AuthStyleInHeader, "alice", "alice@example.com", []string{"engineering"}},
		{"bob post", oauth2.AuthStyleInParams, "bob", "bob@example.com", []string{"engineering", "admins"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			conf := h.oauthConfig(tc.style)
			nonce := "nonce-" + tc.user
			code, verifier := h.login(conf, tc.user, nonce)

			tok, err := conf.Exchange(h.ctx, code, oauth2.VerifierOption(verifier))
			if err != nil {
				t.Fatalf("Exchange: %v", err)
			}
			rawID, _ := tok.Extra("id_token").(string)
			idt, err := h.verifier().Verify(h.ctx, rawID)
			if err != nil {
				t.Fatalf("Verify ID token: %v", err)
			}
			if idt.Nonce != nonce {
				t.Errorf("nonce = %q, want %q", idt.Nonce, nonce)
			}
			if idt.Subject != tc.user {
				t.Errorf("sub = %q, want %q", idt.Subject, tc.user)
			}
			if err := idt.VerifyAccessToken(tok.AccessToken); err != nil {
				t.Errorf("at_hash: %v", err)
			}
			var c claims
			if err := idt.Claims(&c); err != nil {
				t.Fatal(err)
			}
			if c.Email != tc.wantEmail || !c.EmailVerified || !slices.Equal(c.Groups, tc.wantGroups) || !slices.Equal(c.AMR, []string{"pwd"}) {
				t.Errorf("claims = %+v, want email %s verified, groups %v, amr [pwd]", c, tc.wantEmail, tc.wantGroups)
			}
			if c.AuthTime != h.clock.Now().Unix() {
				t.Errorf("auth_time = %d, want %d", c.AuthTime, h.clock.Now().Unix())
			}

			ui, err := h.provider.UserInfo(h.ctx, oauth2.StaticTokenSource(tok))
			if err != nil {
				t.Fatalf("UserInfo: %v", err)
			}
			var uc claims
			if err := ui.Claims(&uc); err != nil {
				t.Fatal(err)
			}
			if ui.Subject != tc.user || ui.Email != tc.wantEmail || !slices.Equal(uc.Groups, tc.wantGroups) {
				t.Errorf("userinfo = sub %q email %q groups %v", ui.Subject, ui.Email, uc.Groups)
			}

			// Refresh: rotate, and the new ID token verifies with fresh claims.
			h.clock.Add(5 * time.Minute)
			stale := &oauth2.Token{RefreshToken: tok.RefreshToken, Expiry: time.Now().Add(-time.Minute)}
			tok2, err := conf.TokenSource(h.ctx, stale).Token()
			if err != nil {
				t.Fatalf("refresh: %v", err)
			}
			if tok2.RefreshToken == "" || tok2.RefreshToken == tok.RefreshToken {
				t.Errorf("refresh token not rotated: %q", tok2.RefreshToken)
			}
			idt2, err := h.verifier().Verify(h.ctx, tok2.Extra("id_token").(string))
			if err != nil {
				t.Fatalf("Verify refreshed ID token: %v", err)
			}
			if idt2.Subject != tc.user || !idt2.IssuedAt.After(idt.IssuedAt) {
				t.Errorf("refreshed ID token: sub %q iat %v (first iat %v)", idt2.Subject, idt2.IssuedAt, idt.IssuedAt)
			}
		})
	}
}

// tokenRequest posts to the token endpoint and decodes the OAuth error.
func (h *harness) tokenRequest(form url.Values, basicID, basicSecret string) (int, oauthError) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.idp.Issuer()+pathToken, strings.NewReader(form.Encode()))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basicID != "" {
		req.SetBasicAuth(url.QueryEscape(basicID), url.QueryEscape(basicSecret))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var e oauthError
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			h.t.Errorf("error Content-Type = %q, want application/json", ct)
		}
		if err := json.Unmarshal(b, &e); err != nil {
			h.t.Fatalf("error body %q: %v", b, err)
		}
	}
	return resp.StatusCode, e
}

func TestTokenEndpointRejections(t *testing.T) {
	type setup struct {
		h        *harness
		code     string
		verifier string
	}
	cases := []struct {
		name       string
		prepare    func(s *setup)
		form       func(s *setup) url.Values
		basic      func(s *setup) (string, string)
		wantStatus int
		wantError  string
	}{
		{
			name:       "wrong PKCE verifier",
			form:       func(s *setup) url.Values { return codeForm(s.code, oauth2.GenerateVerifier()) },
			wantStatus: 400, wantError: "invalid_grant",
		},
		{
			name:       "missing PKCE verifier",
			form:       func(s *setup) url.Values { return codeForm(s.code, "") },
			wantStatus: 400, wantError: "invalid_grant",
		},
		{
			name:       "malformed PKCE verifier",
			form:       func(s *setup) url.Values { return codeForm(s.code, "short") },
			wantStatus: 400, wantError: "invalid_grant",
		},
		{
			name: "reused code",
			prepare: func(s *setup) {
				if st, e := s.h.tokenRequest(codeForm(s.code, s.verifier), s.h.client.ID, s.h.client.Secret); st != 200 {
					s.h.t.Fatalf("first exchange: %d %+v", st, e)
				}
			},
			form:       func(s *setup) url.Values { return codeForm(s.code, s.verifier) },
			wantStatus: 400, wantError: "invalid_grant",
		},
		{
			name: "wrong redirect_uri",
			form: func(s *setup) url.Values {
				f := codeForm(s.code, s.verifier)
				f.Set("redirect_uri", "https://rp.example/other")
				return f
			},
			wantStatus: 400, wantError: "invalid_grant",
		},
		{
			name:       "wrong client secret (basic)",
			form:       func(s *setup) url.Values { return codeForm(s.code, s.verifier) },
			basic:      func(s *setup) (string, string) { return s.h.client.ID, "wrong" },
			wantStatus: 401, wantError: "invalid_client",
		},
		{
			name: "wrong client secret (post)",
			form: func(s *setup) url.Values {
				f := codeForm(s.code, s.verifier)
				f.Set("client_id", s.h.client.ID)
				f.Set("client_secret", "wrong")
				return f
			},
			basic:      func(*setup) (string, string) { return "", "" },
			wantStatus: 401, wantError: "invalid_client",
		},
		{
			name:       "unknown client",
			form:       func(s *setup) url.Values { return codeForm(s.code, s.verifier) },
			basic:      func(s *setup) (string, string) { return "someone-else", s.h.client.Secret },
			wantStatus: 401, wantError: "invalid_client",
		},
		{
			name:       "no client authentication",
			form:       func(s *setup) url.Values { return codeForm(s.code, s.verifier) },
			basic:      func(*setup) (string, string) { return "", "" },
			wantStatus: 401, wantError: "invalid_client",
		},
		{
			name:       "expired code",
			prepare:    func(s *setup) { s.h.clock.Add(61 * time.Second) },
			form:       func(s *setup) url.Values { return codeForm(s.code, s.verifier) },
			wantStatus: 400, wantError: "invalid_grant",
		},
		{
			name:       "unknown code",
			form:       func(s *setup) url.Values { return codeForm("nope", s.verifier) },
			wantStatus: 400, wantError: "invalid_grant",
		},
		{
			name:       "unsupported grant type",
			form:       func(*setup) url.Values { return url.Values{"grant_type": {"password"}} },
			wantStatus: 400, wantError: "unsupported_grant_type",
		},
		{
			name:       "unknown refresh token",
			form:       func(*setup) url.Values { return url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"nope"}} },
			wantStatus: 400, wantError: "invalid_grant",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			s := &setup{h: h}
			s.code, s.verifier = h.login(h.oauthConfig(oauth2.AuthStyleInHeader), "alice", "n")
			if tc.prepare != nil {
				tc.prepare(s)
			}
			id, secret := h.client.ID, h.client.Secret
			if tc.basic != nil {
				id, secret = tc.basic(s)
			}
			status, e := h.tokenRequest(tc.form(s), id, secret)
			if status != tc.wantStatus || e.Code != tc.wantError {
				t.Errorf("got %d %q (%s), want %d %q", status, e.Code, e.Description, tc.wantStatus, tc.wantError)
			}
		})
	}
}

func codeForm(code, verifier string) url.Values {
	f := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {rpCallback}}
	if verifier != "" {
		f.Set("code_verifier", verifier)
	}
	return f
}

// TestReplayRevokes checks RFC 6749 §4.1.2 and refresh-token rotation: a
// replayed code or rotated refresh token ends the tokens issued from it.
func TestReplayRevokes(t *testing.T) {
	t.Run("code replay revokes refresh token", func(t *testing.T) {
		h := newHarness(t)
		conf := h.oauthConfig(oauth2.AuthStyleInHeader)
		code, verifier := h.login(conf, "alice", "n")
		tok, err := conf.Exchange(h.ctx, code, oauth2.VerifierOption(verifier))
		if err != nil {
			t.Fatal(err)
		}
		if st, e := h.tokenRequest(codeForm(code, verifier), h.client.ID, h.client.Secret); st != 400 || e.Code != "invalid_grant" {
			t.Fatalf("replay: got %d %q, want 400 invalid_grant", st, e.Code)
		}
		st, e := h.tokenRequest(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.RefreshToken}}, h.client.ID, h.client.Secret)
		if st != 400 || e.Code != "invalid_grant" {
			t.Errorf("refresh after replay: got %d %q, want 400 invalid_grant", st, e.Code)
		}
	})
	t.Run("rotated refresh token replay revokes family", func(t *testing.T) {
		h := newHarness(t)
		conf := h.oauthConfig(oauth2.AuthStyleInHeader)
		code, verifier := h.login(conf, "alice", "n")
		tok, err := conf.Exchange(h.ctx, code, oauth2.VerifierOption(verifier))
		if err != nil {
			t.Fatal(err)
		}
		refresh := func(rt string) (int, oauthError) {
			return h.tokenRequest(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, h.client.ID, h.client.Secret)
		}
		tok2, err := conf.TokenSource(h.ctx, &oauth2.Token{RefreshToken: tok.RefreshToken, Expiry: time.Now().Add(-time.Minute)}).Token()
		if err != nil {
			t.Fatal(err)
		}
		if st, e := refresh(tok.RefreshToken); st != 400 || e.Code != "invalid_grant" {
			t.Fatalf("replayed refresh token: got %d %q, want 400 invalid_grant", st, e.Code)
		}
		if st, e := refresh(tok2.RefreshToken); st != 400 || e.Code != "invalid_grant" {
			t.Errorf("current refresh token after replay: got %d %q, want 400 invalid_grant", st, e.Code)
		}
	})
	t.Run("refresh token expires", func(t *testing.T) {
		h := newHarness(t)
		conf := h.oauthConfig(oauth2.AuthStyleInHeader)
		code, verifier := h.login(conf, "alice", "n")
		tok, err := conf.Exchange(h.ctx, code, oauth2.VerifierOption(verifier))
		if err != nil {
			t.Fatal(err)
		}
		h.clock.Add(13 * time.Hour)
		st, e := h.tokenRequest(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.RefreshToken}}, h.client.ID, h.client.Secret)
		if st != 400 || e.Code != "invalid_grant" {
			t.Errorf("got %d %q, want 400 invalid_grant", st, e.Code)
		}
	})
}

// TestRefreshSeesChangedGroups shows that a group removed at the provider
// reaches the relying party on the next refresh.
func TestRefreshSeesChangedGroups(t *testing.T) {
	h := newHarness(t)
	conf := h.oauthConfig(oauth2.AuthStyleInHeader)
	code, verifier := h.login(conf, "bob", "n")
	tok, err := conf.Exchange(h.ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	bob := DemoUsers()[1]
	bob.Groups = []string{"engineering"}
	if err := h.idp.SetUser(bob); err != nil {
		t.Fatal(err)
	}
	tok2, err := conf.TokenSource(h.ctx, &oauth2.Token{RefreshToken: tok.RefreshToken, Expiry: time.Now().Add(-time.Minute)}).Token()
	if err != nil {
		t.Fatal(err)
	}
	idt, err := h.verifier().Verify(h.ctx, tok2.Extra("id_token").(string))
	if err != nil {
		t.Fatal(err)
	}
	var c claims
	if err := idt.Claims(&c); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Groups, []string{"engineering"}) {
		t.Errorf("groups after refresh = %v, want [engineering]", c.Groups)
	}
}

// TestAuthorizeRejections covers requests the authorization endpoint must
// refuse: on a page when the client or redirect URI cannot be trusted, by
// redirect with an OAuth error otherwise.
func TestAuthorizeRejections(t *testing.T) {
	challenge := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	base := func() url.Values {
		return url.Values{
			"client_id": {DemoClientID}, "redirect_uri": {rpCallback}, "response_type": {"code"},
			"scope": {"openid email"}, "state": {"xyz"}, "nonce": {"n"},
			"code_challenge": {challenge}, "code_challenge_method": {"S256"},
		}
	}
	cases := []struct {
		name      string
		mutate    func(url.Values)
		wantPage  int    // status of an error page (no redirect)
		wantError string // error parameter of the redirect
	}{
		{"unknown client", func(q url.Values) { q.Set("client_id", "evil") }, 400, ""},
		{"missing client", func(q url.Values) { q.Del("client_id") }, 400, ""},
		{"unregistered redirect_uri", func(q url.Values) { q.Set("redirect_uri", "https://evil.example/cb") }, 400, ""},
		{"redirect_uri prefix", func(q url.Values) { q.Set("redirect_uri", rpCallback+"/x") }, 400, ""},
		{"missing redirect_uri", func(q url.Values) { q.Del("redirect_uri") }, 400, ""},
		{"missing PKCE", func(q url.Values) { q.Del("code_challenge"); q.Del("code_challenge_method") }, 0, "invalid_request"},
		{"plain PKCE", func(q url.Values) { q.Set("code_challenge_method", "plain") }, 0, "invalid_request"},
		{"malformed challenge", func(q url.Values) { q.Set("code_challenge", "abc") }, 0, "invalid_request"},
		{"token response type", func(q url.Values) { q.Set("response_type", "token") }, 0, "unsupported_response_type"},
		{"no openid scope", func(q url.Values) { q.Set("scope", "email") }, 0, "invalid_scope"},
		{"request object", func(q url.Values) { q.Set("request", "eyJ") }, 0, "request_not_supported"},
		{"prompt none signed out", func(q url.Values) { q.Set("prompt", "none") }, 0, "login_required"},
		{"fragment response mode", func(q url.Values) { q.Set("response_mode", "fragment") }, 0, "invalid_request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			q := base()
			tc.mutate(q)
			resp, body := h.get(h.idp.Issuer() + pathAuthorize + "?" + q.Encode())
			if tc.wantPage != 0 {
				if resp.StatusCode != tc.wantPage || resp.Header.Get("Location") != "" {
					t.Fatalf("status %d location %q, want page %d without redirect", resp.StatusCode, resp.Header.Get("Location"), tc.wantPage)
				}
				if !strings.Contains(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(body, "<h1") {
					t.Errorf("want an HTML error page, got %q", body)
				}
				return
			}
			got := callbackParams(t, resp)
			if got.Get("error") != tc.wantError || got.Get("state") != "xyz" || got.Get("code") != "" {
				t.Errorf("redirect query = %v, want error=%s state=xyz and no code", got, tc.wantError)
			}
		})
	}
}

func TestSignInForm(t *testing.T) {
	authURL := func(h *harness) string {
		return h.oauthConfig(oauth2.AuthStyleInHeader).AuthCodeURL("st", oauth2.S256ChallengeOption(oauth2.GenerateVerifier()))
	}
	t.Run("page is escaped and protected", func(t *testing.T) {
		h := newHarness(t)
		resp, body := h.get(authURL(h))
		for _, want := range []string{`autocomplete="username"`, `autocomplete="current-password"`, `<label for="password">`, "alice@example.com", "admins"} {
			if !strings.Contains(body, want) {
				t.Errorf("sign-in page lacks %q", want)
			}
		}
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "form-action 'self' https://rp.example") {
			t.Errorf("CSP = %q", csp)
		}
		if resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("Cache-Control = %q, want no-store", resp.Header.Get("Cache-Control"))
		}
	})
	t.Run("username is escaped when echoed", func(t *testing.T) {
		h := newHarness(t)
		fields := h.startLogin(authURL(h))
		resp, body := h.submit(fields, `<script>alert(1)</script>`, "x")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", resp.StatusCode)
		}
		if strings.Contains(body, "<script>alert(1)") || !strings.Contains(body, "&lt;script&gt;alert(1)") {
			t.Errorf("user name not escaped in:\n%s", body)
		}
	})
	cases := []struct {
		name       string
		tamper     func(h *harness, f url.Values)
		user, pass string
		wantStatus int
		wantText   string
	}{
		{"wrong password", nil, "alice", "bob", 401, "do not match"},
		{"unknown user", nil, "mallory", "mallory", 401, "do not match"},
		{"bad CSRF token", func(_ *harness, f url.Values) { f.Set("csrf", "forged") }, "alice", "alice", 403, "could not be verified"},
		{"missing CSRF token", func(_ *harness, f url.Values) { f.Del("csrf") }, "alice", "alice", 403, "could not be verified"},
		{"form from another browser", func(h *harness, _ url.Values) {
			jar, _ := cookiejar.New(nil)
			h.browser.Jar = jar
		}, "alice", "alice", 403, "could not be verified"},
		{"unknown form", func(_ *harness, f url.Values) { f.Set("request", "nope") }, "alice", "alice", 400, "expired"},
		{"expired form", func(h *harness, _ url.Values) { h.clock.Add(11 * time.Minute) }, "alice", "alice", 400, "expired"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			fields := h.startLogin(authURL(h))
			if tc.tamper != nil {
				tc.tamper(h, fields)
			}
			resp, body := h.submit(fields, tc.user, tc.pass)
			if resp.StatusCode != tc.wantStatus || resp.Header.Get("Location") != "" {
				t.Fatalf("status %d location %q, want %d and no redirect", resp.StatusCode, resp.Header.Get("Location"), tc.wantStatus)
			}
			if !strings.Contains(body, tc.wantText) {
				t.Errorf("page lacks %q:\n%s", tc.wantText, body)
			}
		})
	}
	t.Run("form is one-time", func(t *testing.T) {
		h := newHarness(t)
		fields := h.startLogin(authURL(h))
		if resp, _ := h.submit(fields, "alice", "alice"); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("first submit: %d", resp.StatusCode)
		}
		if resp, _ := h.submit(fields, "alice", "alice"); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("second submit: %d, want 400", resp.StatusCode)
		}
	})
	t.Run("too many wrong passwords close the form", func(t *testing.T) {
		h := newHarness(t)
		fields := h.startLogin(authURL(h))
		var resp *http.Response
		for range maxFailures {
			resp, _ = h.submit(fields, "alice", "wrong")
		}
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("after %d failures: %d, want 403", maxFailures, resp.StatusCode)
		}
		if resp, _ := h.submit(fields, "alice", "alice"); resp.StatusCode == http.StatusSeeOther {
			t.Errorf("closed form still signs in")
		}
	})
	t.Run("cancel", func(t *testing.T) {
		h := newHarness(t)
		fields := h.startLogin(authURL(h))
		fields.Set("action", "cancel")
		resp, _ := h.submit(fields, "", "")
		q := callbackParams(t, resp)
		if q.Get("error") != "access_denied" || q.Get("state") != "st" {
			t.Errorf("cancel redirect query = %v, want error=access_denied state=st", q)
		}
	})
}

// TestProviderSessionAndLogout: a second sign-in needs no password; logout
// ends that, validates post_logout_redirect_uri and passes state.
func TestProviderSessionAndLogout(t *testing.T) {
	h := newHarness(t)
	conf := h.oauthConfig(oauth2.AuthStyleInHeader)
	code, verifier := h.login(conf, "alice", "n1")
	tok, err := conf.Exchange(h.ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	rawID := tok.Extra("id_token").(string)

	v2 := oauth2.GenerateVerifier()
	resp, _ := h.get(conf.AuthCodeURL("again", oidc.Nonce("n2"), oauth2.S256ChallengeOption(v2)))
	q := callbackParams(t, resp)
	if q.Get("code") == "" || q.Get("state") != "again" {
		t.Fatalf("second authorize: %v, want an immediate code", q)
	}
	tok2, err := conf.Exchange(h.ctx, q.Get("code"), oauth2.VerifierOption(v2))
	if err != nil {
		t.Fatal(err)
	}
	idt2, err := h.verifier().Verify(h.ctx, tok2.Extra("id_token").(string))
	if err != nil || idt2.Nonce != "n2" {
		t.Fatalf("SSO ID token: nonce %v err %v", idt2, err)
	}

	t.Run("prompt=login forces the form", func(t *testing.T) {
		resp, body := h.get(conf.AuthCodeURL("s", oauth2.S256ChallengeOption(v2), oauth2.SetAuthURLParam("prompt", "login")))
		if resp.StatusCode != 200 || !strings.Contains(body, `name="password"`) {
			t.Errorf("status %d, want the sign-in form", resp.StatusCode)
		}
	})

	t.Run("unregistered post_logout_redirect_uri", func(t *testing.T) {
		u := h.idp.Issuer() + pathEndSession + "?" + url.Values{
			"id_token_hint": {rawID}, "post_logout_redirect_uri": {"https://evil.example/"},
		}.Encode()
		resp, body := h.get(u)
		if resp.StatusCode != 400 || resp.Header.Get("Location") != "" || !strings.Contains(body, "signed out") {
			t.Errorf("status %d location %q, want 400 signed-out page without redirect", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
	// That request signed us out; sign in again for the real logout.
	h.login(conf, "alice", "n3")

	t.Run("forged id_token_hint", func(t *testing.T) {
		u := h.idp.Issuer() + pathEndSession + "?" + url.Values{"id_token_hint": {rawID[:len(rawID)-4] + "AAAA"}}.Encode()
		if resp, _ := h.get(u); resp.StatusCode != 400 {
			t.Errorf("status %d, want 400", resp.StatusCode)
		}
	})

	h.clock.Add(time.Hour / 2) // an expired hint is still a hint
	resp, _ = h.get(h.idp.Issuer() + pathEndSession + "?" + url.Values{
		"id_token_hint": {rawID}, "post_logout_redirect_uri": {rpLoggedOut}, "state": {"bye"},
	}.Encode())
	loc, err := resp.Location()
	if err != nil || loc.Scheme+"://"+loc.Host+loc.Path != rpLoggedOut || loc.Query().Get("state") != "bye" {
		t.Fatalf("logout redirect = %v (%v), want %s?state=bye", loc, err, rpLoggedOut)
	}
	resp, body := h.get(conf.AuthCodeURL("after", oauth2.S256ChallengeOption(v2)))
	if resp.StatusCode != 200 || !strings.Contains(body, `name="password"`) {
		t.Errorf("after logout: status %d, want the sign-in form again", resp.StatusCode)
	}
}

func TestUserinfoRejections(t *testing.T) {
	h := newHarness(t)
	conf := h.oauthConfig(oauth2.AuthStyleInHeader)
	code, verifier := h.login(conf, "alice", "n")
	tok, err := conf.Exchange(h.ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	rawID := tok.Extra("id_token").(string)
	cases := []struct {
		name  string
		auth  string
		later time.Duration
	}{
		{"no token", "", 0},
		{"basic scheme", "Basic YWxpY2U6YWxpY2U=", 0},
		{"garbage", "Bearer garbage", 0},
		{"ID token instead of access token", "Bearer " + rawID, 0},
		{"expired access token", "Bearer " + tok.AccessToken, 11 * time.Minute},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h.clock.Add(tc.later)
			req, _ := http.NewRequest(http.MethodGet, h.idp.Issuer()+pathUserinfo, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("status %d WWW-Authenticate %q, want 401 Bearer", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
			}
		})
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	good, err := DemoClient([]string{rpCallback}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		opts Options
	}{
		{"no issuer", Options{Users: DemoUsers(), Clients: []Client{good}}},
		{"relative issuer", Options{Issuer: "/idp", Users: DemoUsers(), Clients: []Client{good}}},
		{"trailing slash", Options{Issuer: "https://x.example/", Users: DemoUsers(), Clients: []Client{good}}},
		{"no users", Options{Issuer: "https://x.example", Clients: []Client{good}}},
		{"no clients", Options{Issuer: "https://x.example", Users: DemoUsers()}},
		{"duplicate user", Options{Issuer: "https://x.example", Users: append(DemoUsers(), DemoUsers()[0]), Clients: []Client{good}}},
		{"client without secret", Options{Issuer: "https://x.example", Users: DemoUsers(), Clients: []Client{{ID: "c", RedirectURIs: []string{rpCallback}}}}},
		{"relative redirect", Options{Issuer: "https://x.example", Users: DemoUsers(), Clients: []Client{{ID: "c", Secret: "s", RedirectURIs: []string{"/cb"}}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.opts); err == nil {
				t.Errorf("New accepted %+v", tc.opts)
			}
		})
	}
	if _, err := New(Options{Issuer: "https://x.example", Users: DemoUsers(), Clients: []Client{good}}); err != nil {
		t.Errorf("New rejected good options: %v", err)
	}
}

func TestDemoClientSecretsDiffer(t *testing.T) {
	a, errA := DemoClient([]string{rpCallback}, nil)
	b, errB := DemoClient([]string{rpCallback}, nil)
	if err := errors.Join(errA, errB); err != nil {
		t.Fatal(err)
	}
	if a.ID != DemoClientID || a.Secret == "" || a.Secret == b.Secret || len(a.Secret) < 40 {
		t.Errorf("DemoClient = %q/%q and %q, want portcullis-dev with distinct random secrets", a.ID, a.Secret, b.Secret)
	}
}
