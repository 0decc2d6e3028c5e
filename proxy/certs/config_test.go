package certs

import (
	"strings"
	"testing"
	"time"

	"github.com/portcullis/portcullis/internal/confkit"
)

// decodeTLS decodes a `tls:` section the way the command does: strictly,
// then defaults, then validation.
func decodeTLS(t *testing.T, doc string, hosts []string) (Config, []confkit.Problem) {
	t.Helper()
	var wrap struct {
		TLS Config `yaml:"tls"`
	}
	var p confkit.Problems
	if err := confkit.DecodeStrict([]byte(doc), &wrap, &p, func(string) (string, bool) { return "", false }); err != nil {
		t.Fatalf("DecodeStrict: %v", err)
	}
	wrap.TLS.SetDefaults("/var/lib/portcullis")
	wrap.TLS.Validate(&p, "tls", hosts)
	return wrap.TLS, p.List()
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name  string
		doc   string
		hosts []string
		want  []string // "path: substring" of every expected problem, in order
	}{
		{name: "defaults are valid", doc: "tls: {}", hosts: []string{"*.example.com", "localhost"}},
		{name: "self-signed explicit", doc: "tls: {mode: self-signed, hsts: 1y}"},
		{name: "files complete", doc: "tls: {mode: files, cert_file: /c.pem, key_file: /k.pem}", hosts: []string{"*.example.com"}},
		{name: "acme complete", doc: "tls: {mode: acme, acme: {email: ops@example.com}}", hosts: []string{"app.example.com"}},
		{name: "acme private CA", doc: "tls: {mode: acme, acme: {email: ops@example.com, ca: 'https://ca.internal:9000/acme/dir', trusted_roots: /roots.pem, challenges: [tls-alpn-01]}}"},
		{name: "unknown mode", doc: "tls: {mode: manual}", want: []string{"tls.mode: must be one of acme, files, self-signed"}},
		{name: "files without cert", doc: "tls: {mode: files, key_file: /k.pem}", want: []string{"tls.cert_file: is required"}},
		{name: "files without either", doc: "tls: {mode: files}", want: []string{"tls.cert_file: is required", "tls.key_file: is required"}},
		{name: "cert_file outside files mode", doc: "tls: {mode: self-signed, cert_file: /c.pem}", want: []string{"tls.mode: is self-signed, but cert_file"}},
		{
			name:  "wildcard under acme",
			doc:   "tls: {mode: acme, acme: {email: ops@example.com}}",
			hosts: []string{"app.example.com", "*.example.com"},
			want:  []string{"tls.mode: host *.example.com needs a wildcard certificate, which acme mode cannot obtain yet (DNS-01 is not offered); use tls.mode: files with a wildcard certificate"},
		},
		{name: "IP under acme", doc: "tls: {mode: acme, acme: {email: ops@example.com}}", hosts: []string{"10.0.0.1"}, want: []string{"tls.mode: host 10.0.0.1 is an IP address"}},
		{name: "acme without email", doc: "tls: {mode: acme}", want: []string{"tls.acme.email: is required"}},
		{name: "acme bad email", doc: "tls: {mode: acme, acme: {email: 'ops at example'}}", want: []string{"tls.acme.email: \"ops at example\" is not an email address"}},
		{name: "acme plain http CA", doc: "tls: {mode: acme, acme: {email: ops@example.com, ca: 'http://ca.internal/dir'}}", want: []string{"tls.acme.ca: scheme \"http\" is not allowed"}},
		{name: "acme bad challenge", doc: "tls: {mode: acme, acme: {email: ops@example.com, challenges: [dns-01]}}", want: []string{"tls.acme.challenges[0]: must be one of http-01, tls-alpn-01"}},
		{name: "bad hsts", doc: "tls: {hsts: forever}", want: []string{"tls.hsts: invalid duration \"forever\""}},
		{name: "bad hsts unit number", doc: "tls: {hsts: 1.5y}", want: []string{"tls.hsts: invalid duration \"1.5y\""}},
		{name: "negative hsts", doc: "tls: {hsts: -5m}", want: []string{"tls.hsts: must not be negative"}},
		{name: "unknown key", doc: "tls: {mode: files, cert_file: /c, key_file: /k, certfile: /x}", want: []string{"tls.certfile: unknown key"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, got := decodeTLS(t, tc.doc, tc.hosts)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d problems %v, want %d %v", len(got), got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(got[i].String(), w) {
					t.Errorf("problem %d = %q, want prefix %q", i, got[i].String(), w)
				}
			}
		})
	}
}

func TestCheckHostCarriesRoutePath(t *testing.T) {
	cfg := Config{Mode: ModeACME}
	var p confkit.Problems
	for i, h := range []string{"app.example.com", "*.example.com"} {
		cfg.CheckHost(&p, confkit.Join(confkit.Index("routes", i), "host"), h)
	}
	got := p.List()
	want := "routes[1].host: host *.example.com needs a wildcard certificate, which acme mode cannot obtain yet (DNS-01 is not offered); use tls.mode: files with a wildcard certificate"
	if len(got) != 1 || got[0].String() != want {
		t.Fatalf("got %v, want [%s]", got, want)
	}
	for _, mode := range []string{ModeFiles, ModeSelfSigned} {
		var p confkit.Problems
		(&Config{Mode: mode}).CheckHost(&p, "routes[0].host", "*.example.com")
		if p.Len() != 0 {
			t.Errorf("mode %s: got %v, want no problem for a wildcard host", mode, p.List())
		}
	}
}

func TestDefaults(t *testing.T) {
	cfg, probs := decodeTLS(t, "tls: {mode: acme, acme: {email: ops@example.com}}", nil)
	if len(probs) != 0 {
		t.Fatalf("problems: %v", probs)
	}
	if cfg.ACME.CA != "https://acme-v02.api.letsencrypt.org/directory" {
		t.Errorf("ca = %q, want Let's Encrypt production", cfg.ACME.CA)
	}
	if cfg.ACME.Storage != "/var/lib/portcullis/certs" {
		t.Errorf("storage = %q, want /var/lib/portcullis/certs", cfg.ACME.Storage)
	}
	empty, _ := decodeTLS(t, "tls: {}", nil)
	if empty.Mode != ModeSelfSigned {
		t.Errorf("default mode = %q, want self-signed", empty.Mode)
	}
}

func TestParseLongDuration(t *testing.T) {
	day := 24 * time.Hour
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{in: "", want: 0},
		{in: "1y", want: 365 * day},
		{in: "2w", want: 14 * day},
		{in: "180d", want: 180 * day},
		{in: "8760h", want: 8760 * time.Hour},
		{in: "90m", want: 90 * time.Minute},
		{in: "0", want: 0},
		{in: "y", wantErr: true},
		{in: "-1y", wantErr: true},
		{in: "1.5y", wantErr: true},
		{in: "1y2d", wantErr: true},
		{in: "1000y", wantErr: true},
		{in: "soon", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseLongDuration(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !tc.wantErr && got.Duration() != tc.want {
				t.Errorf("got %v, want %v", got.Duration(), tc.want)
			}
		})
	}
}

func TestHSTSHeader(t *testing.T) {
	for _, tc := range []struct {
		hsts LongDuration
		want string
	}{{0, ""}, {LongDuration(365 * 24 * time.Hour), "max-age=31536000"}, {LongDuration(90 * time.Second), "max-age=90"}} {
		m, err := New(t.Context(), Config{Mode: ModeSelfSigned, HSTS: tc.hsts}, t.TempDir(), Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := m.HSTS(); got != tc.want {
			t.Errorf("HSTS(%v) = %q, want %q", tc.hsts.Duration(), got, tc.want)
		}
		m.Close()
	}
}
