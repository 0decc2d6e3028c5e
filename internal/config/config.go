// Package config reads Portcullis's configuration file (SPEC §2): strict
// YAML, ${ENV} expansion, defaults filled in one place, and validation that
// reports every problem with its path. Each section's type and rules belong
// to the package that uses it; this package only composes them.
package config

import (
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/identity"
	"github.com/portcullis/portcullis/internal/confkit"
	"github.com/portcullis/portcullis/policy"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/certs"
)

// File is the whole configuration file.
type File struct {
	// DataDir holds keys, the local CA, certificates, the spool and the
	// instance id (default ./portcullis-data).
	DataDir   string                   `yaml:"data_dir"`
	Listen    proxy.ListenConfig       `yaml:"listen"`
	Server    proxy.ServerConfig       `yaml:"server"`
	TLS       certs.Config             `yaml:"tls"`
	Identity  identity.Config          `yaml:"identity"`
	Assertion identity.AssertionConfig `yaml:"assertion"`
	Policy    policy.Config            `yaml:"policy"`
	Routes    []proxy.Route            `yaml:"routes"`
	Audit     audit.Config             `yaml:"audit"`
	Log       LogConfig                `yaml:"log"`
}

// LogConfig selects the log format and level (an extension to SPEC §2).
type LogConfig struct {
	// Format is "json" (default) or "text".
	Format string `yaml:"format"`
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
	// AccessLog writes one line per request (default true).
	AccessLog *bool `yaml:"access_log"`
}

// Load reads, decodes, defaults and validates the file at path. lookup
// resolves ${ENV} references (os.LookupEnv when nil). The error is a
// *confkit.Error listing every problem when the file is readable YAML.
func Load(path string, lookup func(string) (string, bool)) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(data, lookup)
}

// Parse is Load for a document already in memory.
func Parse(data []byte, lookup func(string) (string, bool)) (*File, error) {
	var p confkit.Problems
	f, err := Decode(data, lookup, &p)
	if err != nil {
		return nil, err
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	return f, nil
}

// Decode decodes, defaults and validates data, recording every problem in p
// and returning the File even when there are problems, so that a caller
// (`portcullis check`) can go on checking what is checkable. The error is
// for a document that is not YAML at all.
func Decode(data []byte, lookup func(string) (string, bool), p *confkit.Problems) (*File, error) {
	var f File
	if err := confkit.DecodeStrict(data, &f, p, lookup); err != nil {
		return nil, err
	}
	f.SetDefaults()
	f.Validate(p)
	return &f, nil
}

// SetDefaults fills every default, in one place.
func (f *File) SetDefaults() {
	if f.DataDir == "" {
		f.DataDir = "./portcullis-data"
	}
	f.Listen.SetDefaults()
	f.Server.SetDefaults()
	f.TLS.SetDefaults(f.DataDir)
	f.Identity.SetDefaults(f.DataDir)
	f.Assertion.SetDefaults(f.DataDir)
	f.Policy.SetDefaults()
	for i := range f.Routes {
		f.Routes[i].SetDefaults()
	}
	f.Audit.SetDefaults(f.DataDir)
	if f.Log.Format == "" {
		f.Log.Format = "json"
	}
	if f.Log.Level == "" {
		f.Log.Level = "info"
	}
	if f.Log.AccessLog == nil {
		t := true
		f.Log.AccessLog = &t
	}
}

// Validate checks every section and the rules that span sections. It has
// no side effects: no file is read and no network is used.
func (f *File) Validate(p *confkit.Problems) {
	f.Listen.Validate(p, "listen")
	f.Server.Validate(p, "server")
	f.Identity.Validate(p, "identity")
	f.Assertion.Validate(p, "assertion")
	f.Policy.Validate(p, "policy")
	proxy.ValidateRoutes(p, "routes", f.Routes)
	f.Audit.Validate(p, "audit")
	confkit.OneOf(p, "log.format", f.Log.Format, "json", "text")
	confkit.OneOf(p, "log.level", f.Log.Level, "debug", "info", "warn", "error")

	f.TLS.Validate(p, "tls", nil)
	for i, r := range f.Routes {
		if r.Host != "" {
			f.TLS.CheckHost(p, confkit.Join(confkit.Index("routes", i), "host"), r.Host)
		}
	}
	if h := f.ExternalHost(); h != "" {
		f.TLS.CheckHost(p, "identity.external_url", h)
	}

	needsLogin := false
	for _, r := range f.Routes {
		if !r.Public {
			needsLogin = true
		}
	}
	if needsLogin && len(f.Identity.Providers) == 0 && !f.Identity.Bearer.Enabled {
		p.Add("identity.providers", "no sign-in is possible but some routes are not public: add an OIDC provider under identity.providers (browser sign-in, and bearer tokens with identity.bearer.enabled), or mark the routes public: true")
	}
}

// ExternalHost is identity.external_url's host without port, lower-cased,
// or "" when it is not set or not a URL.
func (f *File) ExternalHost() string {
	u, err := url.Parse(f.Identity.ExternalURL)
	if err != nil || u.Host == "" {
		return ""
	}
	return strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
}

// Hosts lists every host Portcullis answers for: route hosts and the
// external URL's host, without duplicates.
func (f *File) Hosts() []string {
	seen := map[string]bool{}
	var out []string
	add := func(h string) {
		if h != "" && !seen[h] {
			seen[h] = true
			out = append(out, h)
		}
	}
	for _, r := range f.Routes {
		add(r.Host)
	}
	add(f.ExternalHost())
	return out
}

// Packages lists the Rego packages the routes name.
func (f *File) Packages() []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range f.Routes {
		if r.Policy != "" && !seen[r.Policy] {
			seen[r.Policy] = true
			out = append(out, r.Policy)
		}
	}
	return out
}
