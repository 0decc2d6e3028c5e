package identity

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/portcullis/portcullis/internal/confkit"
	"go.yaml.in/yaml/v3"
)

func TestConfigDefaults(t *testing.T) {
	var doc struct {
		Identity  Config          `yaml:"identity"`
		Assertion AssertionConfig `yaml:"assertion"`
	}
	src := `
identity:
  external_url: https://auth.example.com/
  providers:
    - name: corp
      issuer: https://idp.example.com
      client_id: portcullis
      client_secret: s3cret
  session:
    secrets: ["` + testSecret + `"]
`
	var p confkit.Problems
	if err := confkit.DecodeStrict([]byte(src), &doc, &p, func(string) (string, bool) { return "", false }); err != nil || p.Len() != 0 {
		t.Fatalf("decode: %v %v", err, p.List())
	}
	doc.Identity.SetDefaults("/var/lib/portcullis")
	doc.Assertion.SetDefaults("/var/lib/portcullis")
	doc.Identity.Validate(&p, "identity")
	doc.Assertion.Validate(&p, "assertion")
	if p.Len() != 0 {
		t.Fatalf("problems: %v", p.List())
	}
	c, a := doc.Identity, doc.Assertion
	pr := c.Providers[0]
	checks := []struct {
		name      string
		got, want any
	}{
		{"scopes", strings.Join(pr.Scopes, " "), "openid email profile"},
		{"groups_claim", pr.GroupsClaim, "groups"},
		{"cookie_name", c.Session.CookieName, "_portcullis"},
		{"lifetime", c.Session.Lifetime, 12 * time.Hour},
		{"bearer.enabled", c.Bearer.Enabled, false},
		{"signing_key_file", a.SigningKeyFile, "/var/lib/portcullis/assertion.pem"},
		{"assertion lifetime", a.Lifetime, 60 * time.Second},
		{"external_url parsed", c.external.String(), "https://auth.example.com"},
		{"secret decoded", len(c.Session.keys), 1},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	if _, err := yaml.Marshal(doc); err != nil {
		t.Errorf("config does not marshal: %v", err)
	}
}

func TestConfigValidateReportsEveryProblemAtItsPath(t *testing.T) {
	short := base64.StdEncoding.EncodeToString([]byte("sixteen-bytes-16"))
	c := Config{
		ExternalURL: "http://auth.example.com",
		Providers: []ProviderConfig{
			{Name: "corp", Issuer: "http://idp.example.com", ClientID: "x", ClientSecret: "y", Scopes: []string{"email"}},
			{Name: "corp", Issuer: "", ClientID: "", ClientSecret: ""},
			{Name: "bad name!", Issuer: "http://127.0.0.1:5556/dex", ClientID: "x", ClientSecret: "y"},
			{Name: "corp-b", Issuer: "http://127.0.0.1:5556/dex", ClientID: "z", ClientSecret: "y"},
		},
		Session: SessionConfig{CookieName: "bad;name", CookieDomain: "com", Secrets: []string{testSecret, short, "***"}, Lifetime: -time.Hour},
		Bearer:  BearerConfig{Enabled: true},
	}
	c.SetDefaults("")
	c.Session.CookieName = "bad;name"
	c.Session.Lifetime = -time.Hour
	var p confkit.Problems
	c.Validate(&p, "identity")
	got := map[string]string{}
	for _, pr := range p.List() {
		got[pr.Path] = pr.Message
	}
	want := map[string]string{
		"identity.external_url":               "scheme",
		"identity.providers[0].issuer":        "https",
		"identity.providers[0].scopes":        "openid",
		"identity.providers[1].name":          "already used",
		"identity.providers[1].issuer":        "required",
		"identity.providers[1].client_id":     "required",
		"identity.providers[1].client_secret": "required",
		"identity.providers[2].name":          "letters",
		"identity.providers[3].issuer":        "already the issuer of providers[2]",
		"identity.session.cookie_name":        "not a valid cookie name",
		"identity.session.cookie_domain":      "not a domain",
		"identity.session.secrets[1]":         "decodes to 16 bytes; need at least 32: generate one with `openssl rand -base64 32`",
		"identity.session.secrets[2]":         "not base64",
		"identity.session.lifetime":           "positive",
		"identity.bearer.audiences":           "required",
	}
	for path, frag := range want {
		if msg, ok := got[path]; !ok || !strings.Contains(msg, frag) {
			t.Errorf("%s: got %q, want a problem containing %q", path, msg, frag)
		}
	}
	if _, ok := got["identity.providers[2].issuer"]; ok {
		t.Error("http issuer on loopback must be accepted")
	}
	if len(got) != len(want) {
		t.Errorf("got %d problems, want %d: %v", len(got), len(want), p.List())
	}

	var ap confkit.Problems
	(&AssertionConfig{SigningKeyFile: "k.pem", Lifetime: 2 * time.Hour}).Validate(&ap, "assertion")
	if ap.Len() != 1 || ap.List()[0].Path != "assertion.lifetime" {
		t.Errorf("assertion problems = %v", ap.List())
	}
}

func TestSecretsAcceptBothBase64Alphabets(t *testing.T) {
	raw := []byte("\xfb\xff\xfe0123456789abcdef0123456789abcdef")
	for _, enc := range []string{"std", "url"} {
		var s string
		if enc == "std" {
			s = b64std(raw)
		} else {
			s = b64url(raw)
		}
		c := Config{ExternalURL: "https://a.example.com", Session: SessionConfig{Secrets: []string{s}}}
		c.SetDefaults("")
		var p confkit.Problems
		c.Validate(&p, "identity")
		if p.Len() != 0 || len(c.Session.keys) != 1 || string(c.Session.keys[0]) != string(raw) {
			t.Errorf("%s alphabet: problems %v", enc, p.List())
		}
	}
}

func b64std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
func b64url(b []byte) string { return base64.URLEncoding.EncodeToString(b) }

// TestPublishedSecretIsRefused: the example configuration's fallback
// session secret is public; an Authenticator will not seal sessions with it.
func TestPublishedSecretIsRefused(t *testing.T) {
	example := "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0NQ=="
	cfg := Config{ExternalURL: "https://auth.example.test", Session: SessionConfig{Secrets: []string{testSecret, example}}}
	cfg.SetDefaults(t.TempDir())
	var p confkit.Problems
	cfg.Validate(&p, "identity")
	if got := cfg.PublishedSecrets(); len(got) != 1 || got[0] != "identity.session.secrets[1]" {
		t.Fatalf("PublishedSecrets = %q, want [identity.session.secrets[1]]", got)
	}
	var acfg AssertionConfig
	acfg.SetDefaults(t.TempDir())
	_, err := New(context.Background(), cfg, acfg, Options{})
	if err == nil || !strings.Contains(err.Error(), "identity.session.secrets[1]: is the example configuration's published secret") {
		t.Errorf("New with the published secret: %v", err)
	}
}

// TestWarnings: a bearer audience that is also a client_id is valid but
// weak (ID tokens carry it), and said so.
func TestWarnings(t *testing.T) {
	cfg := Config{ExternalURL: "https://auth.example.test", Session: SessionConfig{Secrets: []string{testSecret}},
		Providers: []ProviderConfig{{Name: "corp", Issuer: "https://idp.example.test", ClientID: "portcullis", ClientSecret: "s"}},
		Bearer:    BearerConfig{Enabled: true, Audiences: []string{"api", "portcullis"}}}
	cfg.SetDefaults(t.TempDir())
	var p confkit.Problems
	cfg.Validate(&p, "identity")
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
	w := cfg.Warnings()
	if len(w) != 1 || !strings.HasPrefix(w[0], `identity.bearer.audiences[1]: "portcullis" is also identity.providers[0].client_id`) {
		t.Errorf("Warnings = %q", w)
	}
}
