package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/identity"
	"github.com/portcullis/portcullis/internal/config"
	"github.com/portcullis/portcullis/internal/confkit"
	"github.com/portcullis/portcullis/internal/demoapp"
	"github.com/portcullis/portcullis/internal/devidp"
	"github.com/portcullis/portcullis/policies"
	"github.com/portcullis/portcullis/policy"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/certs"
)

// Fixed parts of the `dev` setup.
const (
	devDefaultListen = "127.0.0.1:8443"
	devDefaultData   = "./portcullis-data"
	devIDPPath       = "/.devidp"
	devRouteName     = "demo"
	devRoutePolicy   = "portcullis.routes.demo"
	devProviderName  = "dev"
)

// runDev is `portcullis dev` (SPEC §1): the same app `serve` runs, wired
// in code with an embedded identity provider, a demo upstream, the shipped
// policies and a local CA, so that a first sign-in needs no setup at all.
func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("dev", "dev [--listen ADDR] [--pulsar URL] [--data DIR] [--policies DIR]", stderr)
	listen := fs.String("listen", devDefaultListen, "HTTPS listen `address`; open https://localhost:PORT")
	pulsarURL := fs.String("pulsar", "", "also send audit events to the Pulsar cluster at `URL` (topic "+defaultAuditTopic+")")
	dataDir := fs.String("data", devDefaultData, "`directory` for the local CA, keys, spool and audit.jsonl")
	policyDir := fs.String("policies", "", "policy `directory` (default: ./policies when it holds routes/demo.rego, else the policies shipped in the binary)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	d, err := startDev(ctx, devSettings{
		Listen: *listen, Pulsar: *pulsarURL, Data: *dataDir, Policies: *policyDir, Logger: log,
	})
	if err != nil {
		return fail(stderr, "dev: %v", err)
	}
	d.printBanner(stdout)
	if err := d.run(ctx); err != nil {
		return fail(stderr, "dev: %v", err)
	}
	return exitOK
}

// devSettings are the flags of `dev`.
type devSettings struct {
	Listen, Pulsar, Data, Policies string
	Logger                         *slog.Logger
}

// devStack is a wired `dev` ready to run: its listeners are bound, so
// clients (the identity package discovering the embedded provider among
// them) may connect before run starts serving.
type devStack struct {
	log      *slog.Logger
	app      *app
	opts     appOptions
	cfg      *config.File
	external string // https://localhost:PORT
	caFile   string
	policies string // directory in use, and how it was chosen
	polNote  string
	demo     *http.Server
	demoLn   net.Listener
	adminURL string
	pulsar   string
}

func startDev(ctx context.Context, s devSettings) (_ *devStack, err error) {
	data, err := filepath.Abs(s.Data)
	if err != nil {
		return nil, fmt.Errorf("--data: %w", err)
	}
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, fmt.Errorf("--data: %w", err)
	}

	// Bind first: the port goes into every URL, and a bound listener lets
	// the identity package discover the provider mounted on it while the
	// server is still starting (connections wait in the backlog).
	var lns []net.Listener
	defer func() {
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
		}
	}()
	bind := func(what, addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		lns = append(lns, ln)
		return ln, nil
	}
	httpsLn, err := bind("--listen", s.Listen)
	var addrErr *net.AddrError
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return nil, fmt.Errorf("%w (is another portcullis dev running? pick another port with --listen 127.0.0.1:PORT)", err)
	case errors.As(err, &addrErr):
		return nil, fmt.Errorf("%w (give HOST:PORT, such as %s)", err, devDefaultListen)
	case err != nil:
		return nil, err
	}
	adminLn, err := bind("admin listener", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	demoLn, err := bind("demo app listener", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := httpsLn.Addr().(*net.TCPAddr).Port
	origin := net.JoinHostPort("localhost", strconv.Itoa(port))
	external := "https://" + origin

	polDir, polNote, err := devPolicyDir(s.Policies, data)
	if err != nil {
		return nil, err
	}

	idpClient, err := devidp.DemoClient([]string{external + identity.PathCallback}, []string{external + identity.PathLogout})
	if err != nil {
		return nil, err
	}
	idp, err := devidp.New(devidp.Options{
		Logger:  s.Logger.With("component", "devidp"),
		Issuer:  external + devIDPPath,
		Users:   devidp.DemoUsers(),
		Clients: []devidp.Client{idpClient},
	})
	if err != nil {
		return nil, err
	}

	cfg := &config.File{
		DataDir: data,
		Listen:  proxy.ListenConfig{HTTPS: httpsLn.Addr().String(), Admin: adminLn.Addr().String()},
		TLS:     certs.Config{Mode: certs.ModeSelfSigned},
		Identity: identity.Config{
			ExternalURL: external,
			Providers: []identity.ProviderConfig{{
				Name: devProviderName, Issuer: idp.Issuer(), ClientID: idpClient.ID, ClientSecret: idpClient.Secret,
			}},
			// A fresh secret per run: sessions end with the process, as the
			// embedded provider's do.
			Session: identity.SessionConfig{Secrets: []string{newDevSecret()}},
		},
		Policy: policy.Config{Dir: polDir},
		Routes: []proxy.Route{{
			Name: devRouteName, Host: "localhost", Path: "/",
			Upstream: "http://" + demoLn.Addr().String(), Policy: devRoutePolicy,
		}},
		Audit: audit.Config{File: audit.FileConfig{Path: filepath.Join(data, "audit.jsonl")}},
		Log:   config.LogConfig{Format: "text"},
	}
	if s.Pulsar != "" {
		cfg.Audit.Pulsar = audit.PulsarConfig{URL: s.Pulsar, Topic: defaultAuditTopic}
	}
	cfg.SetDefaults()
	var problems confkit.Problems
	cfg.Validate(&problems)
	if err := problems.Err(); err != nil {
		return nil, err
	}

	// The local CA must exist before the app does: the clients that reach
	// the provider and the JWKS through the proxy's own listener trust it.
	cm, err := certs.New(ctx, cfg.TLS, cfg.DataDir, certs.Options{Logger: s.Logger})
	if err != nil {
		return nil, err
	}
	caFile := cm.CAFile()
	cm.Close()
	client, err := devHTTPClient(caFile, origin, loopbackAddr(httpsLn.Addr().(*net.TCPAddr)))
	if err != nil {
		return nil, err
	}

	demo, err := demoapp.New(demoapp.Options{
		Logger:     s.Logger.With("component", "demoapp"),
		JWKSURL:    external + identity.PathJWKS,
		Issuer:     external,
		Audience:   cfg.Routes[0].Audience(),
		HTTPClient: client,
	})
	if err != nil {
		return nil, err
	}

	opts := appOptions{
		Logger:     s.Logger,
		HTTPS:      httpsLn,
		Admin:      adminLn,
		HTTPClient: client,
		Mounts:     map[string]http.Handler{devIDPPath + "/": idp},
	}
	if s.Pulsar != "" {
		opts.NewAuditSink = fileAndPulsarSink
	}
	a, err := newApp(ctx, cfg, "", opts)
	if err != nil {
		return nil, err
	}
	return &devStack{
		log: s.Logger, app: a, opts: opts, cfg: cfg, external: external, caFile: caFile,
		policies: polDir, polNote: polNote,
		demo: &http.Server{
			Handler:           demo,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(s.Logger.Handler(), slog.LevelWarn),
		},
		demoLn:   demoLn,
		adminURL: "http://" + adminLn.Addr().String(),
		pulsar:   s.Pulsar,
	}, nil
}

// run serves until ctx is done, then drains the proxy before stopping the
// demo app behind it.
func (d *devStack) run(ctx context.Context) error {
	appCtx, stop := context.WithCancel(ctx)
	defer stop()
	demoDone := make(chan error, 1)
	go func() {
		err := d.demo.Serve(d.demoLn)
		if !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("dev: demo app stopped", "err", err)
			stop()
		}
		demoDone <- err
	}()
	err := d.app.Run(appCtx, d.opts)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if serr := d.demo.Shutdown(sctx); serr != nil {
		d.demo.Close()
	}
	if derr := <-demoDone; err == nil && !errors.Is(derr, http.ErrServerClosed) {
		err = fmt.Errorf("demo app: %w", derr)
	}
	return err
}

// printBanner tells the user what to open and how to sign in.
func (d *devStack) printBanner(w io.Writer) {
	auditPath := d.cfg.Audit.File.Path
	var users []devidp.User
	width := 0
	for _, u := range devidp.DemoUsers() {
		if u.Hint {
			users = append(users, u)
			width = max(width, len(u.Username)+3+len(u.Password))
		}
	}
	const labelWidth = len("Identity provider")
	line := func(label, format string, args ...any) {
		fmt.Fprintf(w, "  %-*s  %s\n", labelWidth, label, fmt.Sprintf(format, args...))
	}
	fmt.Fprintf(w, "\nPortcullis dev is running.\n\n")
	line("Open", "%s/", d.external)
	for i, u := range users {
		label := ""
		if i == 0 {
			label = "Sign in as"
		}
		line(label, "%-*s  (groups: %s)", width, u.Username+" / "+u.Password, strings.Join(u.Groups, ", "))
	}
	line("Then try", "%s/admin: for group admins only, so bob gets in and alice is refused", d.external)
	fmt.Fprintln(w)
	line("Local CA", "%s", d.caFile)
	line("", "trust it to avoid the certificate warning, or: curl --cacert %s %s/.portcullis/me", d.caFile, d.external)
	line("Identity provider", "%s%s (demo users only; discovery at %s/.well-known/openid-configuration)", d.external, devIDPPath, devIDPPath)
	line("Upstream", "demo app at %s (route %q, host localhost, policy %s)", d.cfg.Routes[0].Upstream, devRouteName, devRoutePolicy)
	line("Policies", "%s (%s)", d.policies, d.polNote)
	line("Audit", "%s", auditPath)
	line("", "follow it: portcullis audit tail --file %s", auditPath)
	if d.pulsar != "" {
		line("", "and in Pulsar: portcullis audit tail --pulsar %s --topic %s", d.pulsar, defaultAuditTopic)
	}
	line("Admin", "%s/healthz  /readyz  /metrics", d.adminURL)
	fmt.Fprintf(w, "\nPress Ctrl-C to stop.\n\n")
}

// devPolicyDir picks the policies: --policies when given; ./policies when
// it holds the demo route's package (a checkout of the repository, or the
// user's own copy: edits are reloaded live); otherwise the policies shipped
// in the binary, written to <data>/policies.
func devPolicyDir(flagDir, data string) (dir, note string, err error) {
	if flagDir != "" {
		abs, err := filepath.Abs(flagDir)
		if err != nil {
			return "", "", fmt.Errorf("--policies: %w", err)
		}
		return abs, "from --policies; edits are reloaded live", nil
	}
	if _, err := os.Stat(filepath.Join("policies", "routes", "demo.rego")); err == nil {
		abs, err := filepath.Abs("policies")
		if err != nil {
			return "", "", err
		}
		return abs, "edits are reloaded live", nil
	}
	dir = filepath.Join(data, "policies")
	// The copy is ours: it is rewritten at every start so that it always
	// matches the binary.
	if err := os.RemoveAll(dir); err != nil {
		return "", "", fmt.Errorf("policies: %w", err)
	}
	if err := os.CopyFS(dir, policies.FS()); err != nil {
		return "", "", fmt.Errorf("policies: writing the shipped policies to %s: %w", dir, err)
	}
	return dir, "the shipped policies, rewritten at every start; copy them to ./policies to edit", nil
}

// newDevSecret returns a random session secret (256 bits, base64).
func newDevSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.StdEncoding.EncodeToString(b)
}

// loopbackAddr is where the process itself reaches the HTTPS listener:
// its own address, or loopback when it listens on every interface.
func loopbackAddr(a *net.TCPAddr) string {
	ip := a.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(a.Port))
}

// devHTTPClient reaches the proxy's own origin (the embedded provider and
// the JWKS) from inside the process: it trusts only the local CA, and
// dials origin ("localhost:PORT") at the listener's address whatever the
// resolver says about localhost.
func devHTTPClient(caFile, origin, dialAddr string) (*http.Client, error) {
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("local CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("local CA: no certificate in %s", caFile)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2: true,
			IdleConnTimeout:   90 * time.Second,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if addr == origin {
					addr = dialAddr
				}
				return dialer.DialContext(ctx, network, addr)
			},
		},
	}, nil
}

// fileAndPulsarSink is the audit sink of `dev --pulsar`: the JSONL file and
// the Pulsar topic together.
func fileAndPulsarSink(ctx context.Context, cfg audit.Config, opts audit.SinkOptions) (audit.Sink, error) {
	file, err := audit.NewFileSink(cfg.File, audit.FileSinkOptions{Logger: opts.Logger})
	if err != nil {
		return nil, err
	}
	pc := cfg
	pc.Sink = audit.SinkPulsar
	ps, err := audit.NewSink(ctx, pc, opts)
	if err != nil {
		file.Close()
		return nil, err
	}
	return audit.NewMultiSink(file, ps), nil
}
