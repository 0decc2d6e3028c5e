package certs

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestHTTPHandlerRedirects(t *testing.T) {
	newManager := func(t *testing.T, opts Options) *Manager {
		t.Helper()
		m, err := New(t.Context(), Config{Mode: ModeSelfSigned}, t.TempDir(), opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		if err := m.SetHosts(t.Context(), []string{"app.example.test", "*.apps.example.test", "auth.example.test"}); err != nil {
			t.Fatal(err)
		}
		return m
	}
	on8443 := newManager(t, Options{HTTPSAddr: ":8443", HTTPAddr: ":8080"})
	on443 := newManager(t, Options{HTTPSAddr: "0.0.0.0:443"})
	forwarded := newManager(t, Options{HTTPSAddr: ":8443", RedirectPort: 443})

	tests := []struct {
		name     string
		m        *Manager
		method   string
		target   string // request-target as sent on the wire
		host     string
		wantCode int
		wantLoc  string
	}{
		{name: "plain", m: on8443, target: "/", host: "app.example.test", wantCode: 308, wantLoc: "https://app.example.test:8443/"},
		{name: "path and query", m: on8443, target: "/a/b?x=1&y=%2F", host: "app.example.test", wantCode: 308, wantLoc: "https://app.example.test:8443/a/b?x=1&y=%2F"},
		{name: "host with port", m: on8443, target: "/x", host: "app.example.test:8080", wantCode: 308, wantLoc: "https://app.example.test:8443/x"},
		{name: "host case and dot", m: on8443, target: "/x", host: "APP.Example.TEST.", wantCode: 308, wantLoc: "https://app.example.test:8443/x"},
		{name: "wildcard host", m: on8443, target: "/", host: "one.apps.example.test", wantCode: 308, wantLoc: "https://one.apps.example.test:8443/"},
		{name: "POST keeps method via 308", m: on8443, method: "POST", target: "/submit", host: "auth.example.test", wantCode: 308, wantLoc: "https://auth.example.test:8443/submit"},
		{name: "port 443 omitted", m: on443, target: "/p", host: "app.example.test", wantCode: 308, wantLoc: "https://app.example.test/p"},
		{name: "redirect port overrides", m: forwarded, target: "/p", host: "app.example.test", wantCode: 308, wantLoc: "https://app.example.test/p"},
		{name: "double slash stays on host", m: on8443, target: "//evil.com/x", host: "app.example.test", wantCode: 308, wantLoc: "https://app.example.test:8443//evil.com/x"},
		{name: "encoded slashes stay on host", m: on8443, target: "/%2F%2Fevil.com", host: "app.example.test", wantCode: 308, wantLoc: "https://app.example.test:8443/%2F%2Fevil.com"},
		{name: "backslash stays on host", m: on8443, target: "/%5Cevil.com", host: "app.example.test", wantCode: 308, wantLoc: "https://app.example.test:8443/%5Cevil.com"},
		{name: "challenge path redirects outside acme", m: on8443, target: "/.well-known/acme-challenge/abc", host: "app.example.test", wantCode: 308, wantLoc: "https://app.example.test:8443/.well-known/acme-challenge/abc"},
		{name: "attacker host", m: on8443, target: "/", host: "evil.com", wantCode: 421},
		{name: "suffix of a route host", m: on8443, target: "/", host: "example.test", wantCode: 421},
		{name: "route host as a suffix", m: on8443, target: "/", host: "app.example.test.evil.com", wantCode: 421},
		{name: "wildcard two labels deep", m: on8443, target: "/", host: "a.b.apps.example.test", wantCode: 421},
		{name: "wildcard base", m: on8443, target: "/", host: "apps.example.test", wantCode: 421},
		{name: "userinfo trick", m: on8443, target: "/", host: "app.example.test@evil.com", wantCode: 400},
		{name: "path in host", m: on8443, target: "/", host: "evil.com/app.example.test", wantCode: 400},
		{name: "bad port", m: on8443, target: "/", host: "app.example.test:http", wantCode: 400},
		{name: "empty host", m: on8443, target: "/", host: "", wantCode: 400},
		{name: "IP literal", m: on8443, target: "/", host: "127.0.0.1", wantCode: 421},
		{name: "absolute-form target to another host", m: on8443, target: "http://evil.com/x", host: "evil.com", wantCode: 421},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			r := httptest.NewRequest(method, tc.target, nil)
			r.Host = tc.host
			w := httptest.NewRecorder()
			tc.m.HTTPHandler(nil).ServeHTTP(w, r)
			if w.Code != tc.wantCode {
				t.Fatalf("status = %d, want %d (Location %q)", w.Code, tc.wantCode, w.Header().Get("Location"))
			}
			if got := w.Header().Get("Location"); got != tc.wantLoc {
				t.Errorf("Location = %q, want %q", got, tc.wantLoc)
			}
		})
	}

	t.Run("unknown host goes to next", func(t *testing.T) {
		next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
		r := httptest.NewRequest(http.MethodGet, "/healthz", nil)
		r.Host = "10.0.0.7"
		w := httptest.NewRecorder()
		on8443.HTTPHandler(next).ServeHTTP(w, r)
		if w.Code != http.StatusTeapot {
			t.Errorf("status = %d, want next's 418", w.Code)
		}
	})
}
