// Package policy decides, for every request on every route, whether it may
// pass: it compiles the Rego modules of a directory once per load with Open
// Policy Agent, evaluates the route's package in-process against the input
// document of SPEC §5, and swaps in new compilations atomically when the
// files change, keeping the previous set serving when a change does not
// compile.
//
// A decision never allows by accident: only a literal `allow := true`
// allows, and a missing package, an evaluation error, a panic or a timeout
// deny with outcome "error" and a reason an operator can act on.
//
// Set is one immutable compilation; Engine holds the current Set and
// reloads it. The package never imports proxy, identity or audit.
package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Options are the engine's collaborators. Every field may be left zero:
// logs are discarded, metrics are not registered, time is the system's.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Clock      Clock
}

// Engine serves decisions from the current policy Set and replaces that set
// when the policy directory changes. All methods are safe for concurrent
// use; Eval never blocks on a reload.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	clock   Clock
	metrics *metrics

	current atomic.Pointer[Set]

	mu       sync.Mutex // serializes Reload and SetPackages
	packages []string   // packages routes need; guarded by mu
	failing  bool       // the last Reload failed; guarded by mu
}

// NewEngine builds an engine for cfg (defaults filled in for empty fields)
// and registers its metrics on opts.Registerer. It loads nothing: call
// Reload once before serving (a failure there means no policy can be
// served), then Run to follow changes. Until the first successful Reload
// every decision is an error.
func NewEngine(cfg Config, opts Options) (*Engine, error) {
	cfg.SetDefaults()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	m := newMetrics()
	if opts.Registerer != nil {
		if err := m.register(opts.Registerer); err != nil {
			return nil, fmt.Errorf("policy: register metrics: %w", err)
		}
	}
	return &Engine{cfg: cfg, log: opts.Logger, clock: opts.Clock, metrics: m}, nil
}

// Config returns the configuration the engine runs with, defaults filled.
func (e *Engine) Config() Config { return e.cfg }

// Current returns the set serving decisions, or nil before the first
// successful Reload.
func (e *Engine) Current() *Set { return e.current.Load() }

// Revision is the serving set's revision ("" before any set is loaded).
func (e *Engine) Revision() string {
	if s := e.current.Load(); s != nil {
		return s.Revision()
	}
	return ""
}

// Eval decides one request with the current set (see (*Set).Eval). Before
// any set is loaded it denies with Outcome "error" and ErrNotLoaded.
func (e *Engine) Eval(ctx context.Context, pkg string, in *Input) Decision {
	start := time.Now()
	var d Decision
	if s := e.current.Load(); s != nil {
		d = s.Eval(ctx, pkg, in)
	} else {
		pkg = strings.TrimPrefix(pkg, "data.")
		d = errorDecision(pkg, "", fmt.Errorf("policy: package %s: %w", pkg, ErrNotLoaded),
			"no policy loaded yet: the policy directory has not compiled since start")
	}
	e.metrics.observe(d, time.Since(start))
	return d
}

// SetPackages records the packages the routes name, prepares them on the
// current set and returns a *MissingPackagesError (errors.Is
// ErrPackageNotFound) for those it lacks. Every later Reload requires them
// all: an edit that removes one is refused like a compile error. The proxy
// calls it at start and on every configuration reload.
func (e *Engine) SetPackages(pkgs []string) error {
	clean := make([]string, 0, len(pkgs))
	for _, p := range pkgs {
		p = strings.TrimPrefix(p, "data.")
		if p != "" && !slices.Contains(clean, p) {
			clean = append(clean, p)
		}
	}
	slices.Sort(clean)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.packages = clean
	s := e.current.Load()
	if s == nil {
		return nil
	}
	return s.Prepare(context.Background(), clean)
}

// Reload compiles the policy directory and, when it compiles and declares
// every package given to SetPackages, makes it the current set. On failure
// the previous set keeps serving, every problem is logged with its
// file:line, portcullis_policy_reload_errors_total is incremented and the
// error is returned (a *CompileError, a *MissingPackagesError or an I/O
// error). Reloading files that did not change keeps the current set.
func (e *Engine) Reload(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	started := time.Now()
	s, err := Load(ctx, e.cfg.Dir, LoadOptions{DecisionTimeout: e.cfg.DecisionTimeout, Clock: e.clock,
		DecisionCache: e.cfg.CacheSize()})
	if err == nil {
		if old := e.current.Load(); old != nil && old.Revision() == s.Revision() {
			// Nothing to swap, but the routes may have asked for packages
			// since: they must still exist.
			if err := old.Prepare(ctx, e.packages); err != nil {
				e.reloadFailed(err)
				return err
			}
			if e.failing {
				e.log.Info("policy: the files compile again and are the ones serving", "dir", e.cfg.Dir, "revision", s.Revision())
			} else {
				e.log.Debug("policy: files unchanged", "dir", e.cfg.Dir, "revision", s.Revision())
			}
			e.failing = false
			e.metrics.lastReloadOK.Set(1)
			return nil
		}
		err = s.Prepare(ctx, e.packages)
	}
	if err != nil {
		e.reloadFailed(err)
		return err
	}
	old := e.current.Swap(s)
	e.failing = false
	e.metrics.loaded(s, old)
	e.log.Info("policy: loaded", "dir", e.cfg.Dir, "revision", s.Revision(),
		"files", len(s.files), "packages", len(s.packages), "took", time.Since(started).Round(time.Microsecond))
	return nil
}

func (e *Engine) reloadFailed(err error) {
	e.failing = true
	// Log first, count second: whoever sees the counter move finds the log.
	defer e.metrics.lastReloadOK.Set(0)
	defer e.metrics.reloadErrors.Inc()
	keep := "none (every decision is an error until the policies compile)"
	if s := e.current.Load(); s != nil {
		keep = s.Revision()
	}
	var ce *CompileError
	if errors.As(err, &ce) {
		for _, p := range ce.Problems {
			e.log.Error("policy: reload failed, keeping the previous policies", "dir", e.cfg.Dir,
				"file", p.File, "line", p.Line, "col", p.Col, "problem", p.String(), "serving", keep)
		}
		return
	}
	e.log.Error("policy: reload failed, keeping the previous policies", "dir", e.cfg.Dir, "err", err, "serving", keep)
}

// metrics are the engine's Prometheus collectors.
type metrics struct {
	decisions    *prometheus.CounterVec
	latency      prometheus.Histogram
	reloads      prometheus.Counter
	reloadErrors prometheus.Counter
	lastReloadOK prometheus.Gauge
	revision     *prometheus.GaugeVec
	cacheHits    *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_policy_decisions_total",
			Help: "Policy decisions by package and outcome (allow, deny, error).",
		}, []string{"package", "outcome"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "portcullis_policy_eval_duration_seconds",
			Help:    "Time to decide one request, input conversion included.",
			Buckets: []float64{5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3, 25e-3, 100e-3},
		}),
		reloads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_policy_reloads_total",
			Help: "Policy sets compiled and swapped in.",
		}),
		reloadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_policy_reload_errors_total",
			Help: "Policy reloads refused (compile errors, missing route packages); the previous set kept serving.",
		}),
		lastReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "portcullis_policy_last_reload_success",
			Help: "1 when the last policy reload succeeded, 0 when it failed.",
		}),
		revision: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "portcullis_policy_revision_info",
			Help: "The policy revision serving decisions (always 1; the revision is the label).",
		}, []string{"revision"}),
		cacheHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_policy_decision_cache_hits_total",
			Help: "Decisions answered from the decision cache instead of evaluated, by package (also counted in portcullis_policy_decisions_total).",
		}, []string{"package"}),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.decisions, m.latency, m.reloads, m.reloadErrors, m.lastReloadOK, m.revision, m.cacheHits} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *metrics) observe(d Decision, took time.Duration) {
	m.decisions.WithLabelValues(d.Package, d.Outcome).Inc()
	m.latency.Observe(took.Seconds())
	if d.Cached {
		m.cacheHits.WithLabelValues(d.Package).Inc()
	}
}

func (m *metrics) loaded(s, old *Set) {
	m.reloads.Inc()
	m.lastReloadOK.Set(1)
	if old != nil {
		m.revision.DeleteLabelValues(old.Revision())
	}
	m.revision.WithLabelValues(s.Revision()).Set(1)
}
