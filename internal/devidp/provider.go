// Package devidp is the OpenID Connect provider embedded in `portcullis dev`.
//
// It is a real provider, not a mock: discovery, a JWKS, the authorization
// code flow with mandatory PKCE (S256), a sign-in form protected against
// cross-site request forgery, one-time authorization codes, client
// authentication (client_secret_basic and client_secret_post), refresh tokens
// with rotation and reuse detection, userinfo, and RP-initiated logout. Any
// conforming OpenID Connect client (go-oidc with x/oauth2, for instance) can
// sign users in against it.
//
// What it deliberately is not: durable. Keys, sessions, codes and tokens live
// in memory and vanish with the process; users and clients are fixed at New
// (SetUser replaces one). It is meant for demos and tests, where that is a
// feature: nothing to set up, nothing left behind.
//
// Every endpoint is served under the issuer's path, so the Provider can share
// a host (and a mux) with other handlers: with Issuer
// "https://localhost:8443/idp" discovery is at
// "/idp/.well-known/openid-configuration" and the handler answers 404 to
// anything outside "/idp/".
package devidp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Clock tells the time. Tests pass a fake to expire codes, tokens and
// sessions without sleeping.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// User is an account that can sign in.
type User struct {
	// Username is what the person types into the sign-in form. Required and
	// unique.
	Username string
	// Password is compared in constant time. Required.
	Password string
	// Subject is the stable `sub` claim; empty means Username.
	Subject string
	// Email is the `email` claim; it is always reported as verified.
	Email string
	// Name is the `name` claim; empty means Username.
	Name string
	// Groups is the `groups` claim.
	Groups []string
	// Hint lists the account, with its password, on the sign-in form. Only
	// for demo accounts whose password is no secret.
	Hint bool
}

func (u User) subject() string {
	if u.Subject != "" {
		return u.Subject
	}
	return u.Username
}

func (u User) displayName() string {
	if u.Name != "" {
		return u.Name
	}
	return u.Username
}

// Client is a registered OAuth 2.0 client (a relying party).
type Client struct {
	// ID is the client_id. Required and unique.
	ID string
	// Secret authenticates the client at the token endpoint. Required.
	Secret string
	// Name is shown on the sign-in form ("Sign in to NAME"); empty means ID.
	Name string
	// RedirectURIs are the only redirect_uri values accepted, compared
	// exactly (no prefix or wildcard matching). At least one is required.
	RedirectURIs []string
	// PostLogoutRedirectURIs are the only post_logout_redirect_uri values
	// the end-session endpoint redirects to, compared exactly.
	PostLogoutRedirectURIs []string
}

func (c Client) displayName() string {
	if c.Name != "" {
		return c.Name
	}
	return c.ID
}

// Options configure a Provider. Issuer, Users and Clients are required; the
// lifetimes default to the values given in their comments.
type Options struct {
	// Logger receives sign-ins, sign-outs and rejected requests; nil
	// discards.
	Logger *slog.Logger
	// Clock tells the time; nil means the system clock.
	Clock Clock
	// Issuer is the `iss` of every token and the base of every endpoint:
	// an absolute http or https URL without query, fragment or trailing
	// slash. Clients must be configured with exactly this string.
	Issuer string
	// Users may sign in.
	Users []User
	// Clients may request tokens.
	Clients []Client

	// CodeLifetime bounds the time between sign-in and code exchange
	// (default 60s).
	CodeLifetime time.Duration
	// TokenLifetime is the lifetime of ID and access tokens (default 10m).
	TokenLifetime time.Duration
	// RefreshLifetime is the lifetime of a refresh token; each refresh
	// issues a new one (default 12h).
	RefreshLifetime time.Duration
	// SessionLifetime is how long the provider remembers a sign-in, so that
	// the next authorization request needs no password (default 1h).
	SessionLifetime time.Duration
	// FormLifetime bounds the time a person may take to fill in the sign-in
	// form (default 10m).
	FormLifetime time.Duration
}

// Provider is an OpenID Connect provider. It is an http.Handler and safe for
// concurrent use.
type Provider struct {
	log    *slog.Logger
	clock  Clock
	issuer string
	base   string // issuer path, "" or "/something"
	secure bool   // issuer is https: cookies are Secure

	codeTTL, tokenTTL, refreshTTL, sessionTTL, formTTL time.Duration

	key     *ecdsa.PrivateKey
	kid     string
	idSig   jose.Signer
	atSig   jose.Signer
	jwks    []byte
	discov  []byte
	clients map[string]Client

	mu    sync.Mutex
	users map[string]User // by Username
	st    store

	pages *pages
}

var _ http.Handler = (*Provider)(nil)

// Endpoint paths relative to the issuer.
const (
	pathDiscovery  = "/.well-known/openid-configuration"
	pathJWKS       = "/jwks"
	pathAuthorize  = "/authorize"
	pathToken      = "/token"
	pathUserinfo   = "/userinfo"
	pathEndSession = "/end_session"
)

// New checks opts and returns a Provider with a freshly generated ES256
// signing key. Errors describe every invalid option at once.
func New(opts Options) (*Provider, error) {
	var problems []error
	iss, err := url.Parse(opts.Issuer)
	switch {
	case opts.Issuer == "":
		problems = append(problems, errors.New("issuer is required"))
	case err != nil:
		problems = append(problems, fmt.Errorf("issuer: %w", err))
	case (iss.Scheme != "https" && iss.Scheme != "http") || iss.Host == "":
		problems = append(problems, fmt.Errorf("issuer %q: want an absolute http or https URL", opts.Issuer))
	case iss.RawQuery != "" || iss.Fragment != "" || iss.User != nil:
		problems = append(problems, fmt.Errorf("issuer %q: no query, fragment or user info allowed", opts.Issuer))
	case strings.HasSuffix(opts.Issuer, "/"):
		problems = append(problems, fmt.Errorf("issuer %q: no trailing slash allowed", opts.Issuer))
	}
	users := make(map[string]User, len(opts.Users))
	if len(opts.Users) == 0 {
		problems = append(problems, errors.New("users: at least one is required"))
	}
	for i, u := range opts.Users {
		if err := validUser(u); err != nil {
			problems = append(problems, fmt.Errorf("users[%d]: %w", i, err))
			continue
		}
		if _, dup := users[u.Username]; dup {
			problems = append(problems, fmt.Errorf("users[%d]: duplicate username %q", i, u.Username))
		}
		users[u.Username] = cloneUser(u)
	}
	clients := make(map[string]Client, len(opts.Clients))
	if len(opts.Clients) == 0 {
		problems = append(problems, errors.New("clients: at least one is required"))
	}
	for i, c := range opts.Clients {
		if err := validClient(c); err != nil {
			problems = append(problems, fmt.Errorf("clients[%d]: %w", i, err))
			continue
		}
		if _, dup := clients[c.ID]; dup {
			problems = append(problems, fmt.Errorf("clients[%d]: duplicate id %q", i, c.ID))
		}
		clients[c.ID] = Client{
			ID: c.ID, Secret: c.Secret, Name: c.Name,
			RedirectURIs:           slices.Clone(c.RedirectURIs),
			PostLogoutRedirectURIs: slices.Clone(c.PostLogoutRedirectURIs),
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("devidp: invalid options: %w", errors.Join(problems...))
	}

	p := &Provider{
		log:        opts.Logger,
		clock:      opts.Clock,
		issuer:     opts.Issuer,
		base:       iss.EscapedPath(),
		secure:     iss.Scheme == "https",
		codeTTL:    orDefault(opts.CodeLifetime, 60*time.Second),
		tokenTTL:   orDefault(opts.TokenLifetime, 10*time.Minute),
		refreshTTL: orDefault(opts.RefreshLifetime, 12*time.Hour),
		sessionTTL: orDefault(opts.SessionLifetime, time.Hour),
		formTTL:    orDefault(opts.FormLifetime, 10*time.Minute),
		clients:    clients,
		users:      users,
		st:         newStore(),
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.clock == nil {
		p.clock = systemClock{}
	}
	if err := p.initKeys(); err != nil {
		return nil, err
	}
	disc, err := p.discovery()
	if err != nil {
		return nil, err
	}
	p.discov = disc
	pg, err := newPages()
	if err != nil {
		return nil, err
	}
	p.pages = pg
	return p, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func validUser(u User) error {
	switch {
	case u.Username == "":
		return errors.New("username is required")
	case u.Password == "":
		return fmt.Errorf("user %q: password is required", u.Username)
	}
	return nil
}

func validClient(c Client) error {
	switch {
	case c.ID == "":
		return errors.New("id is required")
	case c.Secret == "":
		return fmt.Errorf("client %q: secret is required", c.ID)
	case len(c.RedirectURIs) == 0:
		return fmt.Errorf("client %q: at least one redirect URI is required", c.ID)
	}
	for _, list := range [][]string{c.RedirectURIs, c.PostLogoutRedirectURIs} {
		for _, raw := range list {
			u, err := url.Parse(raw)
			if err != nil || !u.IsAbs() || u.Host == "" || u.Fragment != "" {
				return fmt.Errorf("client %q: redirect URI %q: want an absolute URL without fragment", c.ID, raw)
			}
		}
	}
	return nil
}

func cloneUser(u User) User {
	u.Groups = slices.Clone(u.Groups)
	return u
}

func (p *Provider) initKeys() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("devidp: generate signing key: %w", err)
	}
	pub := jose.JSONWebKey{Key: &key.PublicKey, Algorithm: string(jose.ES256), Use: "sig"}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return fmt.Errorf("devidp: key thumbprint: %w", err)
	}
	p.key = key
	p.kid = base64.RawURLEncoding.EncodeToString(tp)
	pub.KeyID = p.kid
	sk := jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: p.kid}}
	if p.idSig, err = jose.NewSigner(sk, (&jose.SignerOptions{}).WithType("JWT")); err != nil {
		return fmt.Errorf("devidp: id token signer: %w", err)
	}
	// RFC 9068 types access tokens so they cannot pass for ID tokens.
	if p.atSig, err = jose.NewSigner(sk, (&jose.SignerOptions{}).WithType("at+jwt")); err != nil {
		return fmt.Errorf("devidp: access token signer: %w", err)
	}
	if p.jwks, err = jsonMarshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}}); err != nil {
		return fmt.Errorf("devidp: encode jwks: %w", err)
	}
	return nil
}

func (p *Provider) discovery() ([]byte, error) {
	doc := map[string]any{
		"issuer":                                p.issuer,
		"authorization_endpoint":                p.issuer + pathAuthorize,
		"token_endpoint":                        p.issuer + pathToken,
		"userinfo_endpoint":                     p.issuer + pathUserinfo,
		"jwks_uri":                              p.issuer + pathJWKS,
		"end_session_endpoint":                  p.issuer + pathEndSession,
		"response_types_supported":              []string{"code"},
		"response_modes_supported":              []string{"query"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{string(jose.ES256)},
		"code_challenge_methods_supported":      []string{"S256"},
		"grant_types_supported":                 []string{"authorization_code", "refresh_token"},
		"scopes_supported":                      []string{"openid", "profile", "email", "groups", "offline_access"},
		"claims_supported": []string{
			"iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "amr", "azp", "at_hash",
			"email", "email_verified", "name", "preferred_username", "groups",
		},
		"token_endpoint_auth_methods_supported":          []string{"client_secret_basic", "client_secret_post"},
		"prompt_values_supported":                        []string{"none", "login"},
		"authorization_response_iss_parameter_supported": true,
		"claims_parameter_supported":                     false,
		"request_parameter_supported":                    false,
		"request_uri_parameter_supported":                false,
	}
	b, err := jsonMarshal(doc)
	if err != nil {
		return nil, fmt.Errorf("devidp: encode discovery: %w", err)
	}
	return b, nil
}

// Issuer returns the issuer URL exactly as clients must configure it.
func (p *Provider) Issuer() string { return p.issuer }

// Client returns the registered client with the given ID, secret included,
// so that the process that embeds the Provider can configure its relying
// party with it.
func (p *Provider) Client(id string) (Client, bool) {
	c, ok := p.clients[id]
	if !ok {
		return Client{}, false
	}
	c.RedirectURIs = slices.Clone(c.RedirectURIs)
	c.PostLogoutRedirectURIs = slices.Clone(c.PostLogoutRedirectURIs)
	return c, true
}

// SetUser adds a user or replaces the one with the same Username. Tokens
// issued afterwards (including on refresh) carry the new claims; a refresh
// for a user removed from the provider's view fails. It lets tests show, for
// instance, that a group removed at the provider reaches the relying party.
func (p *Provider) SetUser(u User) error {
	if err := validUser(u); err != nil {
		return fmt.Errorf("devidp: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.users[u.Username] = cloneUser(u)
	return nil
}

// userBySubject finds a user by `sub`; the caller holds no lock.
func (p *Provider) userBySubject(sub string) (User, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, u := range p.users {
		if u.subject() == sub {
			return cloneUser(u), true
		}
	}
	return User{}, false
}

// ServeHTTP routes to the endpoints under the issuer's path.
func (p *Provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, p.base)
	if !ok || (rest != "" && rest[0] != '/') {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	switch rest {
	case pathDiscovery:
		p.serveJSONDoc(w, r, p.discov)
	case pathJWKS:
		p.serveJSONDoc(w, r, p.jwks)
	case pathAuthorize:
		p.authorize(w, r)
	case pathToken:
		p.token(w, r)
	case pathUserinfo:
		p.userinfo(w, r)
	case pathEndSession:
		p.endSession(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (p *Provider) serveJSONDoc(w http.ResponseWriter, r *http.Request, doc []byte) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, oauthError{Code: "invalid_request", Description: "method not allowed"})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	_, _ = w.Write(doc)
}

// cookiePath scopes the provider's cookies to its own endpoints.
func (p *Provider) cookiePath() string {
	return p.base + "/"
}
