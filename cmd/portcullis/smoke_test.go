package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/portcullis/portcullis/internal/idtest"
)

// stackConfig describes the config of a stack test; YAML renders it. The
// zero value (with an IDP) is a complete config: self-signed TLS, the
// mockoidc provider, the repository's policies, a durable file audit sink.
// Callers append a routes section.
type stackConfig struct {
	IDP *idtest.Provider
	// PolicyDir defaults to the repository's policies.
	PolicyDir string
	// DecisionTimeout, when set, overrides policy.decision_timeout.
	DecisionTimeout string
	// Bearer enables bearer tokens for audience portcullis.
	Bearer bool
	// TrustedProxies is listen.trusted_proxies as a YAML flow list.
	TrustedProxies string
	// ExternalHost is external_url's host (default auth.example.test).
	ExternalHost string
	// NoAccessLog turns the access log off.
	NoAccessLog bool
	// Audit is the audit section's body, indented by two spaces (default:
	// durable, to {{DATA}}/audit.jsonl).
	Audit string
}

func (c stackConfig) YAML() string {
	var b strings.Builder
	b.WriteString("\ndata_dir: {{DATA}}\nlisten:\n  https: \"{{HTTPS}}\"\n  http: \"{{HTTP}}\"\n  admin: \"{{ADMIN}}\"\n")
	if c.TrustedProxies != "" {
		b.WriteString("  trusted_proxies: " + c.TrustedProxies + "\n")
	}
	host := c.ExternalHost
	if host == "" {
		host = "auth.example.test"
	}
	b.WriteString("tls:\n  mode: self-signed\nidentity:\n  external_url: https://" + host + ":{{HTTPS_PORT}}\n")
	b.WriteString("  providers:\n    - name: corp\n      issuer: " + c.IDP.Issuer +
		"\n      client_id: " + c.IDP.ClientID + "\n      client_secret: " + c.IDP.ClientSecret + "\n")
	b.WriteString("  session:\n    secrets: [\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"]\n    cookie_domain: .example.test\n")
	if c.Bearer {
		b.WriteString("  bearer:\n    enabled: true\n    audiences: [portcullis]\n")
	}
	dir := c.PolicyDir
	if dir == "" {
		dir = repoPolicies
	}
	b.WriteString("policy:\n  dir: " + dir + "\n")
	if c.DecisionTimeout != "" {
		b.WriteString("  decision_timeout: " + c.DecisionTimeout + "\n")
	}
	if c.NoAccessLog {
		b.WriteString("log:\n  access_log: false\n")
	}
	audit := c.Audit
	if audit == "" {
		audit = "  sink: file\n  file:\n    path: {{DATA}}/audit.jsonl\n  mode: durable\n"
	}
	b.WriteString("audit:\n" + audit)
	if !strings.HasSuffix(audit, "\n") {
		b.WriteString("\n")
	}
	return b.String()
}

// baseConfig is stackConfig's default for idp.
func baseConfig(idp *idtest.Provider) string { return stackConfig{IDP: idp}.YAML() }

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
