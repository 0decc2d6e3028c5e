package demoapp

import (
	"crypto/rand"
	"encoding/base64"
)

// randomToken returns 18 random bytes, base64url-encoded: a CSP nonce.
func randomToken() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b) // crypto/rand.Read never returns an error
	return base64.RawURLEncoding.EncodeToString(b)
}
