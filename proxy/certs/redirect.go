package certs

import (
	"net"
	"net/http"
	"strconv"
	"strings"
)

// HTTPHandler is the handler for listen.http. In mode acme it answers
// ACME HTTP-01 validation requests (/.well-known/acme-challenge/...) for
// the managed hosts. Every other request whose Host is one of the hosts
// given to SetHosts gets a 308 redirect to the same host, path and query on
// https (with the port of listen.https, or Options.RedirectPort, unless it
// is 443). The redirect never leaves the requested host, so it cannot be
// turned into an open redirect.
//
// A request for any other Host goes to next when next is not nil (for
// example a load balancer's health check by IP address), and is otherwise
// answered 421 Misdirected Request; a missing or malformed Host gets 400.
func (m *Manager) HTTPHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, ok := requestHost(r.Host)
		if !ok {
			http.Error(w, "Bad Request: missing or malformed Host header", http.StatusBadRequest)
			return
		}
		if _, ok := m.hosts.Load().match(host); !ok {
			if next != nil {
				next.ServeHTTP(w, r)
				return
			}
			http.Error(w, "Misdirected Request: this host is not served here", http.StatusMisdirectedRequest)
			return
		}
		if m.acme != nil && m.acme.handleChallenge(w, r) {
			return
		}
		path := r.URL.EscapedPath()
		if !strings.HasPrefix(path, "/") || r.URL.Host != "" && !strings.EqualFold(r.URL.Host, r.Host) {
			http.Error(w, "Bad Request: the request target must be a path", http.StatusBadRequest)
			return
		}
		target := "https://" + m.redirectAuthority(host) + path
		if r.URL.RawQuery != "" {
			target += "?" + r.URL.RawQuery
		}
		w.Header().Set("Location", target)
		w.WriteHeader(http.StatusPermanentRedirect)
	})
}

func (m *Manager) redirectAuthority(host string) string {
	if strings.Contains(host, ":") { // IPv6 literal
		host = "[" + host + "]"
	}
	if m.redirectPort == 0 || m.redirectPort == 443 {
		return host
	}
	return host + ":" + strconv.Itoa(m.redirectPort)
}

// requestHost returns the normalized host of a Host header value (port
// removed), or false when it is empty or not a plain host[:port].
func requestHost(hostport string) (string, bool) {
	if hostport == "" {
		return "", false
	}
	host := hostport
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		if _, err := strconv.ParseUint(p, 10, 16); err != nil {
			return "", false
		}
		host = h
	} else if strings.HasPrefix(hostport, "[") || strings.Count(hostport, ":") > 0 {
		return "", false
	}
	host = normalizeHost(host)
	if host == "" {
		return "", false
	}
	for _, c := range []byte(host) {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == ':'
		if !ok {
			return "", false
		}
	}
	return host, true
}
