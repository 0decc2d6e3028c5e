package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/identity"
	"github.com/portcullis/portcullis/internal/config"
	"github.com/portcullis/portcullis/policy"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/certs"
)

// app is one running Portcullis: the proxy and everything it composes,
// wired from a config.File, with reload on SIGHUP and file changes.
type app struct {
	cfgPath string // "" when the config did not come from a file (dev)
	log     *slog.Logger
	reg     *prometheus.Registry

	pipeline *audit.Pipeline
	engine   *policy.Engine
	certs    *certs.Manager
	handler  *proxy.Handler
	server   *proxy.Server

	mu  sync.Mutex // serializes reloads
	cfg *config.File
	// replay outlives the Authenticators reloads build: a used login state
	// or hand-over code stays used.
	replay *identity.ReplayCache
}

// appOptions carry what differs between `serve`, `dev` and tests.
type appOptions struct {
	Logger *slog.Logger
	// Listeners replace the configured addresses when set (tests).
	HTTPS, HTTP, Admin net.Listener
	// HTTPClient is used to reach identity providers (dev passes one that
	// trusts the local CA).
	HTTPClient *http.Client
	// ExtraReady adds readiness checks.
	ExtraReady map[string]proxy.Check
	// Mounts are served on the HTTPS listener ahead of routing, by path
	// prefix (dev mounts its identity provider at /.devidp/).
	Mounts map[string]http.Handler
	// NewAuditSink replaces audit.NewSink (dev --pulsar writes to the file
	// and to Pulsar).
	NewAuditSink func(ctx context.Context, cfg audit.Config, opts audit.SinkOptions) (audit.Sink, error)
}

// newLogger builds the process logger from the log section.
func newLogger(cfg config.LogConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level))
	hopts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "text" {
		return slog.New(slog.NewTextHandler(w, hopts))
	}
	return slog.New(slog.NewJSONHandler(w, hopts))
}

func newApp(ctx context.Context, cfg *config.File, cfgPath string, opts appOptions) (*app, error) {
	a := &app{cfgPath: cfgPath, log: opts.Logger, reg: prometheus.NewRegistry(), cfg: cfg, replay: identity.NewReplayCache()}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}

	newSink := audit.NewSink
	if opts.NewAuditSink != nil {
		newSink = opts.NewAuditSink
	}
	sink, err := newSink(ctx, cfg.Audit, audit.SinkOptions{Logger: a.log, Registerer: a.reg})
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	a.pipeline, err = audit.Open(ctx, cfg.Audit, cfg.DataDir, sink, audit.Options{Logger: a.log, Registerer: a.reg})
	if err != nil {
		sink.Close()
		return nil, err
	}

	a.engine, err = policy.NewEngine(cfg.Policy, policy.Options{Logger: a.log, Registerer: a.reg})
	if err == nil {
		_ = a.engine.SetPackages(cfg.Packages()) // nothing loaded yet: Reload checks them
		err = a.engine.Reload(ctx)
	}
	if err != nil {
		a.pipeline.Close(ctx)
		return nil, err
	}

	a.certs, err = certs.New(ctx, cfg.TLS, cfg.DataDir, certs.Options{Logger: a.log, HTTPAddr: cfg.Listen.HTTP, HTTPSAddr: cfg.Listen.HTTPS})
	if err != nil {
		a.pipeline.Close(ctx)
		return nil, err
	}
	if err := a.certs.SetHosts(ctx, cfg.Hosts()); err != nil {
		a.pipeline.Close(ctx)
		return nil, err
	}

	st, err := a.buildState(ctx, cfg, opts)
	if err != nil {
		a.pipeline.Close(ctx)
		return nil, err
	}
	a.handler, err = proxy.NewHandler(st, proxy.Options{
		Logger: a.log, Registerer: a.reg, Audit: a.pipeline,
		FailClosed: cfg.Audit.Mode == audit.ModeFailClosed,
		AccessLog:  *cfg.Log.AccessLog,
	})
	if err != nil {
		a.pipeline.Close(ctx)
		return nil, err
	}
	ready := map[string]proxy.Check{
		"config": func(context.Context) error { return nil },
		"policy": func(context.Context) error {
			if a.engine.Current() == nil {
				return errors.New("no policies loaded")
			}
			return nil
		},
		"audit": func(context.Context) error { return auditReadiness(a.pipeline) },
	}
	for k, v := range opts.ExtraReady {
		ready[k] = v
	}
	a.server = &proxy.Server{
		Handler: a.handler, TLS: a.certs, Listen: cfg.Listen, Server: cfg.Server,
		Logger: a.log, Gatherer: a.reg, Ready: ready, Mounts: opts.Mounts,
		HTTPSListener: opts.HTTPS, HTTPListener: opts.HTTP, AdminListener: opts.Admin,
	}
	return a, nil
}

// buildState turns a validated config into the proxy's swappable state.
func (a *app) buildState(ctx context.Context, cfg *config.File, opts appOptions) (*proxy.State, error) {
	auth, err := identity.New(ctx, cfg.Identity, cfg.Assertion, identity.Options{
		Logger:      a.log,
		HTTPClient:  opts.HTTPClient,
		HostAllowed: a.hostAllowed,
		HTTPSPort:   portOf(cfg.Listen.HTTPS),
		Replay:      a.replay,
	})
	if err != nil {
		return nil, err
	}
	return &proxy.State{
		Routes:       append([]proxy.Route(nil), cfg.Routes...),
		Listen:       cfg.Listen,
		Server:       cfg.Server,
		Auth:         auth,
		Policy:       a.engine,
		ExternalHost: cfg.ExternalHost(),
		HSTS:         a.certs.HSTS(),
	}, nil
}

// hostAllowed follows reloads: the identity package asks it whether a
// return-to host is one of ours.
func (a *app) hostAllowed(host string) bool {
	return a.handler != nil && a.handler.HostAllowed(host)
}

// Run serves until ctx is cancelled; then it drains requests and flushes the
// audit spool before returning.
func (a *app) Run(ctx context.Context, opts appOptions) error {
	g, gctx := errgroup.WithContext(ctx)
	auditCtx, stopAudit := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAudit()
	auditDone := make(chan error, 1)
	go func() { auditDone <- a.pipeline.Run(auditCtx) }()

	g.Go(func() error { return a.server.Run(gctx) })
	g.Go(func() error { return a.engine.Run(gctx) })
	g.Go(func() error { return a.watchReload(gctx, opts) })
	err := g.Wait()

	// Requests have drained: flush what the spool holds, then stop.
	flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if cerr := a.pipeline.Close(flushCtx); cerr != nil {
		a.log.Error("audit: closing the pipeline", "err", cerr)
	}
	stopAudit()
	<-auditDone
	a.certs.Close()
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// watchReload reloads on SIGHUP and when the config file changes.
func (a *app) watchReload(ctx context.Context, opts appOptions) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var fileEvents <-chan fsnotify.Event
	if a.cfgPath != "" {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			a.log.Warn("config file watching disabled; reload with SIGHUP", "err", err)
		} else {
			defer w.Close()
			// Watch the directory: editors replace files by rename.
			if err := w.Add(filepath.Dir(a.cfgPath)); err != nil {
				a.log.Warn("config file watching disabled; reload with SIGHUP", "err", err)
			} else {
				fileEvents = w.Events
			}
		}
	}
	var debounce <-chan time.Time
	abs, _ := filepath.Abs(a.cfgPath)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			a.log.Info("SIGHUP: reloading configuration")
			a.Reload(ctx, opts)
		case ev := <-fileEvents:
			if p, _ := filepath.Abs(ev.Name); p == abs && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
				debounce = time.After(200 * time.Millisecond)
			}
		case <-debounce:
			debounce = nil
			a.log.Info("configuration file changed: reloading", "path", a.cfgPath)
			a.Reload(ctx, opts)
		}
	}
}

// Reload reads the config file again and swaps it in atomically. A config
// with problems is logged with every problem and the running one keeps
// serving. Settings that need a restart (listeners, data_dir, audit, policy
// dir) are logged and kept as they were.
func (a *app) Reload(ctx context.Context, opts appOptions) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cfgPath == "" {
		return nil
	}
	cfg, err := config.Load(a.cfgPath, nil)
	if err == nil {
		err = a.apply(ctx, cfg, opts)
	}
	if err != nil {
		a.handler.ObserveReload(false)
		a.log.Error("reload failed: the previous configuration keeps serving", "err", err.Error())
		return err
	}
	a.handler.ObserveReload(true)
	a.log.Info("configuration reloaded", "routes", len(cfg.Routes))
	return nil
}

func (a *app) apply(ctx context.Context, cfg *config.File, opts appOptions) error {
	old := a.cfg
	for name, same := range map[string]bool{
		"listen":   reflect.DeepEqual(old.Listen, cfg.Listen),
		"data_dir": old.DataDir == cfg.DataDir,
		"audit":    reflect.DeepEqual(old.Audit, cfg.Audit),
		"tls":      reflect.DeepEqual(old.TLS, cfg.TLS),
		"server":   reflect.DeepEqual(old.Server, cfg.Server),
		"policy":   reflect.DeepEqual(old.Policy, cfg.Policy),
	} {
		if !same {
			a.log.Warn("this section changed but only takes effect on restart; the running value is kept", "section", name)
		}
	}
	cfg.Listen, cfg.DataDir, cfg.Audit, cfg.TLS, cfg.Server, cfg.Policy = old.Listen, old.DataDir, old.Audit, old.TLS, old.Server, old.Policy

	// A route naming a package the loaded policies lack is refused before
	// anything is swapped.
	if err := a.engine.Current().Prepare(ctx, cfg.Packages()); err != nil {
		return err
	}
	st, err := a.buildState(ctx, cfg, opts)
	if err != nil {
		return err
	}
	if err := a.certs.SetHosts(ctx, cfg.Hosts()); err != nil {
		return err
	}
	if err := a.engine.SetPackages(cfg.Packages()); err != nil {
		return err
	}
	if err := a.handler.Swap(st); err != nil {
		return err
	}
	a.cfg = cfg
	return nil
}

func portOf(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return port
}

// auditReadiness is /readyz's audit check: an error while events cannot
// be recorded; otherwise whether the sink is live or events wait for it
// (in the spool, or in memory in best-effort mode).
func auditReadiness(p *audit.Pipeline) error {
	if err := p.Ready(); err != nil {
		return err
	}
	st := p.Status()
	switch {
	case st.Sink.Live:
		return proxy.ReadyNote("sink live")
	case st.Spooling:
		return proxy.ReadyNote(fmt.Sprintf("spooling: sink not live (%s); %d events waiting in the spool", st.Sink.Detail, st.Backlog))
	}
	return proxy.ReadyNote(fmt.Sprintf("sink not live (%s); %d events waiting in memory", st.Sink.Detail, st.Backlog))
}
