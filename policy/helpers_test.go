package policy

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// shippedDir is the policies/ library at the repository root.
const shippedDir = "../policies"

// fixedClock is a Clock that always tells the same time.
type fixedClock struct{ t time.Time }

func (c fixedClock) Now() time.Time { return c.t }

// Thursday 2026-11-26, 09:00 UTC (10:00 in Berlin).
var thursdayMorning = time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC)

type userSpec struct {
	sub    string
	email  string
	groups []string
	amr    []any
}

func user(u userSpec) UserInput {
	if u.sub == "" {
		return UserInput{}
	}
	email := u.email
	if email == "" {
		email = u.sub + "@example.com"
	}
	claims := map[string]any{"sub": u.sub}
	if u.amr != nil {
		claims["amr"] = u.amr
	}
	return UserInput{
		Authenticated: true, Sub: u.sub, Email: email, EmailVerified: true, Groups: u.groups,
		Issuer: "https://idp.example.com", Provider: "corp", AuthMethod: "session", Claims: claims,
	}
}

var (
	alice = userSpec{sub: "alice", groups: []string{"engineering"}}
	bob   = userSpec{sub: "bob", groups: []string{"engineering", "admins"}}
	anon  = userSpec{}
)

func request(method, path string) RequestInput {
	return RequestInput{
		ID: "req-1", Method: method, Scheme: "https", Host: "demo.localhost", Path: path,
		Query:      map[string][]string{"q": {"1"}},
		Headers:    map[string][]string{"user-agent": {"test/1.0"}, "accept": {"text/html"}},
		RemoteAddr: "192.0.2.10", Time: thursdayMorning,
	}
}

func input(u userSpec, method, path string) *Input {
	return &Input{
		Request: request(method, path),
		User:    user(u),
		Route:   RouteInput{Name: "demo", Host: "demo.localhost", Path: "/", Upstream: "http://127.0.0.1:9000"},
	}
}

// writeFiles creates dir/name with content for every entry.
func writeFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// testTimeout is the decision timeout of tests that are not about
// timeouts: far above any decision, so that a loaded machine running the
// race detector does not turn a slow decision into a timeout.
const testTimeout = 10 * time.Second

func mustLoad(t testing.TB, dir string, opts LoadOptions) *Set {
	t.Helper()
	if opts.DecisionTimeout == 0 {
		opts.DecisionTimeout = testTimeout
	}
	s, err := Load(context.Background(), dir, opts)
	if err != nil {
		t.Fatalf("Load(%s): %v", dir, err)
	}
	return s
}
