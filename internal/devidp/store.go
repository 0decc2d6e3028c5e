package devidp

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"time"
)

// maxEntries bounds each in-memory table, so that a flood of abandoned
// sign-in forms cannot grow the process without limit.
const maxEntries = 10000

var errFull = errors.New("devidp: too many pending entries, try again later")

// authRequest is a validated authorization request waiting for the person to
// fill in the sign-in form.
type authRequest struct {
	clientID, redirectURI, state, nonce, scope, challenge string
	csrf                                                  string // per-form token, echoed by the form
	binding                                               string // value of the browser-binding cookie that loaded the form
	failures                                              int
	expires                                               time.Time
}

// grant is what a code or refresh token stands for.
type grant struct {
	clientID string
	subject  string
	scope    string
	nonce    string
	authTime time.Time
}

type codeEntry struct {
	grant
	redirectURI string
	challenge   string
	used        bool
	family      string // refresh-token family issued from this code
	expires     time.Time
}

type refreshEntry struct {
	grant
	family  string
	expires time.Time
}

type rotatedEntry struct {
	family  string
	expires time.Time
}

type sessionEntry struct {
	subject  string
	authTime time.Time
	expires  time.Time
}

// store holds the provider's short-lived state. Keys of codes, tokens and
// sessions are SHA-256 digests of the secret values, so the maps never hold
// a usable credential. The Provider's mutex guards it.
type store struct {
	forms    map[string]*authRequest
	codes    map[string]*codeEntry
	refresh  map[string]*refreshEntry
	rotated  map[string]rotatedEntry
	sessions map[string]*sessionEntry
}

func newStore() store {
	return store{
		forms:    map[string]*authRequest{},
		codes:    map[string]*codeEntry{},
		refresh:  map[string]*refreshEntry{},
		rotated:  map[string]rotatedEntry{},
		sessions: map[string]*sessionEntry{},
	}
}

// sweep drops expired entries; the tables are small, so a full pass on every
// write is cheaper than bookkeeping.
func (s *store) sweep(now time.Time) {
	for k, v := range s.forms {
		if !now.Before(v.expires) {
			delete(s.forms, k)
		}
	}
	for k, v := range s.codes {
		if !now.Before(v.expires) {
			delete(s.codes, k)
		}
	}
	for k, v := range s.refresh {
		if !now.Before(v.expires) {
			delete(s.refresh, k)
		}
	}
	for k, v := range s.rotated {
		if !now.Before(v.expires) {
			delete(s.rotated, k)
		}
	}
	for k, v := range s.sessions {
		if !now.Before(v.expires) {
			delete(s.sessions, k)
		}
	}
}

// revokeFamily ends every refresh token descended from one code exchange:
// the answer to a replayed code or a replayed, already rotated refresh token.
func (s *store) revokeFamily(family string) {
	if family == "" {
		return
	}
	for k, v := range s.refresh {
		if v.family == family {
			delete(s.refresh, k)
		}
	}
}

// randomToken returns 32 random bytes, base64url-encoded.
func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never returns an error
	return base64.RawURLEncoding.EncodeToString(b)
}

// digest is the map key for a secret value.
func digest(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return string(h[:])
}

func jsonMarshal(v any) ([]byte, error) {
	return json.Marshal(v)
}
