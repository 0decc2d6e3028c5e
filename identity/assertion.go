package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// assertionSigner signs X-Portcullis-Assertion JWTs (SPEC §4) with an ES256
// key and publishes the JWKS that verifies them.
type assertionSigner struct {
	issuer   string
	lifetime time.Duration
	clock    Clock
	kid      string
	key      *ecdsa.PrivateKey
	// header is the encoded JOSE header every assertion carries:
	// {"alg":"ES256","kid":kid,"typ":"JWT"}, base64url.
	header string
	jwks   []byte
}

// assertionClaims are exactly the claims of SPEC §4.
type assertionClaims struct {
	Iss    string   `json:"iss"`
	Aud    string   `json:"aud"`
	Sub    string   `json:"sub"`
	Email  string   `json:"email,omitempty"`
	Groups []string `json:"groups"`
	Route  string   `json:"route"`
	Iat    int64    `json:"iat"`
	Exp    int64    `json:"exp"`
	Jti    string   `json:"jti"`
	Htm    string   `json:"htm,omitempty"`
	Htu    string   `json:"htu,omitempty"`
}

func newAssertionSigner(cfg AssertionConfig, issuer string, clock Clock) (*assertionSigner, error) {
	key, err := loadOrCreateKey(cfg.SigningKeyFile)
	if err != nil {
		return nil, err
	}
	pub := jose.JSONWebKey{Key: &key.PublicKey, Algorithm: string(jose.ES256), Use: "sig"}
	kid, err := thumbprint(pub)
	if err != nil {
		return nil, err
	}
	pub.KeyID = kid
	keys := []jose.JSONWebKey{pub}

	// A previous key, kept during rotation, is published but never signs.
	if prev, err := readKey(cfg.SigningKeyFile + ".previous"); err == nil {
		pk := jose.JSONWebKey{Key: &prev.PublicKey, Algorithm: string(jose.ES256), Use: "sig"}
		if pk.KeyID, err = thumbprint(pk); err != nil {
			return nil, err
		}
		if pk.KeyID != kid {
			keys = append(keys, pk)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("identity: assertion.signing_key_file previous key: %w", err)
	}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		return nil, fmt.Errorf("identity: jwks: %w", err)
	}
	header, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{string(jose.ES256), kid, "JWT"})
	if err != nil {
		return nil, fmt.Errorf("identity: assertion header: %w", err)
	}
	return &assertionSigner{issuer: issuer, lifetime: cfg.Lifetime, clock: clock, kid: kid, key: key,
		header: base64.RawURLEncoding.EncodeToString(header), jwks: jwks}, nil
}

// thumbprint is the RFC 7638 SHA-256 thumbprint, base64url without padding.
func thumbprint(k jose.JSONWebKey) (string, error) {
	tp, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("identity: key thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

func (s *assertionSigner) sign(id *Identity, req AssertionRequest) (string, error) {
	now := s.clock.Now()
	groups := id.Groups
	if groups == nil {
		groups = []string{}
	}
	payload, err := json.Marshal(assertionClaims{
		Iss: s.issuer, Aud: req.Audience, Sub: id.Sub, Email: id.Email, Groups: groups, Route: req.Route,
		Iat: now.Unix(), Exp: now.Add(s.lifetime).Unix(), Jti: req.RequestID, Htm: req.Method, Htu: req.URL,
	})
	if err != nil {
		return "", fmt.Errorf("identity: assertion claims: %w", err)
	}
	// The JWS compact serialization (RFC 7515 §7.1) with an ES256
	// signature (RFC 7518 §3.4: R and S as 32-byte big-endian integers),
	// built directly: one per request, and the header never changes.
	enc := base64.RawURLEncoding
	out := make([]byte, 0, len(s.header)+1+enc.EncodedLen(len(payload))+1+enc.EncodedLen(64))
	out = append(out, s.header...)
	out = append(out, '.')
	out = enc.AppendEncode(out, payload)
	digest := sha256.Sum256(out)
	r, sv, err := ecdsa.Sign(rand.Reader, s.key, digest[:])
	if err != nil {
		return "", fmt.Errorf("identity: signing assertion: %w", err)
	}
	var sig [64]byte
	r.FillBytes(sig[:32])
	sv.FillBytes(sig[32:])
	out = append(out, '.')
	out = enc.AppendEncode(out, sig[:])
	return string(out), nil
}

// loadOrCreateKey reads the P-256 key at path, creating it (0600, parent
// directories 0700) when the file does not exist. Creation is exclusive, so
// two processes starting together end up with the same key.
func loadOrCreateKey(path string) (*ecdsa.PrivateKey, error) {
	key, err := readKey(path)
	if err == nil {
		return key, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("identity: assertion.signing_key_file: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("identity: assertion.signing_key_file: %w", err)
	}
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: generating assertion key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("identity: encoding assertion key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return readKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: assertion.signing_key_file: %w", err)
	}
	werr := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("identity: writing %s: %w", path, err)
	}
	return key, nil
}

// readKey parses a PEM EC P-256 private key (PKCS#8 or SEC 1).
func readKey(path string) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("%s: no EC private key in PEM", path)
		}
		var key any
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		ec, ok := key.(*ecdsa.PrivateKey)
		if !ok || ec.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%s: the key must be ECDSA P-256 (ES256)", path)
		}
		return ec, nil
	}
}
