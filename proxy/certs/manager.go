// Package certs gives Portcullis's HTTPS listener its certificates, in one
// of three modes (SPEC §2 `tls.mode`):
//
//   - self-signed: a local CA, created once in <data_dir>/ca/ and reused,
//     issues a leaf certificate per route host on demand; users trust the CA
//     file (Manager.CAFile) to get rid of browser warnings.
//   - files: one certificate chain and key read from files and re-read when
//     they change, so renewals by an outside tool are picked up.
//   - acme: certificates obtained and renewed from an ACME CA with certmagic,
//     on a certmagic.Config of our own (never certmagic's package defaults).
//     HTTP-01 is answered by Manager.HTTPHandler on listen.http and
//     TLS-ALPN-01 by Manager.TLSConfig on listen.https.
//
// Replicas in acme mode may share tls.acme.storage: certmagic locks a
// certificate in storage before ordering it, so one replica orders it and
// the others load it (see ACMEConfig).
package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Clock tells the time; tests pass a fake.
type Clock interface{ Now() time.Time }

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// Options are what a Manager needs besides its Config.
type Options struct {
	// Logger receives the Manager's logs, certmagic's included. Default:
	// discard.
	Logger *slog.Logger
	// Clock dates self-signed certificates and decides when they are
	// re-issued. Default: the wall clock.
	Clock Clock
	// HTTPAddr is listen.http, or "" when there is no HTTP listener (then
	// the http-01 challenge is not used).
	HTTPAddr string
	// HTTPSAddr is listen.https; its port is where TLS-ALPN-01 is answered
	// and, unless RedirectPort is set, where HTTPHandler redirects to.
	HTTPSAddr string
	// RedirectPort is the public HTTPS port used in redirects, for when a
	// port forward or load balancer maps 443 to listen.https. 0 means the
	// port of HTTPSAddr; 443 is left out of the URL.
	RedirectPort int
	// ReloadInterval is how often mode files checks the files for changes
	// (default one minute). SetHosts also checks.
	ReloadInterval time.Duration
	// MaxLeaves caps the self-signed leaf certificates kept in memory
	// (default 1024).
	MaxLeaves int
}

// Manager serves certificates to the HTTPS listener and answers the HTTP
// listener. Its methods are safe for concurrent use; SetHosts may be called
// at any time (on every reload) and takes effect for the next handshake.
type Manager struct {
	cfg          Config
	log          *slog.Logger
	clock        Clock
	redirectPort int

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	hosts atomic.Pointer[hostSet]

	ca    *localCA   // self-signed
	files *fileCert  // files
	acme  *acmeState // acme

	closeOnce sync.Once
}

// New builds the Manager for cfg (which must have passed Validate, with
// defaults set). It creates or loads the local CA in <dataDir>/ca/ (mode
// self-signed), reads the certificate files (mode files) or prepares
// certmagic (mode acme); no certificate is requested until SetHosts.
// Background work (file reloads, ACME renewals) stops when ctx is done or
// Close is called.
func New(ctx context.Context, cfg Config, dataDir string, opts Options) (*Manager, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = wallClock{}
	}
	if opts.ReloadInterval <= 0 {
		opts.ReloadInterval = time.Minute
	}
	if opts.MaxLeaves <= 0 {
		opts.MaxLeaves = 1024
	}
	m := &Manager{cfg: cfg, log: opts.Logger, clock: opts.Clock}
	m.hosts.Store(&hostSet{})
	m.redirectPort = opts.RedirectPort
	if m.redirectPort == 0 && opts.HTTPSAddr != "" {
		p, err := addrPort(opts.HTTPSAddr)
		if err != nil {
			return nil, fmt.Errorf("certs: listen.https: %w", err)
		}
		m.redirectPort = p
	}
	m.ctx, m.cancel = context.WithCancel(ctx)

	var err error
	switch cfg.Mode {
	case ModeSelfSigned:
		m.ca, err = loadOrCreateCA(caDir(dataDir), m.clock, opts.MaxLeaves, m.log)
	case ModeFiles:
		m.files, err = newFileCert(cfg.CertFile, cfg.KeyFile, m.log)
		if err == nil {
			m.wg.Add(1)
			go m.watchFiles(opts.ReloadInterval)
		}
	case ModeACME:
		m.acme, err = newACME(m.ctx, cfg.ACME, opts, m.log)
	default:
		err = fmt.Errorf("certs: unknown tls.mode %q", cfg.Mode)
	}
	if err != nil {
		m.cancel()
		m.wg.Wait()
		return nil, err
	}
	return m, nil
}

// TLSConfig returns a new tls.Config for the HTTPS listener: TLS 1.2 or
// later with forward-secret AEAD suites, ALPN h2 and http/1.1 (and
// acme-tls/1 in mode acme), and certificates chosen by SNI from the hosts
// last given to SetHosts. A handshake for a name that is not one of those
// hosts fails (mode files excepted, which has only one certificate to
// offer); a handshake without SNI gets the first host's certificate.
func (m *Manager) TLSConfig() *tls.Config {
	c := &tls.Config{
		MinVersion: tls.VersionTLS12,
		CipherSuites: []uint16{ // TLS 1.2 only; TLS 1.3 suites are not configurable
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: m.getCertificate,
	}
	if m.acme != nil {
		c.NextProtos = append(c.NextProtos, acmeTLS1)
	}
	return c
}

func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if m.acme != nil && m.acme.isChallengeHello(hello) {
		return m.acme.magic.GetCertificate(hello)
	}
	if m.files != nil {
		return m.files.current(), nil
	}
	hs := m.hosts.Load()
	name := normalizeHost(hello.ServerName)
	if name == "" {
		name = hs.first
		if name == "" {
			return nil, errors.New("certs: no route hosts configured")
		}
	}
	pattern, ok := hs.match(name)
	if !ok {
		return nil, fmt.Errorf("certs: %q is not a route host", name)
	}
	if m.ca != nil {
		return m.ca.leaf(pattern)
	}
	if strings.HasPrefix(pattern, "*.") {
		return nil, fmt.Errorf("certs: %q matches wildcard host %s, which acme mode cannot serve", name, pattern)
	}
	h := *hello
	h.ServerName = name
	return m.acme.magic.GetCertificate(&h)
}

// SetHosts declares the hosts certificates are served for: every route host
// and the external_url host. Wildcards ("*.example.com") match one label.
//
// In mode acme it starts obtaining certificates, in the background, for the
// hosts not managed yet (loading them from storage when present) and stops
// renewing those no longer listed; wildcard and IP hosts are skipped with a
// warning (Validate reports them). Certificate work begins once listen.https
// (and listen.http) accept connections, since challenges are answered
// through them, so SetHosts may be called before the listeners are bound.
// Handshakes for a host succeed once its certificate has arrived.
//
// In mode files it re-reads changed files and warns about hosts the
// certificate does not cover. It returns an error only when a host is
// malformed or the files cannot be read; the previous hosts then stay.
func (m *Manager) SetHosts(ctx context.Context, hosts []string) error {
	hs, err := newHostSet(hosts)
	if err != nil {
		return err
	}
	switch {
	case m.files != nil:
		if _, err := m.files.reload(); err != nil {
			return err
		}
		m.files.warnUncovered(hs.all)
	case m.ca != nil:
		m.ca.forgetExcept(hs)
	case m.acme != nil:
		m.hosts.Store(hs)
		return m.acme.manage(ctx, hs)
	}
	m.hosts.Store(hs)
	return nil
}

// HSTS returns the Strict-Transport-Security header value for HTTPS
// responses ("max-age=<seconds>"), or "" when tls.hsts is not set.
func (m *Manager) HSTS() string {
	if m.cfg.HSTS <= 0 {
		return ""
	}
	return "max-age=" + strconv.FormatInt(int64(m.cfg.HSTS.Duration()/time.Second), 10)
}

// CAFile returns the path of the local CA certificate (PEM) in mode
// self-signed, which users add to their trust store; "" in other modes.
func (m *Manager) CAFile() string {
	if m.ca == nil {
		return ""
	}
	return m.ca.certFile
}

// Close stops background work (file checks, ACME renewals). Handshakes
// after Close may fail.
func (m *Manager) Close() error {
	m.closeOnce.Do(func() {
		m.cancel()
		m.wg.Wait()
		if m.acme != nil {
			m.acme.close()
		}
	})
	return nil
}

func (m *Manager) watchFiles(every time.Duration) {
	defer m.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
			if _, err := m.files.reload(); err != nil {
				m.log.Error("certs: keeping the previous certificate", "err", err)
			}
		}
	}
}

// hostSet is an immutable set of normalized hosts.
type hostSet struct {
	all   []string        // in the order given, without duplicates
	exact map[string]bool // exact names
	wild  map[string]bool // wildcard patterns, "*.example.com"
	first string
}

func newHostSet(hosts []string) (*hostSet, error) {
	hs := &hostSet{exact: map[string]bool{}, wild: map[string]bool{}}
	for _, raw := range hosts {
		h := normalizeHost(raw)
		if h == "" || strings.ContainsAny(h, "/:@ \t") && net.ParseIP(strings.Trim(h, "[]")) == nil {
			return nil, fmt.Errorf("certs: %q is not a host name", raw)
		}
		h = strings.Trim(h, "[]")
		if strings.Contains(h, "*") && (!strings.HasPrefix(h, "*.") || strings.Count(h, "*") > 1 || len(h) < 3) {
			return nil, fmt.Errorf("certs: %q: a wildcard must be the whole leftmost label, as in *.example.com", raw)
		}
		if slices.Contains(hs.all, h) {
			continue
		}
		hs.all = append(hs.all, h)
		if strings.HasPrefix(h, "*.") {
			hs.wild[h] = true
		} else {
			hs.exact[h] = true
		}
	}
	if len(hs.all) > 0 {
		hs.first = hs.all[0]
	}
	return hs, nil
}

// match returns the host pattern that serves name (normalized): name
// itself, or the wildcard covering its first label.
func (hs *hostSet) match(name string) (string, bool) {
	if hs.exact[name] {
		return name, true
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if p := "*" + name[i:]; hs.wild[p] {
			return p, true
		}
	}
	return "", false
}

func addrPort(addr string) (int, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || n > 65535 {
		return 0, fmt.Errorf("bad port in %q", addr)
	}
	return n, nil
}

const acmeTLS1 = "acme-tls/1"
