package demoapp

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
)

// AssertionReport is what the app found out about X-Portcullis-Assertion.
type AssertionReport struct {
	// Present is true when the request carried the header.
	Present bool `json:"present"`
	// Verified is true when the signature verified against the JWKS and
	// iss, aud and exp were as expected, and sub matched X-Portcullis-User.
	Verified bool `json:"verified"`
	// KeyID is the kid of the signing key, from the JWS header.
	KeyID string `json:"kid,omitempty"`
	// Algorithm is the JWS alg.
	Algorithm string `json:"alg,omitempty"`
	// Error says why verification failed.
	Error string `json:"error,omitempty"`
	// Audience is the audience the app required.
	Audience string `json:"expected_audience,omitempty"`
	// Claims are the decoded claims (also when verification failed, so the
	// page can show what was wrong).
	Claims map[string]any `json:"claims,omitempty"`
	// ExpiresIn is the time left until exp, rounded to seconds.
	ExpiresIn string `json:"expires_in,omitempty"`
	// JTIMatchesRequestID tells whether jti equals X-Request-Id (SPEC §4).
	JTIMatchesRequestID bool `json:"jti_matches_request_id"`
}

// verifier checks assertions with keys from a JWKS URL, fetched through the
// configured client, cached, and fetched again when an unknown kid shows up
// (go-oidc's RemoteKeySet).
type verifier struct {
	keys    *oidc.RemoteKeySet
	issuer  string
	clock   Clock
	timeout time.Duration
}

func newVerifier(jwksURL, issuer string, client *http.Client, clock Clock, timeout time.Duration) *verifier {
	// RemoteKeySet keeps the context as a bag of values (the HTTP client)
	// and ignores its cancellation; fetches are bounded by client.Timeout.
	ctx := oidc.ClientContext(context.Background(), client)
	return &verifier{
		keys:    oidc.NewRemoteKeySet(ctx, jwksURL),
		issuer:  issuer,
		clock:   clock,
		timeout: timeout,
	}
}

// check verifies raw for the given audience; user and requestID are the
// X-Portcullis-User and X-Request-Id headers the assertion must agree with.
func (v *verifier) check(ctx context.Context, raw, audience, user, requestID string) AssertionReport {
	rep := AssertionReport{Present: raw != "", Audience: audience}
	if raw == "" {
		rep.Error = "no X-Portcullis-Assertion header"
		return rep
	}
	jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		rep.Error = fmt.Sprintf("not an ES256 JWS: %v", err)
		return rep
	}
	if len(jws.Signatures) == 1 {
		rep.KeyID = jws.Signatures[0].Header.KeyID
		rep.Algorithm = jws.Signatures[0].Header.Algorithm
	}
	// Decode the claims for display before verifying, so a failure can be
	// explained; nothing below trusts them unless verification succeeds.
	var claims map[string]any
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &claims); err == nil {
		rep.Claims = claims
		if exp, ok := claims["exp"].(float64); ok {
			rep.ExpiresIn = humanSeconds(time.Unix(int64(exp), 0).Sub(v.clock.Now()))
		}
		if jti, ok := claims["jti"].(string); ok {
			rep.JTIMatchesRequestID = requestID != "" && jti == requestID
		}
	}

	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	ver := oidc.NewVerifier(v.issuer, v.keys, &oidc.Config{
		ClientID:             audience,
		SupportedSigningAlgs: []string{string(jose.ES256)},
		Now:                  v.clock.Now,
	})
	tok, err := ver.Verify(ctx, raw)
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	if tok.Subject != user {
		rep.Error = fmt.Sprintf("assertion sub %q does not match X-Portcullis-User %q", tok.Subject, user)
		return rep
	}
	rep.Verified = true
	return rep
}

// humanSeconds writes durations under two minutes in seconds ("60s", not
// "1m0s").
func humanSeconds(d time.Duration) string {
	d = d.Round(time.Second)
	if d > -2*time.Minute && d < 2*time.Minute {
		return fmt.Sprintf("%ds", int64(d/time.Second))
	}
	return d.String()
}
