package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// acmeState is mode acme: a certmagic.Config and Cache of our own.
type acmeState struct {
	magic  *certmagic.Config
	cache  *certmagic.Cache
	issuer *certmagic.ACMEIssuer
	ctx    context.Context // the Manager's; ends at Close
	log    *slog.Logger

	// listeners are the addresses whose listeners answer challenges;
	// management waits until they accept connections.
	listeners []string

	mu      sync.Mutex
	managed map[string]bool
}

func newACME(ctx context.Context, ac ACMEConfig, opts Options, log *slog.Logger) (*acmeState, error) {
	var roots *x509.CertPool
	if ac.TrustedRoots != "" {
		pemData, err := os.ReadFile(ac.TrustedRoots)
		if err != nil {
			return nil, fmt.Errorf("certs: tls.acme.trusted_roots: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("certs: tls.acme.trusted_roots: %s holds no PEM certificate", ac.TrustedRoots)
		}
	}
	challenges := ac.Challenges
	if len(challenges) == 0 {
		challenges = []string{ChallengeHTTP01, ChallengeTLSALPN01}
	}
	useHTTP := slices.Contains(challenges, ChallengeHTTP01) && opts.HTTPAddr != ""
	useTLSALPN := slices.Contains(challenges, ChallengeTLSALPN01)
	if !useHTTP && !useTLSALPN {
		return nil, fmt.Errorf("certs: tls.acme.challenges lists only http-01, which needs listen.http")
	}
	if useTLSALPN && opts.HTTPSAddr == "" {
		return nil, fmt.Errorf("certs: the tls-alpn-01 challenge needs listen.https")
	}

	zl := zap.New(&slogCore{log: log})
	var listeners []string
	tmpl := certmagic.ACMEIssuer{
		CA:                      ac.CA,
		Email:                   ac.Email,
		Agreed:                  true,
		TrustedRoots:            roots,
		DisableHTTPChallenge:    !useHTTP,
		DisableTLSALPNChallenge: !useTLSALPN,
		Logger:                  zl,
	}
	// certmagic tries to bind host:port to answer a challenge and, finding
	// our listener there, leaves the answer to it; the host must be the one
	// our listener is bound to or the bind conflicts in another way.
	if useHTTP {
		host, _, _ := net.SplitHostPort(opts.HTTPAddr)
		p, err := addrPort(opts.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("certs: listen.http: %w", err)
		}
		tmpl.ListenHost, tmpl.AltHTTPPort = host, p
		listeners = append(listeners, opts.HTTPAddr)
	}
	if useTLSALPN {
		host, _, _ := net.SplitHostPort(opts.HTTPSAddr)
		p, err := addrPort(opts.HTTPSAddr)
		if err != nil {
			return nil, fmt.Errorf("certs: listen.https: %w", err)
		}
		if useHTTP && tmpl.ListenHost != host {
			log.Warn("certs: listen.http and listen.https are bound to different hosts; ACME challenges use the host of listen.http",
				"http", opts.HTTPAddr, "https", opts.HTTPSAddr)
		} else {
			tmpl.ListenHost = host
		}
		tmpl.AltTLSALPNPort = p
		listeners = append(listeners, opts.HTTPSAddr)
	}

	a := &acmeState{ctx: ctx, log: log, listeners: listeners, managed: map[string]bool{}}
	a.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return a.magic, nil },
		Logger:           zl,
	})
	a.magic = certmagic.New(a.cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: ac.Storage},
		Logger:  zl,
	})
	a.issuer = certmagic.NewACMEIssuer(a.magic, tmpl)
	a.magic.Issuers = []certmagic.Issuer{a.issuer}
	return a, nil
}

// isChallengeHello reports a TLS-ALPN-01 validation handshake (RFC 8737:
// the only ALPN protocol offered is acme-tls/1).
func (a *acmeState) isChallengeHello(h *tls.ClientHelloInfo) bool {
	return h.ServerName != "" && len(h.SupportedProtos) == 1 && h.SupportedProtos[0] == acmeTLS1
}

// manage starts managing the DNS names of hs that are not managed yet and
// stops renewing those no longer in hs.
func (a *acmeState) manage(_ context.Context, hs *hostSet) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var add []string
	want := map[string]bool{}
	for _, h := range hs.all {
		if strings.HasPrefix(h, "*.") || net.ParseIP(h) != nil {
			a.log.Warn("certs: acme mode cannot obtain a certificate for this host; use tls.mode: files", "host", h)
			continue
		}
		want[h] = true
		if !a.managed[h] {
			add = append(add, h)
		}
	}
	var drop []certmagic.SubjectIssuer
	for h := range a.managed {
		if !want[h] {
			drop = append(drop, certmagic.SubjectIssuer{Subject: h, IssuerKey: a.issuer.IssuerKey()})
		}
	}
	if len(drop) > 0 {
		a.cache.RemoveManaged(drop)
	}
	a.managed = want
	if len(add) == 0 {
		return nil
	}
	// The Manager's context, not the caller's: management outlives the
	// reload that asked for it. It starts once our listeners accept
	// connections: certmagic binds a challenge port itself when nothing
	// listens there, which would take the port from our server.
	go func() {
		if err := waitListening(a.ctx, a.listeners); err != nil {
			return
		}
		if err := a.magic.ManageAsync(a.ctx, add); err != nil {
			a.log.Error("certs: managing ACME certificates", "hosts", add, "err", err)
			return
		}
		a.log.Info("certs: managing ACME certificates", "hosts", add)
	}()
	return nil
}

// waitListening returns once every address accepts TCP connections, or
// with ctx's error.
func waitListening(ctx context.Context, addrs []string) error {
	d := net.Dialer{Timeout: time.Second}
	for _, addr := range addrs {
		for {
			c, err := d.DialContext(ctx, "tcp", addr)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// handleChallenge answers an ACME HTTP-01 request started by this process
// or, through the shared storage, by another replica.
func (a *acmeState) handleChallenge(w http.ResponseWriter, r *http.Request) bool {
	return a.issuer.HandleHTTPChallenge(w, r)
}

func (a *acmeState) close() { a.cache.Stop() }

// slogCore hands certmagic's zap logs to a *slog.Logger.
type slogCore struct {
	log    *slog.Logger
	fields []zapcore.Field
}

var _ zapcore.Core = (*slogCore)(nil)

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	}
	return slog.LevelError
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return c.log.Enabled(context.Background(), slogLevel(l))
}

func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, fields: append(slices.Clip(c.fields), fs...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	attrs := make([]slog.Attr, 0, len(keys)+1)
	attrs = append(attrs, slog.String("component", "certmagic"))
	if e.LoggerName != "" {
		attrs = append(attrs, slog.String("logger", e.LoggerName))
	}
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	c.log.LogAttrs(context.Background(), slogLevel(e.Level), e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
