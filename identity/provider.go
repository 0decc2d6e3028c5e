package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2"
	"golang.org/x/sync/singleflight"
)

// signingAlgs is the fixed list of algorithms accepted on ID tokens and
// bearer tokens: asymmetric only, so that "none" and HMAC-with-the-public-key
// tricks are refused before any key is looked at.
var signingAlgs = []string{"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256"}

var joseAlgs = func() []jose.SignatureAlgorithm {
	out := make([]jose.SignatureAlgorithm, len(signingAlgs))
	for i, a := range signingAlgs {
		out[i] = jose.SignatureAlgorithm(a)
	}
	return out
}()

const (
	discoveryTimeout = 10 * time.Second
	minBackoff       = time.Second
	maxBackoff       = time.Minute
	// keyRefetchInterval bounds how often an unknown key id makes us fetch
	// a provider's JWKS again, so that tokens with made-up kids cannot turn
	// Portcullis into a load generator against the provider.
	keyRefetchInterval = 30 * time.Second
	// keyMaxAge is how long a fetched JWKS is trusted before it is fetched
	// again, so that a key the provider withdrew (after a compromise, say)
	// stops verifying even while every token names a key still cached.
	// When the provider cannot be reached, the cached keys keep working.
	keyMaxAge = 10 * time.Minute
)

// provider is one configured OIDC provider, discovered lazily: start-up
// never waits for it, and while it is unreachable attempts are spaced with
// exponential backoff (1s doubling to 1m).
type provider struct {
	cfg      ProviderConfig
	redirect string
	client   *http.Client
	clock    Clock

	mu      sync.Mutex
	disc    *discovered
	lastErr error
	nextTry time.Time
	backoff time.Duration
	sf      singleflight.Group
}

// discovered is what a successful discovery yields; it is immutable.
type discovered struct {
	oidc       *oidc.Provider
	oauth      *oauth2.Config
	login      *oidc.IDTokenVerifier // aud = client_id
	bearer     *oidc.IDTokenVerifier // aud checked against bearer.audiences
	endSession string
	userinfo   bool
}

func newProvider(cfg ProviderConfig, redirectURL string, client *http.Client, clock Clock) *provider {
	return &provider{cfg: cfg, redirect: redirectURL, client: client, clock: clock}
}

// get returns the discovered provider, discovering it now if needed. The
// error wraps ErrProviderUnavailable.
func (p *provider) get(ctx context.Context) (*discovered, error) {
	p.mu.Lock()
	if p.disc != nil {
		d := p.disc
		p.mu.Unlock()
		return d, nil
	}
	if now := p.clock.Now(); now.Before(p.nextTry) {
		err := p.lastErr
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: %s: %v (next attempt in %s)", ErrProviderUnavailable, p.cfg.Name, err, p.nextTry.Sub(now).Round(time.Second))
	}
	p.mu.Unlock()

	v, err, _ := p.sf.Do("discover", func() (any, error) {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), discoveryTimeout)
		defer cancel()
		d, err := p.discover(dctx)
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil {
			p.backoff = min(max(minBackoff, p.backoff*2), maxBackoff)
			p.lastErr = err
			p.nextTry = p.clock.Now().Add(p.backoff)
			return nil, err
		}
		p.disc, p.lastErr, p.backoff = d, nil, 0
		return d, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrProviderUnavailable, p.cfg.Name, err)
	}
	return v.(*discovered), nil
}

func (p *provider) discover(ctx context.Context) (*discovered, error) {
	op, err := oidc.NewProvider(oidc.ClientContext(ctx, p.client), p.cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	var meta struct {
		JWKSURI          string   `json:"jwks_uri"`
		EndSession       string   `json:"end_session_endpoint"`
		Userinfo         string   `json:"userinfo_endpoint"`
		TokenAuthMethods []string `json:"token_endpoint_auth_methods_supported"`
	}
	if err := op.Claims(&meta); err != nil {
		return nil, fmt.Errorf("discovery document: %w", err)
	}
	if meta.JWKSURI == "" {
		return nil, errors.New("discovery document has no jwks_uri")
	}
	keys := &remoteKeys{url: meta.JWKSURI, client: p.client, clock: p.clock}
	now := p.clock.Now
	ep := op.Endpoint()
	ep.AuthStyle = authStyle(meta.TokenAuthMethods)
	d := &discovered{
		oidc: op,
		oauth: &oauth2.Config{
			ClientID:     p.cfg.ClientID,
			ClientSecret: p.cfg.ClientSecret,
			Endpoint:     ep,
			RedirectURL:  p.redirect,
			Scopes:       p.cfg.Scopes,
		},
		login: oidc.NewVerifier(p.cfg.Issuer, keys, &oidc.Config{
			ClientID: p.cfg.ClientID, SupportedSigningAlgs: signingAlgs, Now: now,
		}),
		bearer: oidc.NewVerifier(p.cfg.Issuer, keys, &oidc.Config{
			SkipClientIDCheck: true, SupportedSigningAlgs: signingAlgs, Now: now,
		}),
		endSession: meta.EndSession,
		userinfo:   meta.Userinfo != "",
	}
	return d, nil
}

// authStyle picks how the client authenticates at the token endpoint: the
// one method the provider advertises when it advertises exactly one of
// basic and post, otherwise oauth2's auto-detection (tried once, then
// remembered per provider).
func authStyle(methods []string) oauth2.AuthStyle {
	basic, post := false, false
	for _, m := range methods {
		switch m {
		case "client_secret_basic":
			basic = true
		case "client_secret_post":
			post = true
		}
	}
	switch {
	case basic && !post:
		return oauth2.AuthStyleInHeader
	case post && !basic:
		return oauth2.AuthStyleInParams
	}
	return oauth2.AuthStyleAutoDetect
}

// remoteKeys is an oidc.KeySet over a provider's JWKS. Unlike a plain
// refetch-on-miss key set, it refetches at most once per keyRefetchInterval
// (and only for a key id it does not hold), and skips keys it cannot parse
// instead of failing the whole set.
type remoteKeys struct {
	url    string
	client *http.Client
	clock  Clock

	mu      sync.Mutex
	keys    []jose.JSONWebKey
	fetched time.Time // the last fetch attempt ended
	good    time.Time // the last successful fetch ended
	sf      singleflight.Group
}

var _ oidc.KeySet = (*remoteKeys)(nil)

func (k *remoteKeys) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSigned(raw, joseAlgs)
	if err != nil {
		return nil, fmt.Errorf("identity: malformed jwt: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("identity: jwt must carry exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	k.mu.Lock()
	keys, fetched, good := k.keys, k.fetched, k.good
	k.mu.Unlock()
	if now := k.clock.Now(); !good.IsZero() && now.Sub(good) >= keyMaxAge && now.Sub(fetched) >= keyRefetchInterval {
		// Stale: fetch the set again; keep the cached keys if that fails.
		if v, err, _ := k.sf.Do("fetch", func() (any, error) { return k.fetch(ctx) }); err == nil {
			keys = v.([]jose.JSONWebKey)
		}
		k.mu.Lock()
		fetched = k.fetched
		k.mu.Unlock()
	}
	if payload, found, ok := verifyWithKeys(jws, keys, kid); ok {
		return payload, nil
	} else if found || (!fetched.IsZero() && k.clock.Now().Sub(fetched) < keyRefetchInterval) {
		return nil, errors.New("identity: signature does not verify with the provider's keys")
	}
	v, err, _ := k.sf.Do("fetch", func() (any, error) { return k.fetch(ctx) })
	if err != nil {
		return nil, err
	}
	if payload, _, ok := verifyWithKeys(jws, v.([]jose.JSONWebKey), kid); ok {
		return payload, nil
	}
	return nil, errors.New("identity: signature does not verify with the provider's keys")
}

// verifyWithKeys reports the payload when a key verifies; found says a key
// with the token's kid was present (so refetching would not help).
func verifyWithKeys(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) (payload []byte, found, ok bool) {
	for i := range keys {
		key := &keys[i]
		if kid != "" && key.KeyID != kid {
			continue
		}
		if key.Use != "" && key.Use != "sig" {
			continue
		}
		found = kid != ""
		if p, err := jws.Verify(key); err == nil {
			return p, true, true
		}
	}
	return nil, found, false
}

func (k *remoteKeys) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), discoveryTimeout)
	defer cancel()
	// Whatever happens, do not try again before the interval has passed.
	// fetched is set when the fetch ends, not when it starts: a request
	// arriving meanwhile joins this fetch (singleflight) instead of seeing
	// a "recent" fetch and no keys yet.
	defer func() {
		k.mu.Lock()
		k.fetched = k.clock.Now()
		k.mu.Unlock()
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: jwks: %v", ErrProviderUnavailable, err)
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: jwks: %v", ErrProviderUnavailable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: jwks: status %d: %v", ErrProviderUnavailable, resp.StatusCode, err)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("%w: jwks: %v", ErrProviderUnavailable, err)
	}
	var keys []jose.JSONWebKey
	for _, raw := range set.Keys {
		var key jose.JSONWebKey
		if err := key.UnmarshalJSON(raw); err != nil || !key.IsPublic() {
			continue
		}
		keys = append(keys, key)
	}
	k.mu.Lock()
	k.keys = keys
	k.good = k.clock.Now()
	k.mu.Unlock()
	return keys, nil
}
