package identity

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// maxBearerLen: longer tokens are refused before any parsing.
const maxBearerLen = 16 << 10

// notAnIDToken refuses a token with the marks of an ID token (see
// verifyBearer); forClient: its audience holds the provider's client_id.
func notAnIDToken(claims map[string]any, forClient bool) error {
	for _, c := range []string{"at_hash", "c_hash"} {
		if _, ok := claims[c]; ok {
			return invalid("bearer token is an ID token (it has %q): send an access token", c)
		}
	}
	if typ, _ := claims["typ"].(string); strings.EqualFold(typ, "ID") {
		return invalid(`bearer token is an ID token (typ "ID"): send an access token`)
	}
	if _, ok := claims["nonce"]; ok && forClient {
		return invalid("bearer token is an ID token (a nonce, for the client_id): send an access token")
	}
	return nil
}

// checkIdentityText refuses a subject or email that could not travel in a
// header to the upstream as it is (control characters), rather than
// letting every request of that identity fail at forwarding.
func checkIdentityText(sub, email string) error {
	for name, v := range map[string]string{"subject": sub, "email": email} {
		for i := 0; i < len(v); i++ {
			if c := v[i]; c < 0x20 || c == 0x7f {
				return fmt.Errorf("the %s holds a control character", name)
			}
		}
	}
	return nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidCredentials, fmt.Sprintf(format, args...))
}

// verifyBearer checks a JWT bearer token: size, shape, an issuer that is a
// configured provider, a signature by that provider's JWKS with one of
// signingAlgs, expiry and not-before, and an audience among
// bearer.audiences.
func (a *Authenticator) verifyBearer(ctx context.Context, raw string) (*Identity, error) {
	if len(raw) > maxBearerLen {
		return nil, invalid("bearer token larger than %d bytes", maxBearerLen)
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return nil, invalid("bearer token is not a signed JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, invalid("bearer token payload is not base64url")
	}
	var peek struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(payload, &peek); err != nil {
		return nil, invalid("bearer token payload is not a JSON object")
	}
	p := a.byIssuer[peek.Iss]
	if p == nil {
		return nil, invalid("bearer token issuer %q is not a configured provider", peek.Iss)
	}
	d, err := p.get(ctx)
	if err != nil {
		return nil, err
	}
	tok, err := d.bearer.Verify(ctx, raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCredentials, err)
	}
	if !slices.ContainsFunc(tok.Audience, func(aud string) bool { return slices.Contains(a.cfg.Bearer.Audiences, aud) }) {
		return nil, invalid("bearer token audience %q is not accepted", tok.Audience)
	}
	if tok.Subject == "" {
		return nil, invalid("bearer token has no subject")
	}
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCredentials, err)
	}
	// An ID token is the browser sign-in's proof for Portcullis, not a
	// credential for APIs, even when its audience (the client_id) is also
	// a bearer audience: it travels in browser URLs (id_token_hint at
	// logout) and stays valid after sign-out. ID tokens carry claims access
	// tokens do not: at_hash/c_hash, Keycloak's typ "ID", and the nonce of
	// a sign-in for this client (some providers copy the nonce into access
	// tokens too, whose audience is then an API, not the client).
	if err := notAnIDToken(claims, slices.Contains(tok.Audience, p.cfg.ClientID)); err != nil {
		return nil, err
	}
	email, _ := claims["email"].(string)
	if err := checkIdentityText(tok.Subject, email); err != nil {
		return nil, fmt.Errorf("%w: bearer token: %v", ErrInvalidCredentials, err)
	}
	groups, _ := claimStrings(claims, p.cfg.GroupsClaim)
	if groups == nil {
		groups = []string{}
	}
	return &Identity{
		Authenticated: true, Sub: tok.Subject, Email: email, EmailVerified: claimBool(claims["email_verified"]),
		Groups: groups, Issuer: tok.Issuer, Provider: p.cfg.Name, AuthMethod: MethodBearer, Claims: claims,
	}, nil
}
