// Package proxy is Portcullis's request path: it normalizes and routes each
// request, asks identity who is calling, asks policy whether they may,
// forwards allowed requests with a signed identity, and records every
// decision with audit. It composes those packages; they never import it.
package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/identity"
	"github.com/portcullis/portcullis/policy"
)

// Authenticator is what the proxy needs from the identity package.
// Implementations are safe for concurrent use.
type Authenticator interface {
	// Authenticate returns the caller's identity, (nil, nil) when the
	// request carries no credentials, or an error: one wrapping
	// identity.ErrProviderUnavailable (the provider cannot be reached to
	// verify them) is answered 503, any other (such as
	// identity.ErrInvalidCredentials) 401.
	Authenticate(w http.ResponseWriter, r *http.Request) (*identity.Identity, error)
	// StartLogin answers a browser request with a redirect into sign-in.
	StartLogin(w http.ResponseWriter, r *http.Request)
	// Handler serves /.portcullis/* and the JWKS.
	Handler() http.Handler
	// OwnsPath reports whether Handler serves path.
	OwnsPath(path string) bool
	// StripCredentials removes the session cookie and the Authorization
	// header used to authenticate.
	StripCredentials(h http.Header)
	// Assertion signs the identity for one upstream request.
	Assertion(id *identity.Identity, req identity.AssertionRequest) (string, error)
	// OwnsCookie reports whether a cookie name is Portcullis's own.
	OwnsCookie(name string) bool
}

// Evaluator is what the proxy needs from the policy package.
type Evaluator interface {
	Eval(ctx context.Context, pkg string, in *policy.Input) policy.Decision
}

var (
	_ Evaluator = (*policy.Engine)(nil)
)

// Clock tells the time; tests pass a fake.
type Clock interface{ Now() time.Time }

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// Options are the long-lived collaborators of a Handler.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Clock      Clock
	// Audit records every decision; required.
	Audit audit.Recorder
	// FailClosed makes the proxy answer 503 instead of forwarding while
	// Audit is not accepting events (audit.mode: fail-closed).
	FailClosed bool
	// AccessLog writes one line per request at Info level when true.
	AccessLog bool
}

// State is everything a configuration reload replaces at once. A request
// keeps the State it started with until it completes.
type State struct {
	// Routes as validated; the State keeps its own copy.
	Routes []Route
	Listen ListenConfig
	Server ServerConfig
	Auth   Authenticator
	Policy Evaluator
	// ExternalHost is the host of identity.external_url (normalized); the
	// identity endpoints are served there even when no route uses it.
	ExternalHost string
	// HSTS is the Strict-Transport-Security value, or "".
	HSTS string
	// Transport carries requests to upstreams (shared by all routes). Nil
	// keeps the previous State's transport, and its pooled connections.
	Transport http.RoundTripper

	table   *table
	proxies map[*Route]*httputil.ReverseProxy
}

// Handler is the proxy's http.Handler. Swap replaces its State atomically.
type Handler struct {
	opts  Options
	log   *slog.Logger
	clock Clock
	m     *metrics
	state atomic.Pointer[State]
	// active counts requests in ServeHTTP or ServePlain, so that shutdown
	// can wait until each has recorded its audit event (see Settle).
	active atomic.Int64
	// cutting is set when shutdown closes connections still open at its
	// deadline: their requests end because of the proxy, not the client.
	cutting atomic.Bool
	// transports are the routes' own transports (a private CA, h2c) by
	// what makes them differ, kept across reloads with their connection
	// pools; swapMu serializes Swap.
	swapMu     sync.Mutex
	transports map[string]*http.Transport
}

// Settle waits until no request is being handled any more, or ctx ends
// (then it returns ctx's error). After the servers were shut down (their
// connections closed at the drain deadline), a request that was cut off is
// still recording its audit event; the audit pipeline must stay open until
// Settle returns.
func (h *Handler) Settle(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for h.active.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("proxy: %d requests still being handled: %w", h.active.Load(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// NewHandler builds a Handler serving st.
func NewHandler(st *State, opts Options) (*Handler, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = wallClock{}
	}
	if opts.Audit == nil {
		return nil, errors.New("proxy: an audit recorder is required")
	}
	h := &Handler{opts: opts, log: opts.Logger, clock: opts.Clock, m: newMetrics(opts.Registerer)}
	if err := h.Swap(st); err != nil {
		return nil, err
	}
	return h, nil
}

// Swap installs a new State. Requests already in flight finish with the
// State they started with.
func (h *Handler) Swap(st *State) error {
	if st.Auth == nil || st.Policy == nil {
		return errors.New("proxy: state needs an authenticator and a policy evaluator")
	}
	if st.Transport == nil {
		// Keep the connection pool across reloads.
		if old := h.state.Load(); old != nil && old.Transport != nil {
			st.Transport = old.Transport
		} else {
			st.Transport = NewTransport()
		}
	}
	st.table = newTable(st.Routes)
	st.proxies = make(map[*Route]*httputil.ReverseProxy, len(st.Routes))
	h.swapMu.Lock()
	defer h.swapMu.Unlock()
	kept := map[string]*http.Transport{}
	for i := range st.Routes {
		r := &st.Routes[i]
		tr := st.Transport
		if key := r.transportKey(); key != "" {
			t := h.transports[key]
			if t == nil {
				t = r.newOwnTransport()
			}
			kept[key] = t
			tr = t
		}
		st.proxies[r] = h.newReverseProxy(r, tr)
	}
	for key, t := range h.transports {
		if kept[key] == nil {
			t.CloseIdleConnections()
		}
	}
	h.transports = kept
	h.state.Store(st)
	return nil
}

// Current returns the State in use.
func (h *Handler) Current() *State { return h.state.Load() }

// HostAllowed reports whether host is served by the current configuration
// (a route host or the external URL's host). The identity package uses it to
// validate return-to targets; it follows reloads.
func (h *Handler) HostAllowed(host string) bool {
	n, ok := NormalizeHost(host)
	if !ok {
		return false
	}
	st := h.state.Load()
	if st == nil {
		return false
	}
	return n == st.ExternalHost || st.table.hasHost(n)
}

// ObserveReload counts a configuration reload result in metrics.
func (h *Handler) ObserveReload(ok bool) {
	if ok {
		h.m.reloads.WithLabelValues("ok").Inc()
	} else {
		h.m.reloads.WithLabelValues("error").Inc()
	}
}

// newRequestID returns 128 random bits, hex-encoded.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func headerList(vals []string) string { return strings.Join(vals, ",") }
