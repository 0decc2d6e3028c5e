package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// verifyAssertionIndependently checks an assertion with crypto/ecdsa alone:
// the JWKS is fetched over HTTP and parsed by hand, the kid is recomputed
// as the RFC 7638 thumbprint, and the ES256 signature (r||s) is verified
// with ecdsa.Verify — no JOSE library on this path.
func verifyAssertionIndependently(t *testing.T, c *http.Client, jwksURL, token string) map[string]any {
	t.Helper()
	resp, err := c.Get(jwksURL)
	if err != nil {
		t.Fatalf("GET jwks: %v", err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, "json") {
		t.Errorf("jwks content type %q", ct)
	}
	raw, _ := io.ReadAll(resp.Body)
	var set struct {
		Keys []struct{ Kty, Crv, X, Y, Kid, Alg, Use string }
	}
	if err := json.Unmarshal(raw, &set); err != nil {
		t.Fatalf("jwks: %v: %s", err, raw)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("assertion has %d parts", len(parts))
	}
	var hdr struct{ Alg, Kid, Typ string }
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	if err := json.Unmarshal(hb, &hdr); err != nil || hdr.Alg != "ES256" || hdr.Kid == "" {
		t.Fatalf("assertion header %s", hb)
	}
	for _, k := range set.Keys {
		if k.Kid != hdr.Kid {
			continue
		}
		if k.Kty != "EC" || k.Crv != "P-256" {
			t.Fatalf("key %+v is not EC P-256", k)
		}
		thumb := sha256.Sum256([]byte(`{"crv":"P-256","kty":"EC","x":"` + k.X + `","y":"` + k.Y + `"}`))
		if got := base64.RawURLEncoding.EncodeToString(thumb[:]); got != k.Kid {
			t.Errorf("kid %q is not the RFC 7638 thumbprint %q", k.Kid, got)
		}
		xb, _ := base64.RawURLEncoding.DecodeString(k.X)
		yb, _ := base64.RawURLEncoding.DecodeString(k.Y)
		pub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(xb), Y: new(big.Int).SetBytes(yb)}
		sig, err := base64.RawURLEncoding.DecodeString(parts[2])
		if err != nil || len(sig) != 64 {
			t.Fatalf("signature is not 64 bytes of r||s")
		}
		digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			t.Fatal("assertion signature does not verify with the served JWKS")
		}
		pb, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var claims map[string]any
		if err := json.Unmarshal(pb, &claims); err != nil {
			t.Fatalf("claims: %v", err)
		}
		return claims
	}
	t.Fatalf("kid %q not in the JWKS %s", hdr.Kid, raw)
	return nil
}

func newTestAuthenticator(t testing.TB, clock Clock, keyFile string) *Authenticator {
	t.Helper()
	cfg := Config{ExternalURL: "https://auth.example.test", Session: SessionConfig{Secrets: []string{testSecret}}}
	acfg := AssertionConfig{SigningKeyFile: keyFile}
	cfg.SetDefaults("")
	acfg.SetDefaults("")
	a, err := New(context.Background(), cfg, acfg, Options{Clock: clock})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

func TestAssertionClaimsAndKeyFile(t *testing.T) {
	keyFile := tempKeyFile(t)
	clock := newFakeClock()
	a := newTestAuthenticator(t, clock, keyFile)

	st, err := os.Stat(keyFile)
	if err != nil {
		t.Fatalf("key file not created: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %o, want 600", st.Mode().Perm())
	}
	if dst, _ := os.Stat(filepath.Dir(keyFile)); dst.Mode().Perm() != 0o700 {
		t.Errorf("key dir mode %o, want 700", dst.Mode().Perm())
	}

	id := &Identity{Authenticated: true, Sub: "alice", Email: "alice@example.test", Groups: []string{"a", "b"}}
	tok, err := a.Assertion(id, AssertionRequest{Route: "admin", Audience: "http://127.0.0.1:9000", RequestID: "req-42",
		Method: "POST", URL: "http://127.0.0.1:9000/reports/q%2F3"})
	if err != nil {
		t.Fatal(err)
	}
	srv := newJWKSServer(t, a)
	claims := verifyAssertionIndependently(t, srv.Client(), srv.URL+PathJWKS, tok)
	want := map[string]any{
		"iss": "https://auth.example.test", "aud": "http://127.0.0.1:9000", "sub": "alice", "email": "alice@example.test",
		"route": "admin", "jti": "req-42", "iat": float64(clock.Now().Unix()), "exp": float64(clock.Now().Add(60 * time.Second).Unix()),
		"htm": "POST", "htu": "http://127.0.0.1:9000/reports/q%2F3",
	}
	for k, v := range want {
		if claims[k] != v {
			t.Errorf("claim %s = %v, want %v", k, claims[k], v)
		}
	}
	if g, _ := claims["groups"].([]any); len(g) != 2 || g[0] != "a" || g[1] != "b" {
		t.Errorf("groups = %v", claims["groups"])
	}
	if _, err := a.Assertion(nil, AssertionRequest{Route: "r", Audience: "aud", RequestID: "id"}); err == nil {
		t.Error("Assertion(nil) succeeded")
	}

	// Restarting reuses the key; a rotation keeps the previous key listed.
	b := newTestAuthenticator(t, clock, keyFile)
	if a.KeyID() != b.KeyID() {
		t.Errorf("key changed across restarts: %s -> %s", a.KeyID(), b.KeyID())
	}
	if err := os.Rename(keyFile, keyFile+".previous"); err != nil {
		t.Fatal(err)
	}
	c := newTestAuthenticator(t, clock, keyFile)
	if c.KeyID() == a.KeyID() {
		t.Fatal("rotation did not create a new key")
	}
	var set struct{ Keys []struct{ Kid string } }
	_ = json.Unmarshal(c.JWKS(), &set)
	if len(set.Keys) != 2 || set.Keys[0].Kid != c.KeyID() || set.Keys[1].Kid != a.KeyID() {
		t.Errorf("JWKS after rotation = %s, want the new then the previous key", c.JWKS())
	}
	// An assertion signed just before the rotation still verifies.
	srv2 := newJWKSServer(t, c)
	verifyAssertionIndependently(t, srv2.Client(), srv2.URL+PathJWKS, tok)
}

func TestAssertionKeyFileErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{ExternalURL: "https://auth.example.test"}
	cfg.SetDefaults("")
	if _, err := New(context.Background(), cfg, AssertionConfig{SigningKeyFile: bad, Lifetime: time.Minute}, Options{}); err == nil {
		t.Error("New accepted a key file without a key")
	}
}

func newJWKSServer(t *testing.T, a *Authenticator) *httpTestServer {
	return startTLS(t, a.Handler())
}

func BenchmarkAssertion(b *testing.B) {
	a := newTestAuthenticator(b, wallClock{}, tempKeyFileB(b))
	id := &Identity{Authenticated: true, Sub: "alice", Email: "alice@example.test", Groups: []string{"engineering", "admins"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Assertion(id, AssertionRequest{Route: "admin", Audience: "https://upstream.example.test", RequestID: "01JD0000000000000000000000"}); err != nil {
			b.Fatal(err)
		}
	}
}

func tempKeyFileB(b *testing.B) string { return filepath.Join(b.TempDir(), "assertion.pem") }
