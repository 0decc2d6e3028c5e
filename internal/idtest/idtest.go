// Package idtest starts a real OpenID Connect provider for tests: the
// oauth2-proxy mockoidc server (code this project did not write) on
// loopback, with users queued for the next sign-ins, an end-session
// endpoint, and a record of the authorization requests it received. Login
// drives a browser-like client through a whole sign-in.
package idtest

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/oauth2-proxy/mockoidc"
)

// Provider is a running mockoidc server. Its fields are what an
// identity.ProviderConfig needs.
type Provider struct {
	Issuer       string
	ClientID     string
	ClientSecret string
	// EndSessionURL is the end_session_endpoint advertised in discovery.
	EndSessionURL string
	// Mock is the underlying server (FastForward, QueueError, Keypair...).
	Mock *mockoidc.MockOIDC

	mu         sync.Mutex
	authorize  []url.Values
	endSession []url.Values
	jwks       int
	noEnd      bool
}

// NewProvider starts a provider on 127.0.0.1 and stops it when the test
// ends. Its discovery document also advertises an end_session_endpoint
// (served by a companion loopback server) that redirects to the
// post_logout_redirect_uri with the state it was given.
func NewProvider(t testing.TB) *Provider {
	t.Helper()
	return NewProviderWith(t, Settings{})
}

// Settings fix what NewProvider otherwise picks at random.
type Settings struct {
	// Addr to listen on (default 127.0.0.1:0). A test can reserve an
	// address, configure Portcullis with it while nothing listens, and
	// start the provider later to model an outage.
	Addr string
	// ClientID and ClientSecret default to random values.
	ClientID, ClientSecret string
}

// NewProviderWith is NewProvider with Settings.
func NewProviderWith(t testing.TB, s Settings) *Provider {
	t.Helper()
	m, err := mockoidc.NewServer(nil)
	if err != nil {
		t.Fatalf("idtest: mockoidc: %v", err)
	}
	if s.ClientID != "" {
		m.ClientID = s.ClientID
	}
	if s.ClientSecret != "" {
		m.ClientSecret = s.ClientSecret
	}
	if s.Addr == "" {
		s.Addr = "127.0.0.1:0"
	}
	p := &Provider{Mock: m}
	end := httptest.NewServer(http.HandlerFunc(p.serveEndSession))
	t.Cleanup(end.Close)
	p.EndSessionURL = end.URL + "/oidc/end_session"
	if err := m.AddMiddleware(p.middleware); err != nil {
		t.Fatalf("idtest: %v", err)
	}
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		t.Fatalf("idtest: listen: %v", err)
	}
	if err := m.Start(ln, nil); err != nil {
		t.Fatalf("idtest: start mockoidc: %v", err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	p.Issuer, p.ClientID, p.ClientSecret = m.Issuer(), m.ClientID, m.ClientSecret
	return p
}

// DisableEndSession removes end_session_endpoint from discovery (for
// providers without RP-initiated logout). Call it before the first
// discovery.
func (p *Provider) DisableEndSession() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.noEnd = true
}

func (p *Provider) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case mockoidc.JWKSEndpoint:
			p.mu.Lock()
			p.jwks++
			p.mu.Unlock()
		case mockoidc.AuthorizationEndpoint:
			_ = r.ParseForm()
			p.mu.Lock()
			p.authorize = append(p.authorize, cloneValues(r.Form))
			p.mu.Unlock()
		case mockoidc.DiscoveryEndpoint:
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			var doc map[string]any
			if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &doc) != nil {
				copyResponse(w, rec)
				return
			}
			p.mu.Lock()
			if !p.noEnd {
				doc["end_session_endpoint"] = p.EndSessionURL
			}
			p.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(doc)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

func (p *Provider) serveEndSession(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p.mu.Lock()
	p.endSession = append(p.endSession, cloneValues(q))
	p.mu.Unlock()
	back := q.Get("post_logout_redirect_uri")
	if back == "" {
		_, _ = io.WriteString(w, "signed out at the provider")
		return
	}
	u, err := url.Parse(back)
	if err != nil {
		http.Error(w, "bad post_logout_redirect_uri", http.StatusBadRequest)
		return
	}
	if st := q.Get("state"); st != "" {
		bq := u.Query()
		bq.Set("state", st)
		u.RawQuery = bq.Encode()
	}
	http.Redirect(w, r, u.String(), http.StatusFound)
}

// AuthorizeRequests returns the query of every authorization request the
// provider received, in order.
func (p *Provider) AuthorizeRequests() []url.Values {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]url.Values(nil), p.authorize...)
}

// JWKSRequests counts the requests for the provider's key set.
func (p *Provider) JWKSRequests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.jwks
}

// EndSessionRequests returns the query of every end-session request.
func (p *Provider) EndSessionRequests() []url.Values {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]url.Values(nil), p.endSession...)
}

// QueueUser makes the next sign-in (authorization request) be this user.
// Without a queued user, mockoidc signs in its default user.
func (p *Provider) QueueUser(sub, email string, groups []string) *User {
	u := &User{Subject: sub, Email: email, EmailVerified: true, groups: append([]string(nil), groups...)}
	p.Mock.QueueUser(u)
	return u
}

// QueueUserValue queues a User built by the caller (to set EmailVerified,
// Name or GroupsOnlyInUserinfo).
func (p *Provider) QueueUserValue(u *User) { p.Mock.QueueUser(u) }

// User is a mockoidc user whose groups can change while they are signed in
// (SetGroups), as when an administrator removes someone from a group: the
// next token refresh sees the change. Its ID token carries the groups
// claim whatever the scopes, like most providers configured for groups.
type User struct {
	Subject       string
	Email         string
	EmailVerified bool
	Name          string
	// GroupsOnlyInUserinfo leaves the groups out of the ID token; they are
	// served by the userinfo endpoint only.
	GroupsOnlyInUserinfo bool

	mu     sync.Mutex
	groups []string
}

var _ mockoidc.User = (*User)(nil)

// NewUser builds a User for QueueUserValue.
func NewUser(sub, email string, groups ...string) *User {
	return &User{Subject: sub, Email: email, EmailVerified: true, groups: groups}
}

// SetGroups replaces the user's groups at the provider.
func (u *User) SetGroups(groups ...string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.groups = append([]string(nil), groups...)
}

// Groups returns the user's groups at the provider.
func (u *User) Groups() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string{}, u.groups...)
}

// ID is the subject.
func (u *User) ID() string { return u.Subject }

// Userinfo is the userinfo response.
func (u *User) Userinfo(scope []string) ([]byte, error) {
	info := map[string]any{"sub": u.Subject, "groups": u.Groups()}
	if has(scope, "email") {
		info["email"], info["email_verified"] = u.Email, u.EmailVerified
	}
	if has(scope, "profile") && u.Name != "" {
		info["name"] = u.Name
	}
	return json.Marshal(info)
}

// Claims are the ID token claims.
func (u *User) Claims(scope []string, base *mockoidc.IDTokenClaims) (jwt.Claims, error) {
	c := &idClaims{IDTokenClaims: base}
	if has(scope, "email") {
		c.Email, c.EmailVerified = u.Email, &u.EmailVerified
	}
	if has(scope, "profile") {
		c.Name = u.Name
	}
	if !u.GroupsOnlyInUserinfo {
		g := u.Groups()
		c.Groups = &g
	}
	return c, nil
}

type idClaims struct {
	*mockoidc.IDTokenClaims
	Email         string    `json:"email,omitempty"`
	EmailVerified *bool     `json:"email_verified,omitempty"`
	Name          string    `json:"name,omitempty"`
	Groups        *[]string `json:"groups,omitempty"`
}

func has(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Login signs in through a whole browser flow: it requests startURL as a
// browser would (Accept: text/html) and lets client follow every redirect
// (Portcullis, the provider, the callback, the return target). client must
// have a cookie jar; afterwards it holds the session cookie. Login fails the
// test unless the final answer is 200 and no longer on the provider or a
// /.portcullis/ page. The returned response's body has been read and is
// replaced by an in-memory copy.
func Login(t testing.TB, client *http.Client, startURL string) *http.Response {
	t.Helper()
	if client.Jar == nil {
		t.Fatal("idtest: Login needs a client with a cookie jar")
	}
	req, err := http.NewRequest(http.MethodGet, startURL, nil)
	if err != nil {
		t.Fatalf("idtest: %v", err)
	}
	req.Header.Set("Accept", "text/html,application/xhtml+xml")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("idtest: sign-in starting at %s: %v", startURL, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("idtest: reading %s: %v", resp.Request.URL, err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if resp.StatusCode != http.StatusOK || strings.HasPrefix(resp.Request.URL.Path, "/.portcullis/") ||
		strings.HasPrefix(resp.Request.URL.Path, mockoidc.IssuerBase+"/") {
		t.Fatalf("idtest: sign-in ended at %s with %d: %.300s", resp.Request.URL, resp.StatusCode, body)
	}
	return resp
}
