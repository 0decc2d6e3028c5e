package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/identity"
	"github.com/portcullis/portcullis/policy"
)

// NewTransport returns the transport used to reach upstreams: bounded dial,
// TLS handshake and idle times; HTTP/2 to TLS upstreams when they offer it.
func NewTransport() *http.Transport {
	return &http.Transport{
		Proxy: nil, // never route upstream traffic through an environment proxy
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: 1 * time.Second,
		// What the client accepts is the upstream's business: never ask
		// for gzip on its behalf (and decompress on the way), which would
		// change what an upstream that varies on Accept-Encoding sends.
		DisableCompression: true,
	}
}

func (h *Handler) newReverseProxy(route *Route, transport http.RoundTripper) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Transport: transport,
		// Flush SSE and unknown-length bodies as they arrive (ReverseProxy
		// already does for text/event-stream); buffered otherwise.
		FlushInterval: 50 * time.Millisecond,
		Rewrite: func(pr *httputil.ProxyRequest) {
			x := exchangeFrom(pr.In.Context())
			h.rewrite(pr, x, route)
		},
		ModifyResponse: func(resp *http.Response) error {
			x := exchangeFrom(resp.Request.Context())
			x.timer.stop()
			return h.upstreamAnswered(resp, x)
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			h.upstreamFailed(w, r, exchangeFrom(r.Context()), err)
		},
		ErrorLog: nil,
	}
}

// rewrite builds the upstream request (SPEC §4).
func (h *Handler) rewrite(pr *httputil.ProxyRequest, x *exchange, route *Route) {
	out := pr.Out
	up := route.UpstreamURL
	out.URL.Scheme = up.Scheme
	out.URL.Host = up.Host
	// The upstream receives the normalized path the policy saw, below the
	// upstream URL's own path.
	// RawPath always: left to itself, url.URL re-escapes the path in its
	// own way ("(", "'", "*", "!" become %28...), and drops the escapes of
	// a base path such as /projects/group%2Fproj when the request's path
	// has none.
	out.URL.Path = strings.TrimSuffix(up.Path, "/") + x.target.Path
	out.URL.RawPath = strings.TrimSuffix(up.EscapedPath(), "/") + x.target.RawPath
	out.URL.RawQuery = x.target.RawQuery
	if route.PassHostHeader {
		out.Host = pr.In.Host
	} else {
		out.Host = ""
	}

	scrubClientHeaders(out.Header, x.client.Trusted)
	x.st.Auth.StripCredentials(out.Header)
	// A header the policy can set carries the policy's value or none: the
	// client's copies go, in any spelling ('_' for '-', as CGI reads it),
	// also when this decision does not set it.
	for name := range out.Header {
		if policyControls(x.decision, name) {
			delete(out.Header, name)
		}
	}
	// Only WebSocket upgrades become tunnels. Any other (h2c above all)
	// would let the client send further requests inside the tunnel, which
	// no policy decides and no audit event records: the request goes on
	// as a plain one, and an upstream that switches protocols anyway gets
	// a 502.
	if up := out.Header.Get("Upgrade"); up != "" && !strings.EqualFold(up, "websocket") {
		out.Header.Del("Upgrade")
		out.Header.Del("Connection")
	}
	if out.Body != nil && out.Body != http.NoBody {
		// Bodies stream: a malformed one (a bad chunk size, a framing
		// trick) shows only once forwarding has begun. Remember why it
		// failed, to answer 400 rather than blame the upstream.
		x.body = &watchedBody{ReadCloser: out.Body, progress: x.timer.touch}
		out.Body = x.body
		// The request's trailers are known once its body has been read.
		// Only those the client declared go on, when a header of that
		// name could (no identity, forwarding, credential or framing
		// field); their values are copied at the body's end, on the
		// transport's goroutine that then sends them.
		if declared := forwardableTrailers(out.Trailer, x); len(declared) > 0 {
			out.Trailer = declared
			in := pr.In.Trailer
			x.body.atEOF = func() {
				for k := range declared {
					declared[k] = in.Values(k)
				}
			}
		} else {
			out.Trailer = nil
		}
	}

	// X-Forwarded-*: appended to a trusted proxy's values, else fresh.
	if x.client.Trusted {
		if prior := pr.In.Header.Values("X-Forwarded-For"); len(prior) > 0 {
			out.Header["X-Forwarded-For"] = []string{headerList(prior)}
		}
	}
	pr.SetXForwarded()
	out.Header.Set("X-Forwarded-Proto", x.client.Proto)
	out.Header.Set("X-Forwarded-Host", x.client.Host)
	out.Header.Set("X-Real-Ip", x.client.Addr)
	out.Header.Set(HeaderRequestID, x.id)

	if x.who != nil && x.who.Authenticated {
		out.Header.Set(HeaderUser, x.who.Sub)
		if x.who.Email != "" {
			out.Header.Set(HeaderEmail, x.who.Email)
		}
		if len(x.who.Groups) > 0 {
			out.Header.Set(HeaderGroups, joinGroups(x.who.Groups))
		}
		aud := route.Audience()
		if tok, err := x.st.Auth.Assertion(x.who, identity.AssertionRequest{
			Route: route.Name, Audience: aud, RequestID: x.id,
			Method: out.Method, URL: aud + out.URL.EscapedPath(),
		}); err == nil {
			out.Header.Set(HeaderAssertion, tok)
		} else {
			h.log.Error("signing the identity assertion failed", "request_id", x.id, "err", err)
		}
	}
	for k, v := range x.decision.Headers {
		out.Header.Set(k, v)
	}
}

// upstreamAnswered records the allow event once the upstream's status is
// known, before the response reaches the client.
func (h *Handler) upstreamAnswered(resp *http.Response, x *exchange) error {
	streaming := resp.StatusCode == http.StatusSwitchingProtocols ||
		strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") ||
		resp.ContentLength < 0
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if c, ok := resp.Body.(io.ReadWriteCloser); ok {
			// ReverseProxy half-closes the upstream when the client's side
			// ends and then waits for the upstream to close: one that does
			// not would keep the tunnel, its goroutines and descriptors
			// for ever. Without CloseWrite it closes both at once.
			resp.Body = tunnelConn{c}
		}
	}
	x.streaming = streaming
	// Never let an upstream set Portcullis's own identity headers on the
	// response, nor the headers Portcullis already set on it (the request
	// id, HSTS): the reverse proxy adds the upstream's values to ours.
	for name := range resp.Header {
		if isIdentityHeader(name) {
			delete(resp.Header, name)
		}
	}
	resp.Header.Del(HeaderRequestID)
	// Nor replace (or clear) the session cookie: that is Portcullis's.
	if cs := resp.Header["Set-Cookie"]; len(cs) > 0 {
		kept := cs[:0:0]
		for _, c := range cs {
			name, _, _ := strings.Cut(c, "=")
			if !x.st.Auth.OwnsCookie(strings.TrimSpace(name)) {
				kept = append(kept, c)
			}
		}
		if len(kept) == 0 {
			delete(resp.Header, "Set-Cookie")
		} else {
			resp.Header["Set-Cookie"] = kept
		}
	}
	if x.st.HSTS != "" {
		resp.Header.Del("Strict-Transport-Security")
	}
	err := h.record(resp.Request, x, resp.StatusCode, audit.DecisionAllow, x.decision.Reason)
	if err != nil && h.opts.FailClosed {
		return errAuditFailClosed
	}
	h.finish(resp.Request, x, resp.StatusCode, audit.DecisionAllow)
	return nil
}

var errAuditFailClosed = errors.New("proxy: audit unavailable in fail-closed mode")

func (h *Handler) upstreamFailed(w http.ResponseWriter, r *http.Request, x *exchange, err error) {
	status, kind, reason := http.StatusBadGateway, "unreachable", "upstream unreachable"
	switch {
	case errors.Is(err, errAuditFailClosed):
		// The upstream answered but the event could not be recorded:
		// the client gets 503, never the unrecorded response.
		x.recorded = false
		status, kind, reason = http.StatusServiceUnavailable, "", "audit unavailable"
		h.record(r, x, status, audit.DecisionError, reason)
		writePage(w, r, page{Status: status, Title: http.StatusText(status), Message: pageMessage(status), Reason: reason, RequestID: x.id, Error: "audit_unavailable"})
		h.finish(r, x, status, audit.DecisionError)
		return
	case errors.Is(context.Cause(r.Context()), errUpstreamTimeout), errors.Is(err, context.DeadlineExceeded):
		status, kind, reason = http.StatusGatewayTimeout, "timeout", "upstream timed out"
	case r.Context().Err() != nil && h.cutting.Load():
		// Shutdown closed the connection at its deadline; nobody reads
		// the answer.
		status, kind, reason = http.StatusServiceUnavailable, "canceled", "cut at shutdown: server.shutdown_timeout passed"
	case r.Context().Err() != nil:
		// The client went away (nginx's 499); nobody reads the answer.
		status, kind, reason = 499, "canceled", "client closed the request"
	case x.body.failed() != nil:
		// The client's body broke off or was malformed: its fault, not the
		// upstream's (which saw the request end early and was cut off).
		status, kind, reason = http.StatusBadRequest, "", "malformed request body: "+x.body.failed().Error()
	}
	if kind != "" {
		h.m.upstreamErrors.WithLabelValues(x.route.Name, kind).Inc()
	}
	h.log.Warn("upstream request failed", "request_id", x.id, "route", x.route.Name, "err", err)
	h.record(r, x, status, audit.DecisionAllow, reason)
	if status == 499 || kind == "canceled" {
		h.finish(r, x, status, audit.DecisionAllow)
		return
	}
	if status == http.StatusBadRequest {
		// Nothing more of this connection can be trusted to be framed.
		w.Header().Set("Connection", "close")
		writePage(w, r, page{Status: status, Title: http.StatusText(status), Message: "The request body is malformed or ended early.", Reason: reason, RequestID: x.id, Error: "bad_request"})
		h.finish(r, x, status, audit.DecisionAllow)
		return
	}
	code := "bad_gateway"
	if status == http.StatusGatewayTimeout {
		code = "gateway_timeout"
	}
	writePage(w, r, page{Status: status, Title: http.StatusText(status), Message: pageMessage(status), Reason: reason, RequestID: x.id, Error: code})
	h.finish(r, x, status, audit.DecisionAllow)
}

// watchedBody passes a request body through and keeps the first error
// reading it (other than its end). The transport reads it on its own
// goroutine; failed is read after the round trip has ended.
type watchedBody struct {
	io.ReadCloser
	// progress is called whenever the upstream takes more of the body,
	// and at its end.
	progress func()
	// atEOF, when set, is called once at the body's end.
	atEOF func()
	mu    sync.Mutex
	err   error
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 || err == io.EOF {
		b.progress()
	}
	if err == io.EOF && b.atEOF != nil {
		b.atEOF()
		b.atEOF = nil
	}
	if err != nil && err != io.EOF {
		b.mu.Lock()
		if b.err == nil {
			b.err = err
		}
		b.mu.Unlock()
	}
	return n, err
}

// failed is the error that ended reading the body early, or nil (also for
// a nil b).
func (b *watchedBody) failed() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// policyInput builds SPEC §5's input document.
func policyInput(r *http.Request, x *exchange) *policy.Input {
	in := &policy.Input{}
	in.Request.ID = x.id
	in.Request.Method = r.Method
	in.Request.Scheme = x.client.Proto
	in.Request.Host = x.host
	in.Request.Path = x.target.Path
	in.Request.Query = parseQuery(x.target.RawQuery)
	in.Request.Headers = policyHeaders(r.Header)
	in.Request.RemoteAddr = x.client.Addr
	in.Request.Time = x.start
	if x.who != nil && x.who.Authenticated {
		in.User.Authenticated = true
		in.User.Sub = x.who.Sub
		in.User.Email = x.who.Email
		in.User.EmailVerified = x.who.EmailVerified
		in.User.Groups = x.who.Groups
		in.User.Issuer = x.who.Issuer
		in.User.Provider = x.who.Provider
		in.User.AuthMethod = x.who.AuthMethod
		in.User.Claims = x.who.Claims
	}
	if in.User.Groups == nil {
		in.User.Groups = []string{}
	}
	in.Route.Name = x.route.Name
	in.Route.Host = x.route.Host
	in.Route.Path = x.route.Path
	in.Route.Upstream = x.route.Upstream
	return in
}

// policyHeaders lower-cases header names and leaves out credentials and
// Portcullis's own identity headers (which the client may not set).
func policyHeaders(h http.Header) map[string][]string {
	out := make(map[string][]string, len(h))
	for k, v := range h {
		lk := strings.ToLower(k)
		switch lk {
		case "cookie", "authorization", "proxy-authorization":
			continue
		}
		if isIdentityHeader(lk) {
			continue
		}
		out[lk] = v
	}
	return out
}

func parseQuery(raw string) map[string][]string {
	q := map[string][]string{}
	if raw == "" {
		return q
	}
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		k = unescapeQuery(k)
		q[k] = append(q[k], unescapeQuery(v))
	}
	return q
}

func unescapeQuery(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

// joinGroups writes groups for X-Portcullis-Groups: comma-separated, each
// name with "%", ",", control characters and spaces at its ends
// percent-encoded, so that a
// group named "engineering,admins" cannot read as two groups to an
// upstream that splits the header (and one with a line break cannot make
// the request unforwardable). Names without those characters, nearly all,
// are written as they are.
func joinGroups(groups []string) string {
	var b strings.Builder
	for i, g := range groups {
		if i > 0 {
			b.WriteByte(',')
		}
		// Spaces at either end too: parsers trim them around a value and
		// around list items, so " admins " would read as "admins".
		lead := len(g) - len(strings.TrimLeft(g, " "))
		trail := len(strings.TrimRight(g, " "))
		for j := 0; j < len(g); j++ {
			switch c := g[j]; {
			case c == '%' || c == ',' || c < 0x20 || c == 0x7f || c == ' ' && (j < lead || j >= trail):
				b.WriteByte('%')
				b.WriteByte("0123456789ABCDEF"[c>>4])
				b.WriteByte("0123456789ABCDEF"[c&15])
			default:
				b.WriteByte(c)
			}
		}
	}
	return b.String()
}

// headerKey is a field name as CGI-style servers read it: lower case, '_'
// for '-'.
func headerKey(name string) string { return strings.ToLower(strings.ReplaceAll(name, "_", "-")) }

// policyControls reports whether the decision's policy can set a header
// of that name, in any spelling.
func policyControls(d policy.Decision, name string) bool {
	n := headerKey(name)
	if slices.ContainsFunc(d.Controls, func(c string) bool { return headerKey(c) == n }) {
		return true
	}
	for k := range d.Headers {
		if headerKey(k) == n {
			return true
		}
	}
	return false
}

// forwardableTrailers returns, of the trailer names the client declared,
// those a header of the same name could carry to the upstream (see
// scrubClientHeaders, StripCredentials, policyControls), with no values
// yet; never framing or hop-by-hop fields, Host or credentials.
func forwardableTrailers(declared http.Header, x *exchange) http.Header {
	if len(declared) == 0 {
		return nil
	}
	probe := make(http.Header, len(declared))
	for k := range declared {
		probe[k] = []string{"x"}
	}
	scrubClientHeaders(probe, x.client.Trusted)
	x.st.Auth.StripCredentials(probe)
	out := http.Header{}
	for k := range probe {
		switch headerKey(k) {
		case "authorization", "proxy-authorization", "cookie", "host", "content-length", "content-type",
			"content-encoding", "transfer-encoding", "te", "trailer", "connection", "keep-alive",
			"proxy-connection", "upgrade", "expect", "x-request-id":
			continue
		}
		if isIdentityHeader(k) || policyControls(x.decision, k) {
			continue
		}
		out[k] = nil
	}
	return out
}
