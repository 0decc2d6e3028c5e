package proxy

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/portcullis/portcullis/internal/confkit"
	"github.com/portcullis/portcullis/policy"
)

// ListenConfig is SPEC §2 `listen:`.
type ListenConfig struct {
	// HTTPS is the TLS listener for every route (default ":8443").
	HTTPS string `yaml:"https"`
	// HTTP optionally serves ACME HTTP-01 challenges and redirects to https.
	HTTP string `yaml:"http"`
	// Admin serves /healthz, /readyz and /metrics; keep it off public
	// interfaces (default "127.0.0.1:9901").
	Admin string `yaml:"admin"`
	// TrustedProxies lists CIDRs (or single addresses) whose X-Forwarded-For,
	// X-Forwarded-Proto, X-Forwarded-Host and X-Request-Id are believed.
	TrustedProxies []string `yaml:"trusted_proxies"`

	// Trusted is TrustedProxies parsed by Validate.
	Trusted []netip.Prefix `yaml:"-"`
}

// ServerConfig holds the server hardening knobs (an extension to SPEC §2,
// `server:`); every field has a safe default.
type ServerConfig struct {
	// ReadHeaderTimeout bounds how long a client may take to send headers.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// IdleTimeout closes keep-alive connections idle this long.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// WriteTimeout bounds writing a non-streaming response (Portcullis's own
	// pages, and forwarded responses that are neither SSE nor upgrades),
	// counted from the time the response headers are known.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// MaxHeaderBytes caps request header size.
	MaxHeaderBytes confkit.ByteSize `yaml:"max_header_bytes"`
	// ShutdownTimeout is how long in-flight requests may drain on SIGTERM.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
}

// Route is one entry of SPEC §2 `routes:`.
type Route struct {
	Name           string        `yaml:"name"`
	Host           string        `yaml:"host"`
	Path           string        `yaml:"path"`
	Upstream       string        `yaml:"upstream"`
	Policy         string        `yaml:"policy"`
	Public         bool          `yaml:"public"`
	Timeout        time.Duration `yaml:"timeout"`
	PassHostHeader bool          `yaml:"pass_host_header"`
	// AssertionAudience overrides the `aud` of X-Portcullis-Assertion (an
	// extension; default: the upstream's origin). Set it when the upstream
	// is reached under another name than the one the verifier expects, for
	// example a Worker whose public origin differs from its address here.
	AssertionAudience string `yaml:"assertion_audience"`
	// TLSCAFile names a PEM file of CA certificates trusted, besides the
	// system's, for an https upstream's certificate (an extension: a
	// private CA inside the network).
	TLSCAFile string `yaml:"tls_ca_file"`

	// UpstreamURL is Upstream parsed by Validate.
	UpstreamURL *url.URL `yaml:"-"`
	// rootCAs is the pool TLSCAFile gives, set by Validate; caSum the
	// SHA-256 of that file's content.
	rootCAs *x509.CertPool
	caSum   string
	// h2c: Upstream is h2c://, spoken to in HTTP/2 without TLS.
	h2c bool
}

// Origin is scheme://host[:port] of the upstream: the default audience of
// the assertion the upstream receives.
func (r *Route) Origin() string {
	return r.UpstreamURL.Scheme + "://" + r.UpstreamURL.Host
}

// Audience is the `aud` claim of the assertion sent to this route.
func (r *Route) Audience() string {
	if r.AssertionAudience != "" {
		return r.AssertionAudience
	}
	return r.Origin()
}

// SetDefaults fills the listener defaults.
func (c *ListenConfig) SetDefaults() {
	if c.HTTPS == "" {
		c.HTTPS = ":8443"
	}
	if c.Admin == "" {
		c.Admin = "127.0.0.1:9901"
	}
}

// SetDefaults fills the hardening defaults.
func (c *ServerConfig) SetDefaults() {
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = 10 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 120 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 5 * time.Minute
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = 64 << 10
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
}

// SetDefaults fills a route's defaults.
func (r *Route) SetDefaults() {
	if r.Path == "" {
		r.Path = "/"
	}
	if r.Timeout == 0 {
		r.Timeout = 30 * time.Second
	}
}

// Validate checks the listeners and parses trusted_proxies.
func (c *ListenConfig) Validate(p *confkit.Problems, path string) {
	checkAddr(p, confkit.Join(path, "https"), c.HTTPS, true)
	checkAddr(p, confkit.Join(path, "http"), c.HTTP, false)
	checkAddr(p, confkit.Join(path, "admin"), c.Admin, true)
	// Two listeners on one port (the same address, or one of them on every
	// address) cannot both bind: say so now rather than at start.
	addrs := []struct{ name, addr string }{{"https", c.HTTPS}, {"http", c.HTTP}, {"admin", c.Admin}}
	for i, a := range addrs {
		for _, b := range addrs[:i] {
			if sharePort(a.addr, b.addr) {
				p.Add(confkit.Join(path, a.name), "%q is the port of listen.%s (%q): give each listener its own port", a.addr, b.name, b.addr)
			}
		}
	}
	c.Trusted = c.Trusted[:0]
	for i, s := range c.TrustedProxies {
		pp := confkit.Index(confkit.Join(path, "trusted_proxies"), i)
		if pfx, err := netip.ParsePrefix(s); err == nil {
			c.Trusted = append(c.Trusted, pfx.Masked())
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil {
			c.Trusted = append(c.Trusted, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p.Add(pp, "%q is not a CIDR (such as 10.0.0.0/8) or an IP address", s)
	}
}

// sharePort reports whether listeners on a and b (host:port) would
// collide: the same port, on the same host or with either on every address.
func sharePort(a, b string) bool {
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	if errA != nil || errB != nil || pa != pb || pa == "" || pa == "0" {
		return false
	}
	any := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return any(ha) || any(hb) || strings.EqualFold(ha, hb)
}

func checkAddr(p *confkit.Problems, path, addr string, required bool) {
	if addr == "" {
		if required {
			p.Add(path, "is required: give host:port such as :8443")
		}
		return
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		p.Add(path, "%q is not host:port (for example :8443 or 127.0.0.1:9901)", addr)
	}
}

// Validate checks the hardening knobs.
func (c *ServerConfig) Validate(p *confkit.Problems, path string) {
	confkit.RequireDuration(p, confkit.Join(path, "read_header_timeout"), c.ReadHeaderTimeout)
	confkit.RequireDuration(p, confkit.Join(path, "idle_timeout"), c.IdleTimeout)
	confkit.RequireDuration(p, confkit.Join(path, "write_timeout"), c.WriteTimeout)
	confkit.RequireDuration(p, confkit.Join(path, "shutdown_timeout"), c.ShutdownTimeout)
	if c.MaxHeaderBytes < 4096 || c.MaxHeaderBytes > 1<<30 {
		p.Add(confkit.Join(path, "max_header_bytes"), "must be between 4KiB and 1GiB (a size such as 64KiB)")
	}
}

// ValidateRoutes checks every route (names unique, hosts well-formed,
// upstreams absolute http(s) URLs, no two routes with the same host and
// path) and parses their upstreams.
func ValidateRoutes(p *confkit.Problems, path string, routes []Route) {
	if len(routes) == 0 {
		p.Add(path, "needs at least one route")
	}
	names := map[string]int{}
	keys := map[string]int{}
	for i := range routes {
		r := &routes[i]
		rp := confkit.Index(path, i)
		if r.Name == "" {
			p.Add(confkit.Join(rp, "name"), "is required")
		} else if j, dup := names[r.Name]; dup {
			p.Add(confkit.Join(rp, "name"), "%q is already used by %s", r.Name, confkit.Index(path, j))
		} else {
			names[r.Name] = i
		}
		if err := checkHostPattern(r.Host); err != nil {
			p.Add(confkit.Join(rp, "host"), "%v", err)
		} else {
			r.Host = normalizePattern(r.Host)
		}
		if !strings.HasPrefix(r.Path, "/") {
			p.Add(confkit.Join(rp, "path"), "must start with / (got %q)", r.Path)
		} else if np, err := NormalizePath(r.Path); err != nil || np != r.Path {
			p.Add(confkit.Join(rp, "path"), "must be a normalized path prefix such as /app/ (got %q)", r.Path)
		}
		if u := confkit.ParseURL(p, confkit.Join(rp, "upstream"), r.Upstream, false, "http", "https", "h2c"); u != nil {
			if u.Scheme == "h2c" {
				// HTTP/2 without TLS (prior knowledge): gRPC servers inside
				// the network. The upstream's origin is http://.
				u.Scheme, r.h2c = "http", true
			}
			r.UpstreamURL = u
		}
		policy.ValidatePackage(p, confkit.Join(rp, "policy"), r.Policy)
		confkit.RequireDuration(p, confkit.Join(rp, "timeout"), r.Timeout)
		if r.AssertionAudience != "" {
			confkit.ParseURL(p, confkit.Join(rp, "assertion_audience"), r.AssertionAudience, true, "https", "http")
		}
		if r.TLSCAFile != "" {
			pool, sum, err := loadRootCAs(r.TLSCAFile)
			switch {
			case err != nil:
				p.Add(confkit.Join(rp, "tls_ca_file"), "%v", err)
			case r.UpstreamURL != nil && r.UpstreamURL.Scheme != "https":
				p.Add(confkit.Join(rp, "tls_ca_file"), "is for an https upstream; %s is %s", confkit.Join(rp, "upstream"), r.UpstreamURL.Scheme)
			default:
				r.rootCAs, r.caSum = pool, sum
			}
		}
		key := r.Host + " " + r.Path
		if j, dup := keys[key]; dup && r.Host != "" {
			p.Add(confkit.Join(rp, "path"), "host %q and path %q are already routed by %s", r.Host, r.Path, confkit.Index(path, j))
		} else {
			keys[key] = i
		}
	}
}

func checkHostPattern(h string) error {
	if h == "" {
		return fmt.Errorf("is required: give a host name such as app.example.com or *.example.com")
	}
	if strings.ContainsAny(h, ":/ ") {
		return fmt.Errorf("%q must be a bare host name without port, scheme or path", h)
	}
	name := strings.TrimSuffix(strings.ToLower(h), ".")
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		name = rest
		if strings.Contains(rest, "*") {
			return fmt.Errorf("%q: only one leading \"*.\" wildcard label is allowed", h)
		}
	}
	if !validHostname(name) {
		return fmt.Errorf("%q is not a valid host name (use the ASCII/punycode form for international names)", h)
	}
	return nil
}

func normalizePattern(h string) string {
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// validHostname reports whether s is an ASCII DNS name or an IP literal.
func validHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	if _, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return true
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// loadRootCAs returns the system's CA pool plus the certificates of the PEM
// file at path, and the file's SHA-256.
func loadRootCAs(path string) (*x509.CertPool, string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("cannot be read: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(data) {
		return nil, "", fmt.Errorf("%s holds no PEM certificate", path)
	}
	sum := sha256.Sum256(data)
	return pool, hex.EncodeToString(sum[:]), nil
}

// transportKey names the transport a route needs of its own ("" for the
// shared one): routes with the same key share one, across reloads too.
func (r *Route) transportKey() string {
	switch {
	case r.rootCAs != nil:
		return "ca:" + r.caSum
	case r.h2c:
		return "h2c"
	}
	return ""
}

// newOwnTransport builds the transport transportKey names.
func (r *Route) newOwnTransport() *http.Transport {
	t := NewTransport()
	if r.rootCAs != nil {
		t.TLSClientConfig = &tls.Config{RootCAs: r.rootCAs, MinVersion: tls.VersionTLS12}
	}
	if r.h2c {
		t.Protocols = new(http.Protocols)
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	return t
}
