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
	groups, _ := claimStrings(claims, p.cfg.GroupsClaim)
	if groups == nil {
		groups = []string{}
	}
	email, _ := claims["email"].(string)
	return &Identity{
		Authenticated: true, Sub: tok.Subject, Email: email, EmailVerified: claimBool(claims["email_verified"]),
		Groups: groups, Issuer: tok.Issuer, Provider: p.cfg.Name, AuthMethod: MethodBearer, Claims: claims,
	}, nil
}
