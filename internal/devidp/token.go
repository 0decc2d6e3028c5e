package devidp

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// oauthError is an RFC 6749 §5.2 error response.
type oauthError struct {
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":"server_error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// tokenResponse is RFC 6749 §5.1 plus the OpenID Connect id_token.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	IDToken      string `json:"id_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

// token serves the token endpoint: authorization_code (with PKCE) and
// refresh_token (with rotation).
func (p *Provider) token(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeJSON(w, http.StatusMethodNotAllowed, oauthError{"invalid_request", "the token endpoint accepts POST only"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, oauthError{"invalid_request", "the request body must be application/x-www-form-urlencoded"})
		return
	}
	client, usedBasic, oerr := p.authenticateClient(r)
	if oerr != nil {
		p.log.Warn("devidp: client authentication failed", "error", oerr.Description)
		if usedBasic {
			w.Header().Set("WWW-Authenticate", `Basic realm="devidp", charset="UTF-8"`)
		}
		writeJSON(w, http.StatusUnauthorized, oerr)
		return
	}
	var (
		resp tokenResponse
		err  *oauthError
	)
	switch gt := r.PostForm.Get("grant_type"); gt {
	case "authorization_code":
		resp, err = p.exchangeCode(client, r.PostForm)
	case "refresh_token":
		resp, err = p.refresh(client, r.PostForm)
	case "":
		err = &oauthError{"invalid_request", "grant_type is required"}
	default:
		err = &oauthError{"unsupported_grant_type", fmt.Sprintf("grant_type %q is not supported", gt)}
	}
	if err != nil {
		p.log.Warn("devidp: token request rejected", "client_id", client.ID, "error", err.Code, "description", err.Description)
		writeJSON(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// authenticateClient accepts client_secret_basic (RFC 6749 §2.3.1, with the
// form-encoding of id and secret) or client_secret_post, not both.
func (p *Provider) authenticateClient(r *http.Request) (Client, bool, *oauthError) {
	id, secret, basic := r.BasicAuth()
	if basic {
		var err1, err2 error
		id, err1 = url.QueryUnescape(id)
		secret, err2 = url.QueryUnescape(secret)
		if err1 != nil || err2 != nil {
			return Client{}, true, &oauthError{"invalid_client", "malformed client credentials"}
		}
		if r.PostForm.Has("client_secret") {
			return Client{}, true, &oauthError{"invalid_request", "use one client authentication method, not two"}
		}
		if pid := r.PostForm.Get("client_id"); pid != "" && pid != id {
			return Client{}, true, &oauthError{"invalid_client", "client_id does not match the authenticated client"}
		}
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
		if id == "" {
			return Client{}, false, &oauthError{"invalid_client", "client authentication is required"}
		}
	}
	c, ok := p.clients[id]
	// An unknown client has an empty secret, which never matches.
	if !ok || !equalSecret(secret, c.Secret) {
		return Client{}, basic, &oauthError{"invalid_client", "unknown client or wrong client secret"}
	}
	return c, basic, nil
}

func (p *Provider) exchangeCode(client Client, f url.Values) (tokenResponse, *oauthError) {
	code, verifier := f.Get("code"), f.Get("code_verifier")
	if code == "" {
		return tokenResponse{}, &oauthError{"invalid_request", "code is required"}
	}
	now := p.clock.Now()
	p.mu.Lock()
	e, ok := p.st.codes[digest(code)]
	var entry codeEntry
	if ok {
		entry = *e
		if !e.used {
			// Whatever happens next, a code works once. The family is
			// fixed now, so that a replay racing this exchange revokes
			// what it issues.
			e.used = true
			e.family = randomToken()
			entry.family = e.family
		}
	}
	if ok && entry.used {
		// RFC 6749 §4.1.2: a replayed code revokes what it granted.
		p.st.revokeFamily(entry.family)
	}
	p.mu.Unlock()
	switch {
	case !ok:
		return tokenResponse{}, &oauthError{"invalid_grant", "unknown or expired authorization code"}
	case entry.used:
		p.log.Warn("devidp: authorization code replayed; tokens issued from it are revoked", "client_id", client.ID)
		return tokenResponse{}, &oauthError{"invalid_grant", "authorization code already used"}
	case !now.Before(entry.expires):
		return tokenResponse{}, &oauthError{"invalid_grant", "authorization code expired"}
	case entry.clientID != client.ID:
		return tokenResponse{}, &oauthError{"invalid_grant", "authorization code was issued to another client"}
	case f.Get("redirect_uri") != entry.redirectURI:
		return tokenResponse{}, &oauthError{"invalid_grant", "redirect_uri does not match the authorization request"}
	case verifier == "":
		return tokenResponse{}, &oauthError{"invalid_grant", "code_verifier is required (PKCE)"}
	case !validVerifier(verifier):
		return tokenResponse{}, &oauthError{"invalid_grant", "code_verifier must be 43 to 128 unreserved characters"}
	}
	sum := sha256.Sum256([]byte(verifier))
	if !equalSecret(base64.RawURLEncoding.EncodeToString(sum[:]), entry.challenge) {
		return tokenResponse{}, &oauthError{"invalid_grant", "code_verifier does not match code_challenge"}
	}
	user, ok := p.userBySubject(entry.subject)
	if !ok {
		return tokenResponse{}, &oauthError{"invalid_grant", "the user no longer exists"}
	}
	return p.issueTokens(client, user, entry.grant, entry.family, true)
}

func (p *Provider) refresh(client Client, f url.Values) (tokenResponse, *oauthError) {
	token := f.Get("refresh_token")
	if token == "" {
		return tokenResponse{}, &oauthError{"invalid_request", "refresh_token is required"}
	}
	key := digest(token)
	now := p.clock.Now()
	p.mu.Lock()
	e, ok := p.st.refresh[key]
	var entry refreshEntry
	if ok {
		entry = *e
		if !now.Before(e.expires) || e.clientID != client.ID {
			ok = false
		} else {
			delete(p.st.refresh, key)
			p.st.rotated[key] = rotatedEntry{family: e.family, expires: e.expires}
		}
	} else if rot, replay := p.st.rotated[key]; replay {
		// A rotated token came back: someone kept a copy. End the family.
		p.st.revokeFamily(rot.family)
		p.mu.Unlock()
		p.log.Warn("devidp: rotated refresh token replayed; its family is revoked", "client_id", client.ID)
		return tokenResponse{}, &oauthError{"invalid_grant", "refresh token already used"}
	}
	p.mu.Unlock()
	if !ok {
		return tokenResponse{}, &oauthError{"invalid_grant", "unknown, expired or foreign refresh token"}
	}
	if s := f.Get("scope"); s != "" {
		granted := strings.Fields(entry.scope)
		for _, sc := range strings.Fields(s) {
			if !slices.Contains(granted, sc) {
				return tokenResponse{}, &oauthError{"invalid_scope", fmt.Sprintf("scope %q was not granted", sc)}
			}
		}
		entry.scope = s
	}
	user, ok := p.userBySubject(entry.subject)
	if !ok {
		return tokenResponse{}, &oauthError{"invalid_grant", "the user no longer exists"}
	}
	entry.nonce = "" // the nonce belongs to the authentication, not to a refresh
	return p.issueTokens(client, user, entry.grant, entry.family, false)
}

// validVerifier checks RFC 7636 §4.1: 43..128 characters of [A-Za-z0-9-._~].
func validVerifier(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for _, c := range []byte(v) {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9',
			c == '-', c == '.', c == '_', c == '~':
		default:
			return false
		}
	}
	return true
}

// idClaims are the claims of an ID token.
type idClaims struct {
	Issuer            string   `json:"iss"`
	Subject           string   `json:"sub"`
	Audience          string   `json:"aud"`
	AuthorizedParty   string   `json:"azp"`
	Expiry            int64    `json:"exp"`
	IssuedAt          int64    `json:"iat"`
	AuthTime          int64    `json:"auth_time"`
	Nonce             string   `json:"nonce,omitempty"`
	AccessTokenHash   string   `json:"at_hash,omitempty"`
	AMR               []string `json:"amr"`
	Email             string   `json:"email,omitempty"`
	EmailVerified     bool     `json:"email_verified"`
	Name              string   `json:"name"`
	PreferredUsername string   `json:"preferred_username"`
	Groups            []string `json:"groups"`
}

// accessClaims are the claims of a JWT access token (RFC 9068).
type accessClaims struct {
	Issuer   string   `json:"iss"`
	Subject  string   `json:"sub"`
	Audience string   `json:"aud"`
	ClientID string   `json:"client_id"`
	Expiry   int64    `json:"exp"`
	IssuedAt int64    `json:"iat"`
	ID       string   `json:"jti"`
	Scope    string   `json:"scope"`
	AuthTime int64    `json:"auth_time"`
	Email    string   `json:"email,omitempty"`
	Groups   []string `json:"groups"`
}

func (p *Provider) issueTokens(client Client, user User, g grant, family string, fresh bool) (tokenResponse, *oauthError) {
	now := p.clock.Now()
	exp := now.Add(p.tokenTTL)
	groups := slices.Clone(user.Groups)
	if groups == nil {
		groups = []string{}
	}
	at, err := sign(p.atSig, accessClaims{
		Issuer: p.issuer, Subject: user.subject(), Audience: client.ID, ClientID: client.ID,
		Expiry: exp.Unix(), IssuedAt: now.Unix(), ID: randomToken(), Scope: g.scope,
		AuthTime: g.authTime.Unix(), Email: user.Email, Groups: groups,
	})
	if err != nil {
		return tokenResponse{}, &oauthError{"server_error", "could not sign the access token"}
	}
	half := sha256.Sum256([]byte(at))
	idt, err := sign(p.idSig, idClaims{
		Issuer: p.issuer, Subject: user.subject(), Audience: client.ID, AuthorizedParty: client.ID,
		Expiry: exp.Unix(), IssuedAt: now.Unix(), AuthTime: g.authTime.Unix(), Nonce: g.nonce,
		AccessTokenHash: base64.RawURLEncoding.EncodeToString(half[:16]),
		AMR:             []string{"pwd"},
		Email:           user.Email, EmailVerified: user.Email != "",
		Name: user.displayName(), PreferredUsername: user.Username, Groups: groups,
	})
	if err != nil {
		return tokenResponse{}, &oauthError{"server_error", "could not sign the ID token"}
	}
	rt := randomToken()
	p.mu.Lock()
	p.st.sweep(now)
	full := len(p.st.refresh) >= maxEntries
	if !full {
		p.st.refresh[digest(rt)] = &refreshEntry{grant: g, family: family, expires: now.Add(p.refreshTTL)}
	}
	p.mu.Unlock()
	if full {
		return tokenResponse{}, &oauthError{"temporarily_unavailable", errFull.Error()}
	}
	if fresh {
		p.log.Info("devidp: tokens issued", "client_id", client.ID, "sub", user.subject())
	} else {
		p.log.Debug("devidp: tokens refreshed", "client_id", client.ID, "sub", user.subject())
	}
	return tokenResponse{
		AccessToken:  at,
		TokenType:    "Bearer",
		ExpiresIn:    int64(p.tokenTTL / time.Second),
		RefreshToken: rt,
		IDToken:      idt,
		Scope:        g.scope,
	}, nil
}

func sign(s jose.Signer, claims any) (string, error) {
	b, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("devidp: encode claims: %w", err)
	}
	obj, err := s.Sign(b)
	if err != nil {
		return "", fmt.Errorf("devidp: sign: %w", err)
	}
	return obj.CompactSerialize()
}

// parseOwn verifies a token this provider signed and returns its claims
// and "typ" header. It does not check expiry.
func (p *Provider) parseOwn(raw string, claims any) (string, error) {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return "", fmt.Errorf("devidp: parse token: %w", err)
	}
	if len(tok.Headers) != 1 || tok.Headers[0].KeyID != p.kid {
		return "", errors.New("devidp: token not signed with this provider's key")
	}
	if err := tok.Claims(&p.key.PublicKey, claims); err != nil {
		return "", fmt.Errorf("devidp: verify token: %w", err)
	}
	typ, _ := tok.Headers[0].ExtraHeaders[jose.HeaderType].(string)
	return typ, nil
}

// userinfo serves the OpenID Connect userinfo endpoint for a Bearer access
// token (RFC 6750 §2.1).
func (p *Provider) userinfo(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		writeJSON(w, http.StatusMethodNotAllowed, oauthError{"invalid_request", "method not allowed"})
		return
	}
	deny := func(code, desc string) {
		if code == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="devidp"`)
		} else {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="devidp", error=%q, error_description=%q`, code, desc))
		}
		writeJSON(w, http.StatusUnauthorized, oauthError{Code: cmpOr(code, "invalid_token"), Description: desc})
	}
	scheme, raw, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || raw == "" {
		deny("", "a Bearer access token is required")
		return
	}
	var c accessClaims
	typ, err := p.parseOwn(strings.TrimSpace(raw), &c)
	switch {
	case err != nil:
		deny("invalid_token", "the access token is not valid")
		return
	case typ != "at+jwt":
		deny("invalid_token", "not an access token")
		return
	case c.Issuer != p.issuer:
		deny("invalid_token", "the access token was issued by someone else")
		return
	case !p.clock.Now().Before(time.Unix(c.Expiry, 0)):
		deny("invalid_token", "the access token expired")
		return
	}
	user, ok := p.userBySubject(c.Subject)
	if !ok {
		deny("invalid_token", "the user no longer exists")
		return
	}
	groups := slices.Clone(user.Groups)
	if groups == nil {
		groups = []string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"sub":                user.subject(),
		"email":              user.Email,
		"email_verified":     user.Email != "",
		"name":               user.displayName(),
		"preferred_username": user.Username,
		"groups":             groups,
	})
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// endSession serves RP-initiated logout (OpenID Connect RP-Initiated Logout
// 1.0): it ends the provider's session and redirects to a registered
// post_logout_redirect_uri, or shows a signed-out page.
func (p *Provider) endSession(w http.ResponseWriter, r *http.Request) {
	var q url.Values
	switch r.Method {
	case http.MethodGet:
		q = r.URL.Query()
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
		if err := r.ParseForm(); err != nil {
			p.errorPage(w, r, http.StatusBadRequest, "The request could not be read", "The form data was malformed or too large.")
			return
		}
		q = r.PostForm
	default:
		w.Header().Set("Allow", "GET, POST")
		p.errorPage(w, r, http.StatusMethodNotAllowed, "Method not allowed", "The end-session endpoint accepts GET and POST.")
		return
	}

	clientID := q.Get("client_id")
	if hint := q.Get("id_token_hint"); hint != "" {
		var c idClaims
		// An expired hint is still a good hint: logout often comes late.
		typ, err := p.parseOwn(hint, &c)
		if err != nil || typ != "JWT" || c.Issuer != p.issuer {
			p.errorPage(w, r, http.StatusBadRequest, "Sign-out request not accepted",
				"The id_token_hint was not issued by this identity provider.")
			return
		}
		if clientID != "" && clientID != c.Audience {
			p.errorPage(w, r, http.StatusBadRequest, "Sign-out request not accepted",
				"The client_id does not match the id_token_hint.")
			return
		}
		clientID = c.Audience
	}
	target := q.Get("post_logout_redirect_uri")
	var client Client
	if target != "" {
		var ok bool
		client, ok = p.clients[clientID]
		if !ok || !slices.Contains(client.PostLogoutRedirectURIs, target) {
			// Still sign out: staying signed in would be the worse surprise.
			sub := p.endProviderSession(w, r)
			p.log.Warn("devidp: signed out; post_logout_redirect_uri not registered", "sub", sub, "client_id", clientID, "post_logout_redirect_uri", target)
			p.signedOutPage(w, r, http.StatusBadRequest,
				"The application asked to send you to an address that is not registered for it, so you stay here.")
			return
		}
	}
	sub := p.endProviderSession(w, r)
	p.log.Info("devidp: signed out", "sub", sub, "client_id", clientID)
	if target == "" {
		p.signedOutPage(w, r, http.StatusOK, "")
		return
	}
	u, err := url.Parse(target)
	if err != nil {
		p.signedOutPage(w, r, http.StatusOK, "")
		return
	}
	if st := q.Get("state"); st != "" {
		qq := u.Query()
		qq.Set("state", st)
		u.RawQuery = qq.Encode()
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	status := http.StatusFound
	if r.Method == http.MethodPost {
		status = http.StatusSeeOther
	}
	http.Redirect(w, r, u.String(), status)
}
