package identity

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/portcullis/portcullis/internal/confkit"
)

// Config is the `identity:` section of the configuration file (SPEC §2).
// Fill defaults with SetDefaults, then call Validate: it parses the URLs and
// decodes the session secrets into unexported fields that New relies on.
type Config struct {
	// ExternalURL is where /.portcullis/* is served and the base of the
	// provider's redirect URI (ExternalURL + /.portcullis/callback).
	ExternalURL string           `yaml:"external_url"`
	Providers   []ProviderConfig `yaml:"providers"`
	Session     SessionConfig    `yaml:"session"`
	Bearer      BearerConfig     `yaml:"bearer"`

	external *url.URL
}

// ProviderConfig is one OpenID Connect provider.
type ProviderConfig struct {
	// Name identifies the provider in sessions, audit events and
	// ?provider=NAME; it must be unique.
	Name         string `yaml:"name"`
	Issuer       string `yaml:"issuer"`
	ClientID     string `yaml:"client_id"`
	ClientSecret string `yaml:"client_secret"`
	// Scopes default to openid, email, profile; openid is always sent.
	Scopes []string `yaml:"scopes"`
	// GroupsClaim names the claim holding the groups (default "groups"). A
	// dotted name such as realm_access.roles reaches into nested objects
	// when no claim has the dotted name itself.
	GroupsClaim string `yaml:"groups_claim"`
}

// SessionConfig configures the encrypted session cookie.
type SessionConfig struct {
	// CookieName defaults to _portcullis.
	CookieName string `yaml:"cookie_name"`
	// CookieDomain (optional, such as .example.com) shares the session
	// with every route host under it.
	CookieDomain string `yaml:"cookie_domain"`
	// Secrets are base64 (standard or URL alphabet, padded or not), each at
	// least 32 bytes once decoded. The first encrypts; all decrypt, so a new
	// secret is rotated in by putting it first and keeping the old one
	// second until the old cookies have expired.
	Secrets []string `yaml:"secrets"`

	// published holds the paths of Secrets anyone can read (see
	// PublishedSecrets); set by Validate.
	published []string
	// Lifetime bounds a session (default 12h); signing in again is needed
	// afterwards whatever the provider's tokens say.
	Lifetime time.Duration `yaml:"lifetime"`

	keys [][]byte
}

// BearerConfig configures JWT bearer tokens for machine clients.
type BearerConfig struct {
	Enabled bool `yaml:"enabled"`
	// Audiences: a token is accepted when its aud contains one of them.
	Audiences []string `yaml:"audiences"`
}

// AssertionConfig is the top-level `assertion:` section: the key that signs
// X-Portcullis-Assertion and the assertions' lifetime.
//
// Key rotation: the key lives in SigningKeyFile (PEM, EC P-256, PKCS#8 or
// SEC 1). When a file named SigningKeyFile + ".previous" exists, its public
// key is also published in the JWKS (it never signs). To rotate, rename the
// key file to <file>.previous and reload: a new key is created, upstreams
// and Workers that cache the JWKS keep verifying assertions signed just
// before the switch, and <file>.previous can be deleted once every cache
// has refreshed (the JWKS is served with max-age 300).
type AssertionConfig struct {
	// SigningKeyFile defaults to <data_dir>/assertion.pem; it is created
	// (mode 0600, parent directories 0700) when missing.
	SigningKeyFile string `yaml:"signing_key_file"`
	// Lifetime is exp - iat of every assertion (default 60s).
	Lifetime time.Duration `yaml:"lifetime"`
}

// Defaults used by SetDefaults.
const (
	DefaultCookieName      = "_portcullis"
	DefaultSessionLifetime = 12 * time.Hour
	DefaultGroupsClaim     = "groups"
	DefaultAssertionTTL    = 60 * time.Second
	minSecretBytes         = 32
)

// SetDefaults fills every unset field with its default. dataDir is the
// configuration's data_dir.
func (c *Config) SetDefaults(dataDir string) {
	for i := range c.Providers {
		p := &c.Providers[i]
		if len(p.Scopes) == 0 {
			p.Scopes = []string{"openid", "email", "profile"}
		}
		if p.GroupsClaim == "" {
			p.GroupsClaim = DefaultGroupsClaim
		}
	}
	if c.Session.CookieName == "" {
		c.Session.CookieName = DefaultCookieName
	}
	if c.Session.Lifetime == 0 {
		c.Session.Lifetime = DefaultSessionLifetime
	}
}

// SetDefaults fills the key file (under dataDir) and the lifetime.
func (c *AssertionConfig) SetDefaults(dataDir string) {
	if c.SigningKeyFile == "" {
		if dataDir == "" {
			dataDir = "."
		}
		c.SigningKeyFile = filepath.Join(dataDir, "assertion.pem")
	}
	if c.Lifetime == 0 {
		c.Lifetime = DefaultAssertionTTL
	}
}

// Validate records every problem at its path under path (normally
// "identity"). It has no side effects beyond filling the parsed values.
func (c *Config) Validate(p *confkit.Problems, path string) {
	c.external = confkit.ParseURL(p, confkit.Join(path, "external_url"), c.ExternalURL, true, "https")
	if c.external != nil {
		c.external.Path = ""
	}

	seen := map[string]int{}
	issuers := map[string]int{}
	for i := range c.Providers {
		pp := confkit.Index(confkit.Join(path, "providers"), i)
		pr := &c.Providers[i]
		switch {
		case pr.Name == "":
			p.Add(confkit.Join(pp, "name"), "is required: a short unique name such as corp")
		case !validName(pr.Name):
			p.Add(confkit.Join(pp, "name"), "%q may only hold letters, digits, '-', '_' and '.'", pr.Name)
		default:
			if j, dup := seen[pr.Name]; dup {
				p.Add(confkit.Join(pp, "name"), "%q is already used by providers[%d]", pr.Name, j)
			}
			seen[pr.Name] = i
		}
		validateIssuer(p, confkit.Join(pp, "issuer"), pr.Issuer)
		if pr.Issuer != "" {
			// A bearer token names its issuer, not the provider entry: two
			// entries for one issuer could not be told apart.
			if j, dup := issuers[pr.Issuer]; dup {
				p.Add(confkit.Join(pp, "issuer"), "%q is already the issuer of providers[%d]: give each issuer one provider entry", pr.Issuer, j)
			} else {
				issuers[pr.Issuer] = i
			}
		}
		if pr.ClientID == "" {
			p.Add(confkit.Join(pp, "client_id"), "is required: the client id registered at the provider")
		}
		if pr.ClientSecret == "" {
			p.Add(confkit.Join(pp, "client_secret"), "is required: set it from the environment, e.g. ${PORTCULLIS_CLIENT_SECRET}")
		}
		hasOpenID := false
		for j, s := range pr.Scopes {
			if s == "openid" {
				hasOpenID = true
			}
			if s == "" || strings.ContainsAny(s, " \t\r\n\"\\") {
				p.Add(confkit.Index(confkit.Join(pp, "scopes"), j), "%q is not a valid scope", s)
			}
		}
		if !hasOpenID {
			p.Add(confkit.Join(pp, "scopes"), "must include openid")
		}
		if strings.TrimSpace(pr.GroupsClaim) == "" {
			p.Add(confkit.Join(pp, "groups_claim"), "must not be empty")
		}
	}

	sp := confkit.Join(path, "session")
	if !validCookieName(c.Session.CookieName) {
		p.Add(confkit.Join(sp, "cookie_name"), "%q is not a valid cookie name: use letters, digits, '_' and '-'", c.Session.CookieName)
	}
	if d := c.Session.CookieDomain; d != "" {
		bare := strings.TrimPrefix(strings.ToLower(d), ".")
		if !validHostname(bare) || !strings.Contains(bare, ".") {
			p.Add(confkit.Join(sp, "cookie_domain"), "%q is not a domain such as .example.com", d)
		}
	}
	if len(c.Session.Secrets) == 0 && len(c.Providers) > 0 {
		p.Add(confkit.Join(sp, "secrets"), "at least one secret is required: generate one with `openssl rand -base64 32`")
	}
	c.Session.keys = c.Session.keys[:0]
	c.Session.published = c.Session.published[:0]
	for i, s := range c.Session.Secrets {
		k, err := decodeSecret(s)
		ip := confkit.Index(confkit.Join(sp, "secrets"), i)
		switch {
		case err != nil:
			p.Add(ip, "is not base64: generate one with `openssl rand -base64 32`")
		case len(k) < minSecretBytes:
			p.Add(ip, "decodes to %d bytes; need at least %d: generate one with `openssl rand -base64 32`", len(k), minSecretBytes)
		default:
			c.Session.keys = append(c.Session.keys, k)
			if slices.Contains(publishedSecrets, string(k)) {
				c.Session.published = append(c.Session.published, ip)
			}
		}
	}
	confkit.RequireDuration(p, confkit.Join(sp, "lifetime"), c.Session.Lifetime)

	bp := confkit.Join(path, "bearer")
	if c.Bearer.Enabled {
		if len(c.Bearer.Audiences) == 0 {
			p.Add(confkit.Join(bp, "audiences"), "at least one audience is required when bearer tokens are enabled")
		}
		if len(c.Providers) == 0 {
			p.Add(confkit.Join(bp, "enabled"), "bearer tokens are verified with the providers' keys: configure identity.providers")
		}
	}
	for i, a := range c.Bearer.Audiences {
		if strings.TrimSpace(a) == "" {
			p.Add(confkit.Index(confkit.Join(bp, "audiences"), i), "must not be empty")
		}
	}
}

// Validate records every problem of the assertion section under path.
func (c *AssertionConfig) Validate(p *confkit.Problems, path string) {
	if c.SigningKeyFile == "" {
		p.Add(confkit.Join(path, "signing_key_file"), "is required")
	}
	confkit.RequireDuration(p, confkit.Join(path, "lifetime"), c.Lifetime)
	if c.Lifetime > time.Hour {
		p.Add(confkit.Join(path, "lifetime"), "%s is too long for a per-request assertion: use at most 1h (60s is usual)", c.Lifetime)
	}
}

// validateIssuer accepts https issuers, and http only on loopback (a local
// or test provider).
func validateIssuer(p *confkit.Problems, path, raw string) {
	u := confkit.ParseURL(p, path, raw, false, "https", "http")
	if u == nil {
		return
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		p.Add(path, "must use https (http is only accepted for a provider on loopback)")
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// decodeSecret accepts standard or URL-safe base64, padded or not.
func decodeSecret(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	var lastErr error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		b, err := enc.DecodeString(s)
		if err == nil {
			return b, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func validName(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return s != ""
}

func validCookieName(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return s != ""
}

// validHostname accepts lower-case ASCII DNS names (letters, digits, '-'
// and '.', no empty labels).
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// publishedSecrets are session secrets printed where anyone can read them:
// the example configuration's fallback, which lets `portcullis check` pass
// out of the box. Sessions sealed with one can be forged by anyone.
var publishedSecrets = []string{"secret-secret-secret-secret-secret-12345"}

// PublishedSecrets lists the config paths of session secrets that are
// published (the example configuration's): `check` warns about them and
// New refuses them. Validate must have run.
func (c *Config) PublishedSecrets() []string { return slices.Clone(c.Session.published) }

// publishedSecretAdvice ends the message about a published secret.
const publishedSecretAdvice = "is the example configuration's published secret: anyone can forge a session with it; " +
	"set your own (`openssl rand -base64 32`, e.g. in PORTCULLIS_SESSION_SECRET)"

// PublishedSecretProblem is the message about a secret at path.
func PublishedSecretProblem(path string) string { return path + ": " + publishedSecretAdvice }

// Warnings are what is valid in the configuration but weak: a bearer
// audience that is also a provider's client_id, so that ID tokens (issued
// for the client_id) carry an accepted audience; only the marks an ID token
// usually has (nonce, at_hash, typ) then keep them from being bearer
// credentials, and a refreshed ID token may have none. Validate must have
// run.
func (c *Config) Warnings() []string {
	var out []string
	if c.Bearer.Enabled {
		for i, aud := range c.Bearer.Audiences {
			for j, p := range c.Providers {
				if aud == p.ClientID {
					out = append(out, fmt.Sprintf("identity.bearer.audiences[%d]: %q is also identity.providers[%d].client_id: "+
						"ID tokens have that audience; give APIs an audience of their own", i, aud, j))
				}
			}
		}
	}
	return out
}
