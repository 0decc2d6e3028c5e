package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// A request arriving while the first key fetch is still in flight waits for
// it instead of failing (a cold start or a rotation under concurrent load).
func TestRemoteKeysConcurrentFirstFetch(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk := jose.JSONWebKey{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}
	release := make(chan struct{})
	var once sync.Once
	started := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(started) })
		<-release
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk}})
	}))
	defer srv.Close()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign([]byte(`{"sub":"alice"}`))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := jws.CompactSerialize()

	k := &remoteKeys{url: srv.URL, client: srv.Client(), clock: newFakeClock()}
	errs := make(chan error, 2)
	go func() { _, err := k.VerifySignature(context.Background(), raw); errs <- err }()
	<-started // the first fetch is in flight
	go func() { _, err := k.VerifySignature(context.Background(), raw); errs <- err }()
	time.Sleep(50 * time.Millisecond)
	close(release)
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Errorf("verify %d: %v", i, err)
		}
	}
}

// TestRemoteKeysDropWithdrawnKey: a key the provider no longer publishes
// stops verifying within keyMaxAge, even though every token names it (so
// no unknown key id ever makes the set refetch); while the provider cannot
// be reached, the cached keys keep working.
func TestRemoteKeysDropWithdrawnKey(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub := func(k *ecdsa.PrivateKey, id string) jose.JSONWebKey {
		return jose.JSONWebKey{Key: &k.PublicKey, KeyID: id, Algorithm: "ES256", Use: "sig"}
	}
	var mu sync.Mutex
	published := []jose.JSONWebKey{pub(k1, "k1"), pub(k2, "k2")}
	down := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: published})
	}))
	defer srv.Close()
	sign := func(k *ecdsa.PrivateKey, id string) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: k, KeyID: id}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		jws, err := s.Sign([]byte(`{"sub":"alice"}`))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := jws.CompactSerialize()
		return raw
	}
	clock := newFakeClock()
	k := &remoteKeys{url: srv.URL, client: srv.Client(), clock: clock}
	ctx := context.Background()
	if _, err := k.VerifySignature(ctx, sign(k1, "k1")); err != nil {
		t.Fatalf("k1 before withdrawal: %v", err)
	}

	// The provider is down for a while: k1 keeps verifying.
	mu.Lock()
	down = true
	mu.Unlock()
	clock.Advance(keyMaxAge + time.Second)
	if _, err := k.VerifySignature(ctx, sign(k1, "k1")); err != nil {
		t.Errorf("k1 while the provider is unreachable: %v", err)
	}

	// Back, without k1.
	mu.Lock()
	down, published = false, []jose.JSONWebKey{pub(k2, "k2")}
	mu.Unlock()
	clock.Advance(keyRefetchInterval)
	if _, err := k.VerifySignature(ctx, sign(k1, "k1")); err == nil {
		t.Error("a withdrawn key still verifies after keyMaxAge")
	}
	if _, err := k.VerifySignature(ctx, sign(k2, "k2")); err != nil {
		t.Errorf("k2: %v", err)
	}
}
