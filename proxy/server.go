package proxy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
)

// TLSProvider supplies certificates for the HTTPS listener and the handler
// for the plain-HTTP listener (ACME HTTP-01 and redirects to https).
type TLSProvider interface {
	TLSConfig() *tls.Config
	HTTPHandler(next http.Handler) http.Handler
}

// Check is one readiness condition: nil when ready.
type Check func(ctx context.Context) error

// ReadyNote is a Check's answer that is ready but has more to say than
// "ok" (the audit sink spooling, say): /readyz stays 200 and shows
// "ok: " + the note.
type ReadyNote string

func (n ReadyNote) Error() string { return string(n) }

// Server runs the HTTPS, HTTP and admin listeners.
type Server struct {
	Handler  *Handler
	TLS      TLSProvider
	Listen   ListenConfig
	Server   ServerConfig
	Logger   *slog.Logger
	Gatherer prometheus.Gatherer
	// Ready lists the named readiness checks of /readyz.
	Ready map[string]Check
	// Mounts serves extra handlers on the HTTPS listener ahead of routing,
	// by path prefix (such as "/.devidp/"; the longest prefix wins), on
	// every host. Requests they answer are neither routed nor audited:
	// `portcullis dev` mounts its embedded identity provider here, on the
	// proxy's own origin. Empty for `serve`.
	Mounts map[string]http.Handler

	// Listeners may be set (by tests, or for socket activation) instead of
	// the addresses in Listen.
	HTTPSListener, HTTPListener, AdminListener net.Listener

	// started is closed once every listener is bound.
	started chan struct{}
	// draining is set once shutdown begins: /readyz then answers 503.
	draining atomic.Bool
}

// Started is closed once every listener is bound. Call it before Run.
func (s *Server) Started() <-chan struct{} {
	return s.startedChan()
}

func (s *Server) startedChan() chan struct{} {
	if s.started == nil {
		s.started = make(chan struct{})
	}
	return s.started
}

// settleTimeout bounds the wait, after the drain, for handlers of requests
// cut at the deadline to record their audit events.
const settleTimeout = 10 * time.Second

// Run serves until ctx is cancelled, then drains in-flight requests for at
// most Server.ShutdownTimeout.
func (s *Server) Run(ctx context.Context) error {
	started := s.startedChan()
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	var servers []*http.Server
	listen := func(ln net.Listener, addr string) (net.Listener, error) {
		if ln != nil {
			return ln, nil
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("proxy: listen on %s: %w", addr, err)
		}
		return l, nil
	}
	httpsLn, err := listen(s.HTTPSListener, s.Listen.HTTPS)
	if err != nil {
		return err
	}
	main := &http.Server{
		Handler: s.httpsHandler(),
		// "OPTIONS *" goes to the proxy too (a 400, audited, with a
		// request id) instead of net/http's unaudited 200.
		DisableGeneralOptionsHandler: true,
		TLSConfig:                    s.TLS.TLSConfig(),
		ReadHeaderTimeout:            s.Server.ReadHeaderTimeout,
		IdleTimeout:                  s.Server.IdleTimeout,
		MaxHeaderBytes:               int(s.Server.MaxHeaderBytes),
		ErrorLog:                     errLog,
	}
	servers = append(servers, main)

	var httpLn net.Listener
	if s.Listen.HTTP != "" || s.HTTPListener != nil {
		if httpLn, err = listen(s.HTTPListener, s.Listen.HTTP); err != nil {
			httpsLn.Close()
			return err
		}
		var plain http.Handler = s.TLS.HTTPHandler(http.NotFoundHandler())
		if s.Handler != nil {
			plain = s.Handler.ServePlain(plain)
		}
		servers = append(servers, &http.Server{
			Handler:                      plain,
			DisableGeneralOptionsHandler: true,
			ReadHeaderTimeout:            s.Server.ReadHeaderTimeout,
			ReadTimeout:                  30 * time.Second,
			WriteTimeout:                 30 * time.Second,
			IdleTimeout:                  s.Server.IdleTimeout,
			MaxHeaderBytes:               int(s.Server.MaxHeaderBytes),
			ErrorLog:                     errLog,
		})
	}
	adminLn, err := listen(s.AdminListener, s.Listen.Admin)
	if err != nil {
		httpsLn.Close()
		if httpLn != nil {
			httpLn.Close()
		}
		return err
	}
	servers = append(servers, &http.Server{
		Handler:           s.adminHandler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          errLog,
	})
	log.Info("listening", "https", httpsLn.Addr().String(), "admin", adminLn.Addr().String(), "http", addrOf(httpLn))
	close(started)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveErr(main.ServeTLS(httpsLn, "", "")) })
	if httpLn != nil {
		srv := servers[1]
		g.Go(func() error { return serveErr(srv.Serve(httpLn)) })
	}
	admin := servers[len(servers)-1]
	g.Go(func() error { return serveErr(admin.Serve(adminLn)) })
	g.Go(func() error {
		<-gctx.Done()
		s.draining.Store(true)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.Server.ShutdownTimeout)
		defer cancel()
		log.Info("shutting down: draining in-flight requests", "deadline", s.Server.ShutdownTimeout)
		var deadlinePassed atomic.Bool
		shutdown := func(srv *http.Server) error {
			err := srv.Shutdown(sctx)
			if err == nil {
				return nil
			}
			if s.Handler != nil {
				s.Handler.cutting.Store(true)
			}
			srv.Close()
			if errors.Is(err, context.DeadlineExceeded) {
				// Streams (SSE, long downloads) that outlive the drain
				// deadline are cut: that is the deadline's purpose.
				deadlinePassed.Store(true)
				return nil
			}
			return err
		}
		// The traffic listeners stop accepting at once and drain together;
		// the admin listener stays up meanwhile (/readyz answers 503,
		// /metrics goes on) and closes last.
		traffic, admin := servers[:len(servers)-1], servers[len(servers)-1]
		errs := make([]error, len(servers))
		var wg sync.WaitGroup
		for i, srv := range traffic {
			wg.Go(func() { errs[i] = shutdown(srv) })
		}
		wg.Wait()
		if s.Handler != nil {
			// Requests cut at the deadline are still recording their
			// audit events (the caller closes the pipeline after Run).
			wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
			if err := s.Handler.Settle(wctx); err != nil {
				log.Error("shutdown: requests still running after the drain; their audit events may be lost", "err", err)
			}
			wcancel()
		}
		errs[len(servers)-1] = shutdown(admin)
		if deadlinePassed.Load() {
			log.Warn("shutdown: the drain deadline passed; connections still open were closed", "deadline", s.Server.ShutdownTimeout)
		}
		return errors.Join(errs...)
	})
	err = g.Wait()
	if ctx.Err() != nil && err == nil {
		return nil
	}
	return err
}

// httpsHandler is the proxy, behind the Mounts when there are any.
func (s *Server) httpsHandler() http.Handler {
	if len(s.Mounts) == 0 {
		return s.Handler
	}
	mounts := make(map[string]http.Handler, len(s.Mounts))
	for prefix, h := range s.Mounts {
		mounts[prefix] = h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		best := ""
		for prefix := range mounts {
			if len(prefix) > len(best) && strings.HasPrefix(r.URL.Path, prefix) {
				best = prefix
			}
		}
		if best != "" {
			w.Header().Set(HeaderRequestID, newRequestID())
			mounts[best].ServeHTTP(w, r)
			return
		}
		s.Handler.ServeHTTP(w, r)
	})
}

func addrOf(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

func serveErr(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		status, body := http.StatusOK, map[string]string{}
		if s.draining.Load() {
			status, body["shutdown"] = http.StatusServiceUnavailable, "draining in-flight requests"
		}
		for name, check := range s.Ready {
			var note ReadyNote
			switch err := check(ctx); {
			case err == nil:
				body[name] = "ok"
			case errors.As(err, &note):
				body[name] = "ok: " + string(note)
			default:
				status = http.StatusServiceUnavailable
				body[name] = err.Error()
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(body)
	})
	if s.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.Gatherer, promhttp.HandlerOpts{}))
	}
	// Every response carries X-Request-Id (SPEC §3), the admin listener's
	// too; these requests are not audited (probes would flood the trail).
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderRequestID, newRequestID())
		mux.ServeHTTP(w, r)
	})
}
