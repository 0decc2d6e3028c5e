// Package identity answers "who is calling?" for Portcullis: it signs people
// in with OpenID Connect (authorization code + PKCE), keeps their session in
// an AEAD-encrypted cookie, verifies JWT bearer tokens of machine clients,
// validates return-to targets, and signs the X-Portcullis-Assertion JWT that
// upstreams verify with the JWKS served at /.well-known/portcullis/jwks.json.
//
// The proxy composes an *Authenticator built by New; identity never imports
// proxy, policy or audit. Configuration lives in Config and AssertionConfig
// (SPEC §2); the HTTP surface is SPEC §3.
//
// Sign-in. A browser that needs a session is sent (StartLogin) straight to
// the provider when the login-state cookie it gets can reach external_url's
// host (same host, or both under session.cookie_domain) and there is one
// provider; otherwise to external_url's /.portcullis/login, which offers a
// provider choice when several are configured. The authorization request
// carries PKCE (S256), state and nonce; state, nonce, the PKCE verifier and
// the return target live only in a sealed login-state cookie (10 minutes,
// one use). The provider's redirect URI is always external_url +
// /.portcullis/callback. After sign-in, a return target on a host outside
// cookie_domain receives the session through a sealed, one-time, 60-second
// hand-over code on its own /.portcullis/callback. One-time values are
// remembered in memory per process: with several Portcullis instances a
// captured code could be replayed on another instance within its lifetime.
//
// Logout. /.portcullis/logout clears the cookie; when the provider
// advertises end_session_endpoint it continues there with client_id,
// id_token_hint (when the cookie kept it) and post_logout_redirect_uri =
// external_url + /.portcullis/logout — register that URI at the provider.
// Sessions handed over to hosts outside cookie_domain end when those hosts'
// cookies are cleared (their own logout) or expire.
//
// Return targets. Only same-origin paths and https URLs on external_url's
// host or a route host (Options.HostAllowed) are followed; see
// returnChecker for the exact rules. A target whose path or query holds
// "//" (for example ?next=https://...) falls back to "/" on purpose.
package identity

import (
	"errors"
	"log/slog"
	"net/http"
	"time"
)

// Identity is who made a request. A nil *Identity means nobody is signed in.
type Identity struct {
	Authenticated bool     `json:"authenticated"`
	Sub           string   `json:"sub"`
	Email         string   `json:"email,omitempty"`
	EmailVerified bool     `json:"email_verified"`
	Groups        []string `json:"groups"`
	Issuer        string   `json:"issuer"`
	// Provider is the configured provider name.
	Provider string `json:"provider"`
	// AuthMethod is "session" or "bearer".
	AuthMethod string `json:"auth_method"`
	// Claims holds further claims: for a bearer token all of its claims,
	// for a session the few kept in the cookie (name, amr, exp). Tokens are
	// never included.
	Claims map[string]any `json:"claims"`
}

// Authentication methods reported in Identity.AuthMethod.
const (
	MethodSession = "session"
	MethodBearer  = "bearer"
)

// Errors callers inspect with errors.Is.
var (
	// ErrInvalidCredentials: the request carried credentials (a bearer
	// token) that do not verify. The proxy answers 401 and never falls back
	// to the session cookie.
	ErrInvalidCredentials = errors.New("identity: invalid credentials")
	// ErrProviderUnavailable: the identity provider could not be reached
	// (discovery or JWKS), so the credentials could not be checked.
	ErrProviderUnavailable = errors.New("identity: identity provider unavailable")
)

// Clock tells the time; tests pass a fake to move sessions and tokens
// through their lifetimes without sleeping.
type Clock interface{ Now() time.Time }

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// Options are the collaborators of an Authenticator.
type Options struct {
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Clock defaults to the wall clock.
	Clock Clock
	// HTTPClient talks to the providers (discovery, token, userinfo,
	// JWKS). It should have a timeout; the default has 10s.
	HTTPClient *http.Client
	// HostAllowed reports whether a host (lower-case, without port) is a
	// configured route host. It is consulted on every return-to check, so it
	// may change with reloads. nil allows only external_url's host.
	HostAllowed func(host string) bool
	// HTTPSPort is the https listener's port as clients see it ("8443");
	// return-to URLs may carry it explicitly. Optional: the port the
	// current request arrived on and external_url's port are accepted too.
	HTTPSPort string
	// RefreshFraction: a session is refreshed with the provider once less
	// than this fraction of its ID token's lifetime is left (default 0.25).
	RefreshFraction float64
	// Replay remembers the one-time values used (login states, hand-over
	// codes) until they expire. Pass the same one to every Authenticator a
	// process builds on configuration reloads, so that a reload does not
	// make a used value usable again. nil: a new one.
	Replay *ReplayCache
}

// ReplayCache is the memory of used one-time values that Options.Replay
// shares across Authenticators. Safe for concurrent use.
type ReplayCache struct{ c *replayCache }

// NewReplayCache returns an empty ReplayCache (at most 100,000 values
// remembered; the oldest expiring go first).
func NewReplayCache() *ReplayCache { return &ReplayCache{c: newReplayCache(100_000)} }
