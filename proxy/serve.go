package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/identity"
	"github.com/portcullis/portcullis/policy"
)

// exchange is one request's journey through the proxy.
type exchange struct {
	st       *State
	id       string
	start    time.Time
	client   clientInfo
	target   Target
	host     string
	route    *Route
	who      *identity.Identity
	decision policy.Decision
	authn    time.Duration
	policyD  time.Duration
	upStart  time.Time
	// rc sets write deadlines (cleared for streaming responses).
	rc *http.ResponseController
	// timer cancels the upstream request when the route timeout passes
	// before response headers arrive.
	timer    *routeTimer
	recorded bool
	// own is set for Portcullis's own endpoints, which no policy decides.
	own bool
	// body watches the client's request body on its way upstream; nil
	// when the request has none.
	body *watchedBody
	// streaming: the upstream's response is an event stream, has no
	// length or switched protocols; its writes have no write deadline.
	streaming bool
}

type exchangeKey struct{}

func exchangeFrom(ctx context.Context) *exchange {
	x, _ := ctx.Value(exchangeKey{}).(*exchange)
	return x
}

// ServeHTTP implements SPEC §3: hygiene, routing, authentication, policy,
// forwarding, audit.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := h.state.Load()
	x := &exchange{st: st, start: h.clock.Now(), rc: http.NewResponseController(w)}
	h.m.inflight.Inc()
	defer h.m.inflight.Dec()
	h.active.Add(1)
	defer h.active.Add(-1)

	x.client = resolveClient(r, st.Listen.Trusted)
	x.id = x.client.RequestID
	if x.id == "" {
		x.id = newRequestID()
	}
	w.Header().Set(HeaderRequestID, x.id)
	if r.ProtoMajor == 1 && len(r.TransferEncoding) > 0 {
		// A chunked request may also have carried a Content-Length, which
		// net/http drops without a trace (RFC 9112 §6.1: the
		// Transfer-Encoding wins, and the server MUST close the
		// connection after responding). A front end that framed it by the
		// Content-Length would take what follows the chunked body for part
		// of it, not for a request of its own (CL.TE desync): close the
		// connection after every chunked request, so that nothing after
		// its body is read.
		w.Header().Set("Connection", "close")
	}
	if st.HSTS != "" && r.TLS != nil {
		w.Header().Set("Strict-Transport-Security", st.HSTS)
	}
	_ = x.rc.SetWriteDeadline(x.start.Add(st.Server.WriteTimeout))

	host, ok := NormalizeHost(r.Host)
	if !ok {
		h.refuse(w, r, x, http.StatusBadRequest, audit.DecisionDeny, "bad request: invalid Host header", "bad_request")
		return
	}
	x.host = host
	t, err := ParseTarget(r)
	if err != nil {
		h.refuse(w, r, x, http.StatusBadRequest, audit.DecisionDeny, strings.TrimPrefix(err.Error(), "proxy: "), "bad_request")
		return
	}
	x.target = t
	x.route = st.table.match(host, t.Path)

	// Portcullis's own endpoints, on every route host (whatever paths its
	// routes cover: a host whose routes are all under /app still needs its
	// /.portcullis/callback) and the external URL.
	if st.Auth.OwnsPath(t.Path) && (x.route != nil || host == st.ExternalHost || st.table.hasHost(host)) {
		h.serveOwn(w, r, x)
		return
	}
	if x.route == nil {
		h.refuse(w, r, x, http.StatusNotFound, audit.DecisionDeny, noRouteReason, "not_found")
		return
	}

	aStart := h.clock.Now()
	who, err := st.Auth.Authenticate(w, r)
	x.authn = h.clock.Now().Sub(aStart)
	h.m.phaseAuthn.Observe(x.authn.Seconds())
	if errors.Is(err, identity.ErrProviderUnavailable) {
		// The credentials could not be checked: not the caller's fault.
		w.Header().Set("Retry-After", "10")
		h.refuse(w, r, x, http.StatusServiceUnavailable, audit.DecisionError, "identity provider unavailable: credentials could not be checked", "provider_unavailable")
		return
	}
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		h.refuse(w, r, x, http.StatusUnauthorized, audit.DecisionUnauthenticated, "invalid credentials", "unauthorized")
		return
	}
	x.who = who
	signedIn := who != nil && who.Authenticated
	if !signedIn && !x.route.Public {
		if wantsHTML(r) {
			h.record(r, x, http.StatusFound, audit.DecisionUnauthenticated, "sign-in required: redirected to the identity provider")
			st.Auth.StartLogin(w, r)
			h.finish(r, x, http.StatusFound, audit.DecisionUnauthenticated)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="portcullis"`)
		h.refuse(w, r, x, http.StatusUnauthorized, audit.DecisionUnauthenticated, "sign-in required", "unauthorized")
		return
	}

	if h.opts.FailClosed && !h.opts.Audit.Accepting() {
		h.refuse(w, r, x, http.StatusServiceUnavailable, audit.DecisionError, "audit unavailable: fail-closed mode refuses unrecorded requests", "audit_unavailable")
		return
	}

	pStart := h.clock.Now()
	x.decision = st.Policy.Eval(r.Context(), x.route.Policy, policyInput(r, x))
	x.policyD = h.clock.Now().Sub(pStart)
	h.m.phasePolicy.Observe(x.policyD.Seconds())
	if !x.decision.Allow {
		status := x.decision.Status
		if status < 400 || status > 599 {
			status = http.StatusForbidden
		}
		if x.decision.Outcome == "error" {
			// The reason names files, lines and OPA's internals: for the
			// audit event and the logs, not for the client.
			h.refuseAs(w, r, x, status, audit.DecisionError, x.decision.Reason,
				"the access policy could not be evaluated; quote the request id to an administrator", "forbidden")
			return
		}
		if status == http.StatusNotFound {
			// A policy answering 404 hides that the route exists: the
			// client sees what a request for no route sees; the audit
			// event keeps the policy's reason.
			h.refuseAs(w, r, x, status, audit.DecisionDeny, x.decision.Reason, noRouteReason, "not_found")
			return
		}
		h.refuse(w, r, x, status, audit.DecisionDeny, x.decision.Reason, "forbidden")
		return
	}

	rp := st.proxies[x.route]
	ctx, cancel := context.WithCancelCause(context.WithValue(r.Context(), exchangeKey{}, x))
	defer cancel(nil)
	// The route timeout bounds the wait for the upstream's response
	// headers once the request body has been sent, and, while it is being
	// sent, each wait for the upstream to take more of it (an upload may
	// take longer than the timeout; an upstream that stops reading may
	// not); bodies (downloads, SSE, WebSockets) then stream freely.
	x.timer = newRouteTimer(x.route.Timeout, func() { cancel(errUpstreamTimeout) })
	defer x.timer.stop()
	x.upStart = h.clock.Now()
	// Uploads are not bounded by write_timeout (an HTTP/2 stream's write
	// deadline also ends its request body); the response's writes are,
	// each one from when it starts (see proxyWriter).
	_ = x.rc.SetWriteDeadline(time.Time{})
	rp.ServeHTTP(newProxyWriter(w, x), r.WithContext(ctx))
	// The server still flushes what is buffered once the handler returns.
	_ = x.rc.SetWriteDeadline(time.Now().Add(st.Server.WriteTimeout))
}

// noRouteReason is what a 404 tells the client, whether no route matched or
// a policy chose to hide its route.
const noRouteReason = "no route for this host and path"

var errUpstreamTimeout = errors.New("proxy: upstream did not answer within the route timeout")

// serveOwn hands /.portcullis/* and the JWKS to the identity handler. The
// audit event names the user the endpoint acted for (see
// identity.WithReport) and no policy: none decides these endpoints.
func (h *Handler) serveOwn(w http.ResponseWriter, r *http.Request, x *exchange) {
	sw := &statusWriter{ResponseWriter: w}
	var who *identity.Identity
	x.st.Auth.Handler().ServeHTTP(sw, identity.WithReport(r, &who))
	status := sw.status
	if status == 0 {
		status = http.StatusOK
	}
	x.who, x.own = who, true
	dec := statusDecision(status)
	// The endpoint already answered; an audit failure is counted and
	// logged by the recorder.
	h.record(r, x, status, dec, "portcullis endpoint "+x.target.Path)
	h.finish(r, x, status, dec)
}

// statusDecision is the audit decision of an answer no policy decided:
// allow below 400, unauthenticated for 401, error for 5xx, deny otherwise.
func statusDecision(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return audit.DecisionUnauthenticated
	case status >= 500:
		return audit.DecisionError
	case status >= 400:
		return audit.DecisionDeny
	}
	return audit.DecisionAllow
}

// ServePlain wraps next, the handler of listen.http (ACME HTTP-01
// challenges, redirects to https), so that its answers carry an
// X-Request-Id and each request is audited like an answer of Portcullis's
// own endpoints: no policy, a decision that follows the status.
func (h *Handler) ServePlain(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.active.Add(1)
		defer h.active.Add(-1)
		st := h.state.Load()
		x := &exchange{st: st, start: h.clock.Now(), own: true}
		x.client = resolveClient(r, st.Listen.Trusted)
		x.id = x.client.RequestID
		if x.id == "" {
			x.id = newRequestID()
		}
		w.Header().Set(HeaderRequestID, x.id)
		if host, ok := NormalizeHost(r.Host); ok {
			x.host = host
			if t, err := ParseTarget(r); err == nil {
				x.target = t
				x.route = st.table.match(host, t.Path)
			}
		}
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		reason := "plain HTTP: " + strings.ToLower(http.StatusText(status))
		switch {
		case status == http.StatusPermanentRedirect:
			reason = "plain HTTP: redirected to https"
		case status == http.StatusOK && strings.HasPrefix(x.target.Path, "/.well-known/acme-challenge/"):
			reason = "ACME HTTP-01 challenge answered"
		}
		dec := statusDecision(status)
		h.record(r, x, status, dec, reason)
		h.finish(r, x, status, dec)
	})
}

// refuse answers without forwarding, after recording the decision; the
// client sees the reason recorded.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, x *exchange, status int, decision, reason, code string) {
	h.refuseAs(w, r, x, status, decision, reason, reason, code)
}

// refuseAs is refuse with a reason for the client other than the one
// recorded.
func (h *Handler) refuseAs(w http.ResponseWriter, r *http.Request, x *exchange, status int, decision, reason, shown, code string) {
	if err := h.record(r, x, status, decision, reason); err != nil && h.opts.FailClosed && status < 500 {
		status, decision, shown, code = http.StatusServiceUnavailable, audit.DecisionError, "audit unavailable", "audit_unavailable"
	}
	writePage(w, r, page{
		Status: status, Title: http.StatusText(status), Message: pageMessage(status),
		Reason: shown, RequestID: x.id, Error: code,
		SignOut: status == http.StatusForbidden && x.who != nil && x.who.Authenticated,
	})
	h.finish(r, x, status, decision)
}

func pageMessage(status int) string {
	switch status {
	case http.StatusForbidden:
		return "You are signed in, but the access policy for this address does not let you in."
	case http.StatusNotFound:
		return "Portcullis has no route for this address."
	case http.StatusUnauthorized:
		return "Sign-in is required."
	case http.StatusBadRequest:
		return "The request was refused because its address is malformed or ambiguous."
	case http.StatusServiceUnavailable:
		return "The service is temporarily unavailable. Please try again shortly."
	case http.StatusBadGateway:
		return "The upstream service could not be reached."
	case http.StatusGatewayTimeout:
		return "The upstream service did not answer in time."
	}
	return ""
}

// auditPath is the normalized path as an audit event records it: with
// '%' and '?' written as %25 and %3F, so that a path holding an encoded
// '?' (/a%3Fb, which the policy sees as "/a?b") never reads as a query
// string, and the record stays unambiguous.
func auditPath(p string) string {
	if !strings.ContainsAny(p, "%?") {
		return p
	}
	return strings.NewReplacer("%", "%25", "?", "%3F").Replace(p)
}

// record writes the audit event for x. It is called once per request,
// before the response reaches the client.
func (h *Handler) record(r *http.Request, x *exchange, status int, decision, reason string) error {
	if x.recorded {
		return nil
	}
	x.recorded = true
	now := h.clock.Now()
	ev := &audit.Event{
		Time:      x.start.UTC(),
		RequestID: x.id,
		Decision:  decision,
		Reason:    reason,
		Request: audit.Request{
			Method: r.Method, Host: x.host, Path: auditPath(x.target.Path),
			RemoteAddr: x.client.Addr, UserAgent: r.UserAgent(),
		},
		Response: audit.Response{Status: status},
		DurationMS: audit.Durations{
			Authn: ms(x.authn), Policy: ms(x.policyD), Total: ms(now.Sub(x.start)),
		},
	}
	if x.host == "" {
		ev.Request.Host = r.Host
		if len(ev.Request.Host) > 255 {
			ev.Request.Host = ev.Request.Host[:255]
		}
	}
	if x.target.Path == "" {
		ev.Request.Path = "(malformed)"
	}
	if !x.upStart.IsZero() {
		ev.DurationMS.Upstream = ms(now.Sub(x.upStart))
	}
	if x.route != nil {
		ev.Route = x.route.Name
		if !x.own {
			ev.Policy.Package = x.route.Policy
		}
	}
	switch {
	case x.decision.Revision != "":
		ev.Policy.Revision = x.decision.Revision
	case ev.Policy.Package != "":
		// Decided before the policy ran (sign-in, bad credentials): the
		// revision that would have decided.
		if rv, ok := x.st.Policy.(interface{ Revision() string }); ok {
			ev.Policy.Revision = rv.Revision()
		}
	}
	if x.who != nil && x.who.Authenticated {
		ev.User = audit.User{Sub: x.who.Sub, Email: x.who.Email, Groups: x.who.Groups,
			Provider: x.who.Provider, AuthMethod: x.who.AuthMethod}
	}
	aStart := h.clock.Now()
	err := h.opts.Audit.Record(r.Context(), ev)
	h.m.phaseAudit.Observe(h.clock.Now().Sub(aStart).Seconds())
	switch {
	case err == nil:
	case !errors.Is(err, audit.ErrUnavailable) && r.Context().Err() != nil:
		// The client went away while the event waited for the spool's
		// fsync: the event is appended and is still written.
		h.log.Info("client gone before the audit event was confirmed on disk; it is still written", "request_id", x.id, "err", err)
	default:
		h.log.Error("audit event not recorded", "request_id", x.id, "err", err)
	}
	return err
}

// finish counts the request and writes the access log line.
func (h *Handler) finish(r *http.Request, x *exchange, status int, decision string) {
	route := ""
	if x.route != nil {
		route = x.route.Name
	}
	h.m.requests.WithLabelValues(route, strconv.Itoa(status), decision).Inc()
	h.m.duration.WithLabelValues(route).Observe(h.clock.Now().Sub(x.start).Seconds())
	if !h.opts.AccessLog {
		return
	}
	attrs := []slog.Attr{
		slog.String("request_id", x.id), slog.String("method", r.Method),
		slog.String("host", x.host), slog.String("path", x.target.Path),
		slog.String("route", route), slog.Int("status", status),
		slog.String("decision", decision), slog.String("remote_addr", x.client.Addr),
		slog.Float64("duration_ms", ms(h.clock.Now().Sub(x.start))),
	}
	if x.who != nil && x.who.Authenticated {
		attrs = append(attrs, slog.String("user", x.who.Sub))
	}
	h.log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
}

// statusWriter remembers the status code written through it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
