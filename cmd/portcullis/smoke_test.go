package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/portcullis/portcullis/internal/idtest"
)

// baseConfig is a complete config for stack tests: self-signed TLS, a
// mockoidc provider, the repository's policies and a file audit sink.
// Callers append routes.
func baseConfig(idp *idtest.Provider) string {
	return `
data_dir: {{DATA}}
listen:
  https: "{{HTTPS}}"
  http: "{{HTTP}}"
  admin: "{{ADMIN}}"
tls:
  mode: self-signed
identity:
  external_url: https://auth.example.test:` + "{{HTTPS_PORT}}" + `
  providers:
    - name: corp
      issuer: ` + idp.Issuer + `
      client_id: ` + idp.ClientID + `
      client_secret: ` + idp.ClientSecret + `
  session:
    secrets: ["MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]
    cookie_domain: .example.test
policy:
  dir: ` + repoPolicies + `
audit:
  sink: file
  file:
    path: {{DATA}}/audit.jsonl
  mode: durable
`
}

const repoPolicies = "../../policies"

func TestStackServesPublicRouteAndAdmin(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello "+r.URL.Path)
	}))
	defer up.Close()
	idp := idtest.NewProvider(t)
	s := newStack(t, baseConfig(idp)+`
routes:
  - name: docs
    host: docs.example.test
    path: /
    upstream: `+up.URL+`
    policy: portcullis.routes.docs
    public: true
`)
	s.Start(appOptions{})
	resp, err := s.Client().Get(s.URL("docs.example.test", "/a"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("%d %s", resp.StatusCode, b)
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get("http://" + s.Admin + p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d %s", p, resp.StatusCode, b)
		}
		if p == "/metrics" && !strings.Contains(string(b), "portcullis_") {
			t.Errorf("metrics without portcullis_ series")
		}
	}
}
