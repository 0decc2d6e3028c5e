package identity

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/portcullis/portcullis/internal/twogen"
)

// session is what the session cookie holds, sealed. Short JSON names keep
// the cookie small.
type session struct {
	Sub      string   `json:"sub"`
	Email    string   `json:"em,omitempty"`
	EmailV   bool     `json:"ev,omitempty"`
	Groups   []string `json:"g,omitempty"`
	Issuer   string   `json:"iss"`
	Provider string   `json:"p"`
	Name     string   `json:"n,omitempty"`
	AMR      []string `json:"amr,omitempty"`
	// Exp ends the session (sign-in time + session.lifetime); refreshing
	// never extends it.
	Exp int64 `json:"exp"`
	// TokIat and TokExp are the current ID token's iat and exp: refresh is
	// due once little of that span is left.
	TokIat  int64  `json:"tia,omitempty"`
	TokExp  int64  `json:"tex,omitempty"`
	Refresh string `json:"rt,omitempty"`
	// IDToken is kept for id_token_hint at logout when it fits.
	IDToken string `json:"it,omitempty"`
}

const (
	// maxCookieValue keeps a whole Set-Cookie line under 4 KB.
	maxCookieValue = 3800
	// refreshRetry spaces refresh attempts for a session whose provider is
	// unreachable.
	refreshRetry = 30 * time.Second
)

func (s *session) identity() *Identity {
	claims := map[string]any{"exp": s.Exp}
	if s.Name != "" {
		claims["name"] = s.Name
	}
	if len(s.AMR) > 0 {
		claims["amr"] = s.AMR
	}
	groups := s.Groups
	if groups == nil {
		groups = []string{}
	}
	return &Identity{
		Authenticated: true, Sub: s.Sub, Email: s.Email, EmailVerified: s.EmailV,
		Groups: groups, Issuer: s.Issuer, Provider: s.Provider, AuthMethod: MethodSession, Claims: claims,
	}
}

func (a *Authenticator) sessionPurpose() string { return "session|" + a.cfg.Session.CookieName }

// encodeSession seals s, shrinking it until the cookie fits in 4 KB: first
// the ID token (logout then goes without id_token_hint), then name and amr,
// then groups beyond what fits (logged, since policies may miss them).
func (a *Authenticator) encodeSession(s *session) (string, error) {
	cp := *s
	seal := func() (string, error) {
		b, err := json.Marshal(&cp)
		if err != nil {
			return "", fmt.Errorf("identity: encoding session: %w", err)
		}
		return a.sealer.seal(a.sessionPurpose(), time.Unix(cp.Exp, 0), b)
	}
	v, err := seal()
	if err != nil || len(v) <= maxCookieValue {
		return v, err
	}
	cp.IDToken = ""
	if v, err = seal(); err != nil || len(v) <= maxCookieValue {
		return v, err
	}
	cp.Name, cp.AMR = "", nil
	if v, err = seal(); err != nil || len(v) <= maxCookieValue {
		return v, err
	}
	all := len(cp.Groups)
	for len(cp.Groups) > 0 {
		cp.Groups = cp.Groups[:len(cp.Groups)*3/4]
		if v, err = seal(); err != nil {
			return "", err
		}
		if len(v) <= maxCookieValue {
			a.log.Warn("identity: session cookie too large; groups dropped", "sub", cp.Sub, "groups", all, "kept", len(cp.Groups))
			return v, nil
		}
	}
	return "", errors.New("identity: session does not fit in a cookie even without groups")
}

// readSession returns the first session cookie that opens; bad reports
// whether a cookie of ours was present but unusable.
func (a *Authenticator) readSession(r *http.Request) (s *session, bad bool) {
	if !a.sealer.usable() {
		return nil, false
	}
	now := a.clock.Now()
	for _, c := range r.CookiesNamed(a.cfg.Session.CookieName) {
		if s, _ := a.sessions.Get(c.Value); s != nil {
			// The same bytes opened before with the same keys: the same
			// session. Only its expiry (which is also the seal's) can
			// have changed its answer since.
			if s.Exp > now.Unix() {
				return s, false
			}
			bad = true
			continue
		}
		b, err := a.sealer.open(a.sessionPurpose(), now, c.Value)
		if err != nil {
			bad = true
			continue
		}
		var got session
		if err := json.Unmarshal(b, &got); err != nil || got.Sub == "" || got.Exp <= now.Unix() {
			bad = true
			continue
		}
		if p := a.byName[got.Provider]; p == nil || p.cfg.Issuer != got.Issuer {
			// Signed in through a provider that is no longer configured
			// (or now names another issuer): the sign-in no longer counts.
			// (The session cache is per configuration, so a cached session
			// passed this check under the same providers.)
			bad = true
			continue
		}
		a.sessions.Put(c.Value, &got)
		return &got, false
	}
	return nil, bad
}

// currentSession reads the session, refreshing it when due; it clears
// unusable cookies and returns nil when nobody is signed in.
func (a *Authenticator) currentSession(w http.ResponseWriter, r *http.Request) *session {
	s, bad := a.readSession(r)
	if s == nil {
		if bad {
			a.clearSession(w, r)
		}
		return nil
	}
	if !a.refreshDue(s) {
		return s
	}
	ns, err := a.refresh(r.Context(), s)
	switch {
	case errors.Is(err, errGrantRevoked):
		a.log.Info("identity: refresh refused by the provider; signed out", "sub", s.Sub, "provider", s.Provider, "err", err)
		a.clearSession(w, r)
		return nil
	case err != nil:
		a.log.Warn("identity: session refresh failed; keeping the session", "sub", s.Sub, "provider", s.Provider, "err", err)
		return s
	}
	if err := a.setSession(w, r, ns); err != nil {
		a.log.Error("identity: re-issuing session cookie", "err", err)
	}
	return ns
}

func (a *Authenticator) refreshDue(s *session) bool {
	if s.Refresh == "" || s.TokExp == 0 {
		return false
	}
	now := a.clock.Now().Unix()
	span := s.TokExp - s.TokIat
	if s.TokIat == 0 || span <= 0 {
		span = 300
	}
	due := s.TokExp - int64(float64(span)*a.refreshFrac)
	if now < due {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	next, ok := a.backoff[tokenKey(s.Refresh)]
	return !ok || !a.clock.Now().Before(next)
}

func tokenKey(t string) string {
	sum := sha256.Sum256([]byte(t))
	return hex.EncodeToString(sum[:12])
}

var errGrantRevoked = errors.New("identity: refresh grant refused")

// refresh exchanges the refresh token for new tokens and re-reads the
// user's claims and groups, so that a group removed at the provider takes
// effect within one refresh interval.
func (a *Authenticator) refresh(ctx context.Context, s *session) (*session, error) {
	p := a.byName[s.Provider]
	if p == nil || p.cfg.Issuer != s.Issuer {
		return nil, fmt.Errorf("%w: provider %q is no longer configured", errGrantRevoked, s.Provider)
	}
	d, err := p.get(ctx)
	if err != nil {
		a.noteRefreshFailure(s.Refresh)
		return nil, err
	}
	key := tokenKey(s.Refresh)
	v, err, _ := p.sf.Do("refresh:"+key, func() (any, error) {
		rctx, cancel := context.WithTimeout(oidc.ClientContext(context.WithoutCancel(ctx), a.client), discoveryTimeout)
		defer cancel()
		tok, err := d.oauth.TokenSource(rctx, &oauth2.Token{RefreshToken: s.Refresh, Expiry: time.Unix(1, 0)}).Token()
		if err != nil {
			var re *oauth2.RetrieveError
			if errors.As(err, &re) && (re.ErrorCode == "invalid_grant" || re.ErrorCode == "unauthorized_client") {
				return nil, fmt.Errorf("%w: %v", errGrantRevoked, err)
			}
			return nil, fmt.Errorf("identity: refresh: %w", err)
		}
		ns, err := a.sessionFromTokens(rctx, p, d, tok, "", s)
		if err != nil {
			return nil, err
		}
		return ns, nil
	})
	if err != nil {
		if !errors.Is(err, errGrantRevoked) {
			a.noteRefreshFailure(s.Refresh)
		}
		return nil, err
	}
	return v.(*session), nil
}

func (a *Authenticator) noteRefreshFailure(rt string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.clock.Now()
	if len(a.backoff) > 10_000 {
		for k, t := range a.backoff {
			if now.After(t) {
				delete(a.backoff, k)
			}
		}
	}
	a.backoff[tokenKey(rt)] = now.Add(refreshRetry)
}

// sessionFromTokens builds a session from a token response: at sign-in
// (prev nil, nonce checked) or at refresh (prev carries what the provider
// may not send again: the refresh token, the session end, the ID token).
func (a *Authenticator) sessionFromTokens(ctx context.Context, p *provider, d *discovered, tok *oauth2.Token, nonce string, prev *session) (*session, error) {
	rawID, _ := tok.Extra("id_token").(string)
	now := a.clock.Now()
	s := &session{Provider: p.cfg.Name, Issuer: p.cfg.Issuer, Refresh: tok.RefreshToken}
	var claims map[string]any
	switch {
	case rawID != "":
		idt, err := d.login.Verify(ctx, rawID)
		if err != nil {
			return nil, fmt.Errorf("identity: id token: %w", err)
		}
		if prev == nil && idt.Nonce != nonce {
			return nil, errors.New("identity: id token nonce does not match the sign-in")
		}
		if err := idt.Claims(&claims); err != nil {
			return nil, fmt.Errorf("identity: id token claims: %w", err)
		}
		if idt.Subject == "" {
			// go-oidc does not insist on it; OpenID Connect Core §2 does.
			return nil, errors.New("identity: id token has no subject")
		}
		s.Sub, s.IDToken = idt.Subject, rawID
		s.TokIat, s.TokExp = idt.IssuedAt.Unix(), idt.Expiry.Unix()
		if s.TokIat <= 0 || s.TokIat > now.Unix() {
			s.TokIat = now.Unix()
		}
	case prev != nil:
		// Some providers send no ID token on refresh: keep the subject and
		// re-read the claims from userinfo.
		s.Sub, s.IDToken = prev.Sub, prev.IDToken
		s.TokIat = now.Unix()
		s.TokExp = tok.Expiry.Unix()
		if tok.Expiry.IsZero() {
			s.TokExp = 0
		}
		claims = map[string]any{}
	default:
		return nil, errors.New("identity: the provider returned no id_token (is the openid scope granted?)")
	}
	if prev != nil {
		if s.Sub != prev.Sub {
			return nil, fmt.Errorf("%w: refreshed token is for another subject", errGrantRevoked)
		}
		s.Exp = prev.Exp
		if s.Refresh == "" {
			s.Refresh = prev.Refresh
		}
	} else {
		s.Exp = now.Add(a.cfg.Session.Lifetime).Unix()
	}

	groups, hasGroups := claimStrings(claims, p.cfg.GroupsClaim)
	_, hasEmail := claims["email"]
	if (!hasGroups || !hasEmail) && d.userinfo {
		info, err := d.oidc.UserInfo(ctx, oauth2.StaticTokenSource(tok))
		if err != nil {
			if prev != nil {
				return nil, fmt.Errorf("identity: userinfo: %w", err)
			}
			a.log.Warn("identity: userinfo failed; continuing with the ID token's claims", "provider", p.cfg.Name, "err", err)
		} else {
			var uc map[string]any
			if err := info.Claims(&uc); err == nil {
				if sub, _ := uc["sub"].(string); sub != "" && sub != s.Sub {
					return nil, errors.New("identity: userinfo is for another subject")
				}
				if !hasGroups {
					groups, hasGroups = claimStrings(uc, p.cfg.GroupsClaim)
				}
				if !hasEmail {
					if e, ok := uc["email"].(string); ok {
						claims["email"] = e
						claims["email_verified"] = uc["email_verified"]
					}
				}
			}
		}
	}
	s.Groups = groups
	s.Email, _ = claims["email"].(string)
	s.EmailV = claimBool(claims["email_verified"])
	s.Name, _ = claims["name"].(string)
	if s.Name == "" {
		s.Name, _ = claims["preferred_username"].(string)
	}
	s.AMR, _ = claimStrings(claims, "amr")
	if err := checkIdentityText(s.Sub, s.Email); err != nil {
		return nil, fmt.Errorf("identity: id token: %w", err)
	}
	return s, nil
}

// claimStrings reads a claim holding a list of strings (or one string).
// A dotted name reaches into nested objects when no top-level claim has it.
func claimStrings(claims map[string]any, name string) ([]string, bool) {
	v, ok := claims[name]
	if !ok && strings.Contains(name, ".") {
		var cur any = claims
		for _, part := range strings.Split(name, ".") {
			m, isMap := cur.(map[string]any)
			if !isMap {
				return nil, false
			}
			if cur, ok = m[part]; !ok {
				return nil, false
			}
		}
		v = cur
	}
	if !ok {
		return nil, false
	}
	switch t := v.(type) {
	case string:
		if t == "" {
			return []string{}, true
		}
		return []string{t}, true
	case []any:
		out := make([]string, 0, len(t))
		for _, e := range t {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out, true
	case nil:
		return []string{}, true
	}
	return nil, false
}

// claimBool accepts true and "true" (some providers send strings).
func claimBool(v any) bool {
	switch t := v.(type) {
	case bool:
		return t
	case string:
		return t == "true"
	}
	return false
}

// setSession writes the session cookie: on cookie_domain when the request
// host is under it, host-only otherwise.
func (a *Authenticator) setSession(w http.ResponseWriter, r *http.Request, s *session) error {
	v, err := a.encodeSession(s)
	if err != nil {
		return err
	}
	host, _ := splitHost(r.Host)
	c := &http.Cookie{
		Name: a.cfg.Session.CookieName, Value: v, Path: "/",
		Expires: time.Unix(s.Exp, 0),
		Secure:  true, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	}
	if c.MaxAge = int(s.Exp - a.clock.Now().Unix()); c.MaxAge <= 0 {
		c.MaxAge = -1
	}
	if a.sharesCookie(host) {
		c.Domain = a.cfg.Session.CookieDomain
	}
	http.SetCookie(w, c)
	return nil
}

// clearSession expires the session cookie host-only and, when the host is
// under cookie_domain, on the domain too.
func (a *Authenticator) clearSession(w http.ResponseWriter, r *http.Request) {
	host, _ := splitHost(r.Host)
	a.expireCookie(w, a.cfg.Session.CookieName, "")
	if a.sharesCookie(host) {
		a.expireCookie(w, a.cfg.Session.CookieName, a.cfg.Session.CookieDomain)
	}
}

func (a *Authenticator) expireCookie(w http.ResponseWriter, name, domain string) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: "", Path: "/", Domain: domain, MaxAge: -1, Expires: time.Unix(0, 0),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	})
}

// sharesCookie reports whether host is under session.cookie_domain.
func (a *Authenticator) sharesCookie(host string) bool {
	d := strings.TrimPrefix(strings.ToLower(a.cfg.Session.CookieDomain), ".")
	return d != "" && (host == d || strings.HasSuffix(host, "."+d))
}

// sessionCacheSize is how many decoded session cookies an Authenticator
// remembers: at most about 16 MiB (cookie values are at most
// maxCookieValue bytes, their decoded sessions about as much).
const sessionCacheSize = 2048

// sessionCache remembers sessions decoded from cookie values, keyed by the
// whole value: a browser sends the same cookie on every request, and
// decrypting it and decoding its JSON (the ID and refresh tokens are most
// of it) is a tenth of a proxied request's CPU. Only values that opened
// and decoded are kept, so a forged value is never in it, and an equal
// value is the same ciphertext, which opens to the same session with the
// same keys; the cache belongs to one Authenticator, so a configuration
// with other session secrets starts empty. Sessions in it are shared and
// must not be modified.
type sessionCache = twogen.Map[*session]

func newSessionCache(size int) *sessionCache { return twogen.New[*session](size) }
