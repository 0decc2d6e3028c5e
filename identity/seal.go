package identity

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// sealer encrypts and authenticates small values (cookies, login state,
// hand-over codes) with AES-256-GCM. The first key seals; every key opens,
// which is what makes session.secrets rotatable.
//
// Format (base64url, unpadded): version byte 1 | key id byte | 12-byte nonce
// | GCM(ciphertext of 8-byte big-endian expiry in Unix seconds | payload).
// The additional data binds a value to its purpose ("session" plus cookie
// name, "login" plus state, ...), so a value sealed for one use never opens
// for another.
type sealer struct {
	keys []sealKey
}

type sealKey struct {
	id   byte
	aead cipher.AEAD
}

const (
	sealVersion   = 1
	sealOverhead  = 2 + 12 + 16 + 8
	maxSealedText = 16 << 10
)

var (
	errSealMalformed = errors.New("identity: sealed value is malformed")
	errSealForeign   = errors.New("identity: sealed value does not open with any configured secret")
	errSealExpired   = errors.New("identity: sealed value has expired")
)

func newSealer(secrets [][]byte) (*sealer, error) {
	s := &sealer{}
	for i, sec := range secrets {
		key, err := hkdf.Key(sha256.New, sec, nil, "portcullis session cookie v1", 32)
		if err != nil {
			return nil, fmt.Errorf("identity: deriving key from secret %d: %w", i, err)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, fmt.Errorf("identity: secret %d: %w", i, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("identity: secret %d: %w", i, err)
		}
		sum := sha256.Sum256(key)
		s.keys = append(s.keys, sealKey{id: sum[0], aead: aead})
	}
	return s, nil
}

func (s *sealer) usable() bool { return s != nil && len(s.keys) > 0 }

// seal encrypts payload for purpose, valid until exp.
func (s *sealer) seal(purpose string, exp time.Time, payload []byte) (string, error) {
	if !s.usable() {
		return "", errors.New("identity: no session secret configured")
	}
	k := s.keys[0]
	buf := make([]byte, 2+12, sealOverhead+len(payload))
	buf[0], buf[1] = sealVersion, k.id
	if _, err := rand.Read(buf[2:14]); err != nil {
		return "", fmt.Errorf("identity: nonce: %w", err)
	}
	plain := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint64(plain, uint64(exp.Unix()))
	copy(plain[8:], payload)
	out := k.aead.Seal(buf, buf[2:14], plain, []byte(purpose))
	return base64.RawURLEncoding.EncodeToString(out), nil
}

// open authenticates and decrypts a value sealed for purpose, refusing it
// once now is past its expiry.
func (s *sealer) open(purpose string, now time.Time, value string) ([]byte, error) {
	if !s.usable() || len(value) > maxSealedText {
		return nil, errSealMalformed
	}
	raw, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(raw) < sealOverhead || raw[0] != sealVersion {
		return nil, errSealMalformed
	}
	for _, k := range s.keys {
		if k.id != raw[1] {
			continue
		}
		plain, err := k.aead.Open(nil, raw[2:14], raw[14:], []byte(purpose))
		if err != nil || len(plain) < 8 {
			continue
		}
		exp := int64(binary.BigEndian.Uint64(plain))
		if now.Unix() >= exp {
			return nil, errSealExpired
		}
		return plain[8:], nil
	}
	return nil, errSealForeign
}
