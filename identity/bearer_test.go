package identity

import (
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

func b64json(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func signRS256(t *testing.T, key *rsa.PrivateKey, header, claims map[string]any) string {
	t.Helper()
	in := b64json(t, header) + "." + b64json(t, claims)
	sum := sha256.Sum256([]byte(in))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestBearerTokens(t *testing.T) {
	h := newHarness(t)
	idpKey := h.idp.Mock.Keypair.PrivateKey
	kid, err := h.idp.Mock.Keypair.KeyID()
	if err != nil {
		t.Fatal(err)
	}
	attacker, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := h.clock.Now()
	claims := func(mod func(map[string]any)) map[string]any {
		c := map[string]any{
			"iss": h.idp.Issuer, "aud": []string{"other", "portcullis"}, "sub": "svc-backup",
			"email": "backup@example.test", "groups": []string{"robots"},
			"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
		}
		if mod != nil {
			mod(c)
		}
		return c
	}
	hdr := map[string]any{"alg": "RS256", "kid": kid, "typ": "JWT"}
	valid := signRS256(t, idpKey, hdr, claims(nil))

	pubDER, _ := x509.MarshalPKIXPublicKey(&idpKey.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hs := func(secret []byte) string {
		in := b64json(t, map[string]any{"alg": "HS256", "kid": kid, "typ": "JWT"}) + "." + b64json(t, claims(nil))
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(in))
		return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	jwk := map[string]any{
		"kty": "RSA", "kid": kid,
		"n": base64.RawURLEncoding.EncodeToString(attacker.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(attacker.E)).Bytes()),
	}
	parts := strings.Split(valid, ".")

	attacks := []struct{ name, token string }{
		{"alg none, no signature", b64json(t, map[string]any{"alg": "none"}) + "." + b64json(t, claims(nil)) + "."},
		{"alg none, with signature", b64json(t, map[string]any{"alg": "none", "kid": kid}) + "." + b64json(t, claims(nil)) + "." + parts[2]},
		{"HS256 keyed with the public key PEM", hs(pubPEM)},
		{"HS256 keyed with the public key DER", hs(pubDER)},
		{"embedded jwk header", signRS256(t, attacker, map[string]any{"alg": "RS256", "kid": kid, "jwk": jwk}, claims(nil))},
		{"embedded jwk without kid", signRS256(t, attacker, map[string]any{"alg": "RS256", "jwk": jwk}, claims(nil))},
		{"jku header", signRS256(t, attacker, map[string]any{"alg": "RS256", "kid": "x", "jku": "https://evil.test/jwks"}, claims(nil))},
		{"unknown kid", signRS256(t, attacker, map[string]any{"alg": "RS256", "kid": "no-such-key"}, claims(nil))},
		{"right kid, wrong key", signRS256(t, attacker, hdr, claims(nil))},
		{"wrong issuer", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["iss"] = "https://evil.test" }))},
		{"issuer with trailing slash", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["iss"] = h.idp.Issuer + "/" }))},
		{"no issuer", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { delete(c, "iss") }))},
		{"wrong audience", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["aud"] = "someone-else" }))},
		{"client id as audience", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["aud"] = h.idp.ClientID }))},
		{"no audience", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { delete(c, "aud") }))},
		{"expired", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["exp"] = now.Add(-time.Minute).Unix() }))},
		{"no expiry", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { delete(c, "exp") }))},
		{"not yet valid", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["nbf"] = now.Add(time.Hour).Unix() }))},
		{"no subject", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { delete(c, "sub") }))},
		{"payload swapped", parts[0] + "." + b64json(t, claims(func(c map[string]any) { c["sub"] = "root" })) + "." + parts[2]},
		{"signature flipped", parts[0] + "." + parts[1] + "." + flipLast(parts[2])},
		{"signature stripped", parts[0] + "." + parts[1] + "."},
		{"garbage", "garbage"},
		{"empty", ""},
		{"two parts", parts[0] + "." + parts[1]},
		{"four parts", valid + ".x"},
		{"bad base64 payload", parts[0] + ".!!!." + parts[2]},
		{"payload not json", parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte("[1,2")) + "." + parts[2]},
		{"bad base64 header", "%%%." + parts[1] + "." + parts[2]},
		{"JWE-shaped", "a.b.c.d.e"},
		{"oversized", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["pad"] = strings.Repeat("x", 17<<10) }))},
		// The browser sign-in's ID token (audience: the client_id, which a
		// configuration may also list as a bearer audience) is no API key.
		{"ID token: nonce, for the client", signRS256(t, idpKey, hdr, claims(func(c map[string]any) {
			c["aud"] = []string{h.idp.ClientID, "portcullis"}
			c["nonce"] = "n-0S6_WzA2Mj"
		}))},
		{"ID token: at_hash", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["at_hash"] = "77QmUPtjPfzWtF2AnpK9RQ" }))},
		{"ID token: c_hash", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["c_hash"] = "LDktKdoQak3Pk0cnXxCltA" }))},
		{"ID token: Keycloak typ", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["typ"] = "ID" }))},
		{"control character in the subject", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["sub"] = "svc\r\nX-Portcullis-User: root" }))},
		{"control character in the email", signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["email"] = "a@b.test\x00" }))},
	}
	for _, tc := range attacks {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "https://app.example.test/", nil)
			r.Header.Set("Authorization", "Bearer "+tc.token)
			id, err := h.a.Authenticate(httptest.NewRecorder(), r)
			if !errors.Is(err, ErrInvalidCredentials) || id != nil {
				t.Errorf("Authenticate = %+v, %v; want ErrInvalidCredentials", id, err)
			}
		})
	}

	t.Run("a nonce in an access token for an API is no ID token", func(t *testing.T) {
		tok := signRS256(t, idpKey, hdr, claims(func(c map[string]any) { c["nonce"] = "copied-by-the-provider" }))
		r := httptest.NewRequest(http.MethodGet, "https://app.example.test/", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		if id, err := h.a.Authenticate(httptest.NewRecorder(), r); err != nil || id.Sub != "svc-backup" {
			t.Errorf("Authenticate = %+v, %v; want svc-backup", id, err)
		}
	})

	t.Run("two Authorization headers", func(t *testing.T) {
		// Portcullis would check one and the upstream might believe the other.
		r := httptest.NewRequest(http.MethodGet, "https://app.example.test/", nil)
		r.Header.Add("Authorization", "Basic Zm9vOmJhcg==")
		r.Header.Add("Authorization", "Bearer "+valid)
		if id, err := h.a.Authenticate(httptest.NewRecorder(), r); !errors.Is(err, ErrInvalidCredentials) || id != nil {
			t.Errorf("Authenticate = %+v, %v; want ErrInvalidCredentials", id, err)
		}
	})

	t.Run("scheme without token", func(t *testing.T) {
		r := httptest.NewRequest(http.MethodGet, "https://app.example.test/", nil)
		r.Header.Set("Authorization", "Bearer")
		if id, err := h.a.Authenticate(httptest.NewRecorder(), r); !errors.Is(err, ErrInvalidCredentials) || id != nil {
			t.Errorf("Authenticate = %+v, %v; want ErrInvalidCredentials", id, err)
		}
	})

	t.Run("valid token", func(t *testing.T) {
		r := httptest.NewRequest(http.MethodGet, "https://app.example.test/", nil)
		r.Header.Set("Authorization", "bearer "+valid)
		id, err := h.a.Authenticate(httptest.NewRecorder(), r)
		if err != nil {
			t.Fatalf("Authenticate: %v", err)
		}
		if id.Sub != "svc-backup" || id.AuthMethod != MethodBearer || id.Provider != "corp" || id.Email != "backup@example.test" ||
			!slices.Equal(id.Groups, []string{"robots"}) || id.Claims["sub"] != "svc-backup" {
			t.Errorf("identity = %+v", id)
		}
		hdr := r.Header.Clone()
		hdr.Set("Cookie", "_portcullis=abc; theme=dark")
		h.a.StripCredentials(hdr)
		if hdr.Get("Authorization") != "" || hdr.Get("Cookie") != "theme=dark" {
			t.Errorf("after StripCredentials: Authorization %q Cookie %q", hdr.Get("Authorization"), hdr.Get("Cookie"))
		}
	})

	t.Run("invalid bearer never falls back to the session cookie", func(t *testing.T) {
		h.idp.QueueUser("alice", "alice@example.test", nil)
		h.login(h.client, h.url(appHost, "/"))
		resp := h.get(h.client, h.url(appHost, "/api"), "Authorization", "Bearer garbage")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("status = %d, want 401", resp.StatusCode)
		}
		resp = h.get(h.client, h.url(appHost, PathMe), "Authorization", "Bearer garbage")
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(readBody(resp), "invalid_credentials") {
			t.Errorf("/me with a bad bearer token = %d", resp.StatusCode)
		}
	})

	t.Run("unknown kids do not hammer the provider's JWKS", func(t *testing.T) {
		before := h.idp.JWKSRequests()
		for i := range 20 {
			tok := signRS256(t, attacker, map[string]any{"alg": "RS256", "kid": "k" + string(rune('a'+i))}, claims(nil))
			r := httptest.NewRequest(http.MethodGet, "https://app.example.test/", nil)
			r.Header.Set("Authorization", "Bearer "+tok)
			_, _ = h.a.Authenticate(httptest.NewRecorder(), r)
		}
		if got := h.idp.JWKSRequests() - before; got > 1 {
			t.Errorf("20 tokens with unknown kids caused %d JWKS fetches, want at most 1", got)
		}
	})
}

func flipLast(s string) string {
	b := []byte(s)
	if b[len(b)-2] == 'A' {
		b[len(b)-2] = 'B'
	} else {
		b[len(b)-2] = 'A'
	}
	return string(b)
}

func TestBearerDisabledIgnoresAuthorization(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.cfg.Bearer = BearerConfig{} })
	r := httptest.NewRequest(http.MethodGet, "https://app.example.test/", nil)
	r.Header.Set("Authorization", "Bearer garbage")
	if id, err := h.a.Authenticate(httptest.NewRecorder(), r); id != nil || err != nil {
		t.Errorf("Authenticate = %v, %v; want no credentials", id, err)
	}
	hdr := http.Header{"Authorization": {"Bearer garbage"}}
	h.a.StripCredentials(hdr)
	if hdr.Get("Authorization") == "" {
		t.Error("with bearer disabled the Authorization header is the upstream's and must be kept")
	}
}
