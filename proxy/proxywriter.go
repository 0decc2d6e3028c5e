package proxy

import (
	"io"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"time"
)

// proxyWriter is the ResponseWriter the reverse proxy writes a forwarded
// response to. It
//   - bounds each write and flush of the response by server.write_timeout
//     (a client that stops reading), clearing the deadline in between: the
//     waits for the upstream are not the client's (on HTTP/2 a deadline
//     left set resets the stream even while nothing is being written);
//     streaming responses are exempt;
//   - cleans interim (1xx) responses, which ReverseProxy passes on as the
//     upstream sent them: no hop-by-hop fields (HTTP/2 forbids them: a 103
//     with Connection would fail the whole request), no identity headers,
//     no Set-Cookie, and Portcullis's X-Request-Id;
//   - puts back, on the final response after an interim one, every header
//     Portcullis had set (X-Request-Id, HSTS, Connection: close, a
//     refreshed session's Set-Cookie), which ReverseProxy clears after
//     each interim response;
//   - keeps net/http from sniffing a Content-Type the upstream did not
//     send: a proxy does not invent media types (RFC 9110 §8.3).
type proxyWriter struct {
	http.ResponseWriter
	x       *exchange
	own     http.Header // what Portcullis set before forwarding
	interim bool        // an interim response went out (and cleared the header)
}

func newProxyWriter(w http.ResponseWriter, x *exchange) *proxyWriter {
	return &proxyWriter{ResponseWriter: w, x: x, own: w.Header().Clone()}
}

// Unwrap lets http.ResponseController reach the server's writer (Hijack,
// EnableFullDuplex).
func (p *proxyWriter) Unwrap() http.ResponseWriter { return p.ResponseWriter }

func (p *proxyWriter) WriteHeader(code int) {
	h := p.Header()
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		cleanInterim(h)
		h.Del("Set-Cookie")
		h[HeaderRequestID] = p.own[HeaderRequestID]
		if v, ok := p.own["Strict-Transport-Security"]; ok {
			h["Strict-Transport-Security"] = v
		}
		p.interim = true
		p.ResponseWriter.WriteHeader(code)
		return
	}
	if p.interim {
		for k, v := range p.own {
			switch {
			case k == "Set-Cookie":
				h[k] = append(slices.Clone(v), h[k]...)
			case k == HeaderRequestID || k == "Strict-Transport-Security" || k == "Connection":
				h[k] = v
			default:
				if _, ok := h[k]; !ok {
					h[k] = v
				}
			}
		}
	}
	if _, ok := h["Content-Type"]; !ok {
		h["Content-Type"] = nil
	}
	p.ResponseWriter.WriteHeader(code)
}

func (p *proxyWriter) Write(b []byte) (int, error) {
	if p.x.streaming {
		return p.ResponseWriter.Write(b)
	}
	p.deadline()
	defer p.clearDeadline()
	return p.ResponseWriter.Write(b)
}

// FlushError is what http.ResponseController.Flush calls (ReverseProxy
// flushes through it): a flush writes to the client too.
func (p *proxyWriter) FlushError() error {
	if !p.x.streaming {
		p.deadline()
		defer p.clearDeadline()
	}
	return http.NewResponseController(p.ResponseWriter).Flush()
}

func (p *proxyWriter) deadline() {
	_ = p.x.rc.SetWriteDeadline(time.Now().Add(p.x.st.Server.WriteTimeout))
}

func (p *proxyWriter) clearDeadline() { _ = p.x.rc.SetWriteDeadline(time.Time{}) }

// hopByHop are the fields of RFC 9110 §7.6.1 (and the obsolete ones
// proxies still meet), which belong to one connection.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// cleanInterim removes from an interim response's header the hop-by-hop
// fields, those its Connection field names, and identity headers.
func cleanInterim(h http.Header) {
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
	for name := range h {
		if isIdentityHeader(name) {
			delete(h, name)
		}
	}
}

// tunnelConn hides the upstream connection's CloseWrite from ReverseProxy
// (see upstreamAnswered): a protocol switch then ends as soon as either
// side does.
type tunnelConn struct{ io.ReadWriteCloser }

// routeTimer runs its function when d passes without touch or stop: the
// route timeout, restarted whenever the upstream takes more of the
// request body, stopped for good once the upstream answers.
type routeTimer struct {
	mu      sync.Mutex
	t       *time.Timer
	d       time.Duration
	stopped bool
}

func newRouteTimer(d time.Duration, f func()) *routeTimer {
	return &routeTimer{t: time.AfterFunc(d, f), d: d}
}

func (rt *routeTimer) touch() {
	rt.mu.Lock()
	if !rt.stopped {
		rt.t.Reset(rt.d)
	}
	rt.mu.Unlock()
}

func (rt *routeTimer) stop() {
	rt.mu.Lock()
	rt.stopped = true
	rt.t.Stop()
	rt.mu.Unlock()
}
