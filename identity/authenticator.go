package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/portcullis/portcullis/internal/confkit"
)

// Paths served by Handler on every route host and on external_url's host.
const (
	PathLogin    = "/.portcullis/login"
	PathCallback = "/.portcullis/callback"
	PathLogout   = "/.portcullis/logout"
	PathMe       = "/.portcullis/me"
	PathJWKS     = "/.well-known/portcullis/jwks.json"
	ownPrefix    = "/.portcullis/"
)

// Authenticator signs people in, reads sessions and bearer tokens, and signs
// assertions. It is safe for concurrent use. A configuration reload builds a
// new one; sessions survive because they live in cookies sealed with the
// configured secrets.
type Authenticator struct {
	cfg     Config
	log     *slog.Logger
	clock   Clock
	client  *http.Client
	sealer  *sealer
	signer  *assertionSigner
	returns *returnChecker

	providers []*provider
	byName    map[string]*provider
	byIssuer  map[string]*provider

	externalHost string
	externalPort string
	refreshFrac  float64

	used     *replayCache
	sessions *sessionCache
	mu       sync.Mutex
	backoff  map[string]time.Time // refresh token hash -> no refresh before
	handler  http.Handler
}

// New builds an Authenticator. It validates cfg and acfg (so a caller that
// skipped Validate still gets every problem), loads or creates the
// assertion key, and starts discovering the providers in the background: it
// never waits for a provider, and an unreachable provider only makes sign-in
// answer 503 until it is back. ctx bounds that background discovery.
func New(ctx context.Context, cfg Config, acfg AssertionConfig, opts Options) (*Authenticator, error) {
	var p confkit.Problems
	cfg.Validate(&p, "identity")
	acfg.Validate(&p, "assertion")
	for _, path := range cfg.PublishedSecrets() {
		p.Add(path, "%s", publishedSecretAdvice)
	}
	if err := p.Err(); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	for _, w := range cfg.Warnings() {
		opts.Logger.Warn("identity: " + w)
	}
	if opts.Clock == nil {
		opts.Clock = wallClock{}
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if opts.RefreshFraction <= 0 || opts.RefreshFraction >= 1 {
		opts.RefreshFraction = 0.25
	}
	s, err := newSealer(cfg.Session.keys)
	if err != nil {
		return nil, err
	}
	extHost, extPort := splitHost(cfg.external.Host)
	signer, err := newAssertionSigner(acfg, cfg.external.String(), opts.Clock)
	if err != nil {
		return nil, err
	}
	a := &Authenticator{
		cfg: cfg, log: opts.Logger, clock: opts.Clock, client: opts.HTTPClient,
		sealer: s, signer: signer, sessions: newSessionCache(sessionCacheSize),
		returns: &returnChecker{
			externalHost: extHost, externalPort: extPort, httpsPort: opts.HTTPSPort, hostAllowed: opts.HostAllowed,
		},
		byName: map[string]*provider{}, byIssuer: map[string]*provider{},
		externalHost: extHost, externalPort: extPort, refreshFrac: opts.RefreshFraction,
		used:    opts.Replay.cache(),
		backoff: map[string]time.Time{},
	}
	redirect := cfg.external.String() + PathCallback
	for _, pc := range cfg.Providers {
		pr := newProvider(pc, redirect, a.client, a.clock)
		a.providers = append(a.providers, pr)
		a.byName[pc.Name] = pr
		a.byIssuer[pc.Issuer] = pr
	}
	a.handler = a.routes()
	for _, pr := range a.providers {
		go func() {
			if _, err := pr.get(ctx); err != nil {
				a.log.Warn("identity: provider not reachable yet; sign-in will retry", "provider", pr.cfg.Name, "err", err)
			}
		}()
	}
	return a, nil
}

// Authenticate returns who made r:
//   - with bearer tokens enabled and an "Authorization: Bearer" header, the
//     token's identity, or an error wrapping ErrInvalidCredentials (or
//     ErrProviderUnavailable) — never a fallback to the cookie;
//   - otherwise the session cookie's identity, refreshing it with the
//     provider when its ID token is near expiry (a refresh the provider
//     refuses signs the user out);
//   - (nil, nil) when there are no credentials. A cookie that is tampered,
//     truncated, foreign, expired or sealed with a retired secret counts as
//     no credentials and is cleared on w.
func (a *Authenticator) Authenticate(w http.ResponseWriter, r *http.Request) (*Identity, error) {
	if a.cfg.Bearer.Enabled && len(r.Header.Values("Authorization")) > 1 {
		// Authorization is a singleton field (RFC 9110 §11.6.2): with two,
		// Portcullis and the upstream could each believe a different one.
		return nil, invalid("more than one Authorization header")
	}
	if tok, ok := a.bearerToken(r.Header); ok {
		return a.verifyBearer(r.Context(), tok)
	}
	s := a.currentSession(w, r)
	if s == nil {
		return nil, nil
	}
	return s.identity(), nil
}

// bearerToken returns the token of an "Authorization: Bearer" header when
// bearer authentication is enabled.
func (a *Authenticator) bearerToken(h http.Header) (string, bool) {
	if !a.cfg.Bearer.Enabled {
		return "", false
	}
	scheme, tok, _ := strings.Cut(strings.TrimSpace(h.Get("Authorization")), " ")
	if !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// StripCredentials removes what authenticated the request before it is
// forwarded: the session cookie (and login-state cookies), keeping every
// other cookie, and the Authorization header when it carried a bearer token.
func (a *Authenticator) StripCredentials(h http.Header) {
	if _, ok := a.bearerToken(h); ok {
		h.Del("Authorization")
	}
	lines := h.Values("Cookie")
	if len(lines) == 0 {
		return
	}
	var kept []string
	for _, line := range lines {
		for _, part := range strings.Split(line, ";") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			name, _, _ := strings.Cut(part, "=")
			if a.ownCookie(strings.TrimSpace(name)) {
				continue
			}
			kept = append(kept, part)
		}
	}
	h.Del("Cookie")
	if len(kept) > 0 {
		h.Set("Cookie", strings.Join(kept, "; "))
	}
}

// OwnsCookie reports whether a cookie of that name is Portcullis's (the
// session, login state): the proxy keeps upstreams from setting one.
func (a *Authenticator) OwnsCookie(name string) bool { return a.ownCookie(name) }

func (a *Authenticator) ownCookie(name string) bool {
	n := a.cfg.Session.CookieName
	return name == n || strings.HasPrefix(name, n+loginCookieInfix)
}

// OwnsPath reports whether Handler serves path: everything under
// /.portcullis/ (unknown paths there answer 404) and the JWKS.
func (a *Authenticator) OwnsPath(path string) bool {
	return strings.HasPrefix(path, ownPrefix) || path == PathJWKS
}

type reportKey struct{}

// WithReport returns r with a place for Handler to report whom it acted
// for: the caller /me answered, the user /callback signed in (or a
// hand-over brought in), the user /logout signed out. Handler stores that
// identity in *dst, which the proxy records in the audit event.
func WithReport(r *http.Request, dst **Identity) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), reportKey{}, dst))
}

// report stores id where WithReport asked for it.
func report(r *http.Request, id *Identity) {
	if dst, ok := r.Context().Value(reportKey{}).(**Identity); ok && id != nil {
		*dst = id
	}
}

// Handler serves /.portcullis/login, /callback, /logout, /me and the JWKS.
// The proxy routes those paths to it on every route host and on
// external_url's host.
func (a *Authenticator) Handler() http.Handler { return a.handler }

// AssertionRequest is the upstream request an assertion is for.
type AssertionRequest struct {
	// Route is the route's name; Audience the upstream's origin
	// (scheme://host[:port]); RequestID the request id.
	Route, Audience, RequestID string
	// Method and URL (without query: the upstream origin and the escaped
	// path as the upstream receives it) become the htm and htu claims
	// (named as in RFC 9449, DPoP), which bind the assertion to that one
	// method and path; empty leaves them out.
	Method, URL string
}

// Assertion signs the SPEC §4 JWT for one upstream request: ES256, kid in
// the JWKS, iss = external_url, aud = audience, sub, email, groups, route,
// iat, exp = iat + assertion.lifetime, jti = requestID; and, an extension,
// htm and htu.
func (a *Authenticator) Assertion(id *Identity, req AssertionRequest) (string, error) {
	if id == nil || !id.Authenticated {
		return "", errors.New("identity: no identity to assert")
	}
	return a.signer.sign(id, req)
}

// JWKS returns the JSON Web Key Set that verifies assertions: the current
// key and, during a rotation, the previous one.
func (a *Authenticator) JWKS() []byte { return append([]byte(nil), a.signer.jwks...) }

// KeyID is the kid of the key that signs assertions now.
func (a *Authenticator) KeyID() string { return a.signer.kid }

// replayCache remembers one-time values (login states, hand-over codes)
// until they expire. It is bounded: when full of unexpired entries it
// refuses new ones, which fails closed.
type replayCache struct {
	mu   sync.Mutex
	max  int
	seen map[string]time.Time
}

// cache is the shared cache, or a new one for a nil ReplayCache.
func (r *ReplayCache) cache() *replayCache {
	if r == nil {
		return newReplayCache(100_000)
	}
	return r.c
}

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, seen: map[string]time.Time{}}
}

// use records key until exp and reports whether it was unused.
func (c *replayCache) use(key string, exp, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.seen[key]; ok && now.Before(t) {
		return false
	}
	if len(c.seen) >= c.max {
		for k, t := range c.seen {
			if !now.Before(t) {
				delete(c.seen, k)
			}
		}
		if len(c.seen) >= c.max {
			return false
		}
	}
	c.seen[key] = exp
	return true
}
