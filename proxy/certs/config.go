package certs

import (
	"fmt"
	"net"
	"net/mail"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/portcullis/portcullis/internal/confkit"
)

// The values of tls.mode.
const (
	// ModeACME obtains and renews certificates from an ACME CA (RFC 8555).
	ModeACME = "acme"
	// ModeFiles serves one certificate and key read from files, reloaded when
	// the files change.
	ModeFiles = "files"
	// ModeSelfSigned issues certificates from a local CA kept in the data
	// directory; for development and private networks.
	ModeSelfSigned = "self-signed"
)

// DefaultCA is the ACME directory used when tls.acme.ca is empty: Let's
// Encrypt's production directory.
const DefaultCA = "https://acme-v02.api.letsencrypt.org/directory"

// The ACME challenge types tls.acme.challenges may list.
const (
	ChallengeHTTP01    = "http-01"
	ChallengeTLSALPN01 = "tls-alpn-01"
)

// Config is SPEC §2 `tls:`.
type Config struct {
	// Mode is acme, files or self-signed (default self-signed).
	Mode string `yaml:"mode"`
	// ACME configures mode acme.
	ACME ACMEConfig `yaml:"acme"`
	// CertFile is the PEM certificate chain (leaf first) for mode files.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key for mode files.
	KeyFile string `yaml:"key_file"`
	// HSTS, when positive, is the max-age of the Strict-Transport-Security
	// header added to every HTTPS response (an extension to SPEC §2). Zero
	// (the default) sends no header. Browsers remember it for that long, so
	// start small.
	HSTS LongDuration `yaml:"hsts"`
}

// ACMEConfig is `tls.acme:`. Configuring mode acme means agreeing to the
// CA's subscriber agreement (terms of service).
//
// Replicas may share one Storage directory (a shared file system such as
// NFS, or a Kubernetes ReadWriteMany volume): certmagic takes a lock file in
// Storage before it obtains or renews a certificate, so only one replica
// orders a given certificate and the others load it from Storage; challenge
// data is also written there, so any replica can answer a challenge that
// another one started (every replica must serve listen.http and
// listen.https for all route hosts, which a load balancer in front of them
// does anyway).
type ACMEConfig struct {
	// Email is the ACME account contact; the CA sends expiry warnings there.
	Email string `yaml:"email"`
	// CA is the ACME directory URL (default DefaultCA).
	CA string `yaml:"ca"`
	// TrustedRoots is a PEM file of roots that the ACME directory's TLS
	// certificate chains to, for private ACME CAs (step-ca, Pebble, ...).
	// Empty means the system roots.
	TrustedRoots string `yaml:"trusted_roots"`
	// Storage holds the ACME account, certificates, keys and locks
	// (default <data_dir>/certs).
	Storage string `yaml:"storage"`
	// Challenges lists the challenge types to use (an extension to SPEC §2;
	// default both http-01 and tls-alpn-01). http-01 is answered on
	// listen.http and tls-alpn-01 on listen.https; the CA connects to ports
	// 80 and 443 of each route host, so those must reach these listeners.
	// List only tls-alpn-01 when port 80 is not forwarded, only http-01 when
	// a load balancer terminates TLS before Portcullis.
	Challenges []string `yaml:"challenges"`
}

// SetDefaults fills the defaults of SPEC §2: mode self-signed, the Let's
// Encrypt directory, storage under dataDir, both challenge types.
func (c *Config) SetDefaults(dataDir string) {
	if c.Mode == "" {
		c.Mode = ModeSelfSigned
	}
	if c.ACME.CA == "" {
		c.ACME.CA = DefaultCA
	}
	if c.ACME.Storage == "" {
		c.ACME.Storage = filepath.Join(dataDir, "certs")
	}
	if len(c.ACME.Challenges) == 0 {
		c.ACME.Challenges = []string{ChallengeHTTP01, ChallengeTLSALPN01}
	}
}

// Validate records every problem of the tls section at its path under path
// (normally "tls"). It reads no file and contacts nothing.
//
// hosts are the route hosts and the external_url host; a host that the mode
// cannot serve is reported at path.mode naming the host. Callers that know
// each host's own config path (`routes[1].host`) should pass nil here and
// call CheckHost per host instead, so that the message points at the route.
func (c *Config) Validate(p *confkit.Problems, path string, hosts []string) {
	if !confkit.OneOf(p, confkit.Join(path, "mode"), c.Mode, ModeACME, ModeFiles, ModeSelfSigned) {
		return
	}
	if c.HSTS < 0 {
		p.Add(confkit.Join(path, "hsts"), "must not be negative (empty turns HSTS off)")
	}
	switch c.Mode {
	case ModeFiles:
		if c.CertFile == "" {
			p.Add(confkit.Join(path, "cert_file"), "is required with tls.mode: files: give the PEM certificate chain")
		}
		if c.KeyFile == "" {
			p.Add(confkit.Join(path, "key_file"), "is required with tls.mode: files: give the PEM private key")
		}
	case ModeACME:
		ap := confkit.Join(path, "acme")
		confkit.ParseURL(p, confkit.Join(ap, "ca"), c.ACME.CA, false, "https")
		if c.ACME.Email == "" {
			p.Add(confkit.Join(ap, "email"), "is required with tls.mode: acme: the CA sends expiry warnings there")
		} else if a, err := mail.ParseAddress(c.ACME.Email); err != nil || a.Address != c.ACME.Email {
			p.Add(confkit.Join(ap, "email"), "%q is not an email address such as ops@example.com", c.ACME.Email)
		}
		if c.ACME.Storage == "" {
			p.Add(confkit.Join(ap, "storage"), "is required with tls.mode: acme")
		}
		if len(c.ACME.Challenges) == 0 {
			p.Add(confkit.Join(ap, "challenges"), "must list at least one of %s, %s", ChallengeHTTP01, ChallengeTLSALPN01)
		}
		for i, ch := range c.ACME.Challenges {
			confkit.OneOf(p, confkit.Index(confkit.Join(ap, "challenges"), i), ch, ChallengeHTTP01, ChallengeTLSALPN01)
		}
	default:
		if c.CertFile != "" || c.KeyFile != "" {
			p.Add(confkit.Join(path, "mode"), "is %s, but cert_file/key_file are only read with tls.mode: files", c.Mode)
		}
	}
	for _, h := range hosts {
		c.CheckHost(p, confkit.Join(path, "mode"), h)
	}
}

// CheckHost records a problem at hostPath when the mode cannot serve a
// certificate for host: wildcard hosts and IP addresses under acme.
func (c *Config) CheckHost(p *confkit.Problems, hostPath, host string) {
	if c.Mode != ModeACME {
		return
	}
	h := normalizeHost(host)
	switch {
	case strings.HasPrefix(h, "*."):
		p.Add(hostPath, "host %s needs a wildcard certificate, which acme mode cannot obtain yet (DNS-01 is not offered); use tls.mode: files with a wildcard certificate", host)
	case net.ParseIP(strings.Trim(h, "[]")) != nil:
		p.Add(hostPath, "host %s is an IP address; acme mode obtains certificates for DNS names only: use a DNS name or tls.mode: files", host)
	}
}

// LongDuration is a duration that may also be written with the units d
// (24h), w (7d) and y (365d), as in `hsts: 1y`; Go durations such as 8760h
// work too.
type LongDuration time.Duration

// ParseLongDuration parses "1y", "26w", "180d", "8760h" or "90m". Only one
// d/w/y term is accepted; anything else must be a Go duration.
func ParseLongDuration(s string) (LongDuration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	units := map[byte]time.Duration{'d': 24 * time.Hour, 'w': 7 * 24 * time.Hour, 'y': 365 * 24 * time.Hour}
	if u, ok := units[s[len(s)-1]]; ok {
		n, err := strconv.ParseInt(s[:len(s)-1], 10, 64)
		if err != nil || n < 0 || n > int64(100*365*24*time.Hour/u) {
			return 0, fmt.Errorf("invalid duration %q: want a whole number before d, w or y, such as 1y or 180d", s)
		}
		return LongDuration(time.Duration(n) * u), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: want a Go duration such as 8760h, or 1y, 26w, 180d", s)
	}
	return LongDuration(d), nil
}

// UnmarshalYAML accepts a string in the forms of ParseLongDuration.
func (d *LongDuration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want a duration such as 1y or 8760h")
	}
	v, err := ParseLongDuration(n.Value)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// MarshalYAML writes the duration in Go syntax.
func (d LongDuration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Duration returns d as a time.Duration.
func (d LongDuration) Duration() time.Duration { return time.Duration(d) }

// normalizeHost lowercases a host name and drops a trailing dot.
func normalizeHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
}
