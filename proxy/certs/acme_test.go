package certs

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewACMEErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "roots.txt")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := ACMEConfig{Email: "ops@example.com", CA: "https://ca.example.test/dir", Storage: filepath.Join(dir, "certs")}
	tests := []struct {
		name    string
		mutate  func(*ACMEConfig, *Options)
		wantErr string
	}{
		{name: "missing trusted roots", mutate: func(a *ACMEConfig, _ *Options) { a.TrustedRoots = filepath.Join(dir, "none.pem") }, wantErr: "trusted_roots"},
		{name: "trusted roots not PEM", mutate: func(a *ACMEConfig, _ *Options) { a.TrustedRoots = notPEM }, wantErr: "holds no PEM certificate"},
		{name: "http-01 only without listen.http", mutate: func(a *ACMEConfig, o *Options) { a.Challenges = []string{ChallengeHTTP01}; o.HTTPAddr = "" }, wantErr: "needs listen.http"},
		{name: "bad listen.http", mutate: func(_ *ACMEConfig, o *Options) { o.HTTPAddr = "nonsense" }, wantErr: "listen.http"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ac := base
			opts := Options{HTTPAddr: "127.0.0.1:18080", HTTPSAddr: "127.0.0.1:18443"}
			tc.mutate(&ac, &opts)
			m, err := New(t.Context(), Config{Mode: ModeACME, ACME: ac}, dir, opts)
			if err == nil {
				m.Close()
				t.Fatalf("New succeeded, want an error containing %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// In acme mode the HTTP listener still redirects everything that is not an
// active challenge; an unknown challenge token is not answered from storage
// or by echoing it.
func TestACMEHTTPHandlerWithoutChallenge(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Mode: ModeACME, ACME: ACMEConfig{Email: "ops@example.com", CA: "https://ca.example.test/dir", Storage: filepath.Join(dir, "certs")}}
	// Nothing listens on these ports, so no ACME work starts.
	m, err := New(t.Context(), cfg, dir, Options{HTTPAddr: "127.0.0.1:1", HTTPSAddr: "127.0.0.1:2"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.SetHosts(t.Context(), []string{"app.example.test"}); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/", "/.well-known/acme-challenge/dG9rZW4"} {
		r := httptest.NewRequest(http.MethodGet, target, nil)
		r.Host = "app.example.test"
		w := httptest.NewRecorder()
		m.HTTPHandler(nil).ServeHTTP(w, r)
		if want := "https://app.example.test:2" + target; w.Code != http.StatusPermanentRedirect || w.Header().Get("Location") != want {
			t.Errorf("%s: got %d %q, want 308 %q", target, w.Code, w.Header().Get("Location"), want)
		}
	}
	if got := m.TLSConfig().NextProtos; len(got) != 3 || got[2] != "acme-tls/1" {
		t.Errorf("NextProtos = %v, want h2, http/1.1, acme-tls/1", got)
	}
}
