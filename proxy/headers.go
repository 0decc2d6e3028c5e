package proxy

import (
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
)

// Headers Portcullis sets for upstreams (SPEC §4).
const (
	HeaderUser      = "X-Portcullis-User"
	HeaderEmail     = "X-Portcullis-Email"
	HeaderGroups    = "X-Portcullis-Groups"
	HeaderAssertion = "X-Portcullis-Assertion"
	HeaderRequestID = "X-Request-Id"
)

// pathOverrideHeaders are honoured by some frameworks (IIS URL Rewrite,
// Symfony, Traefik middlewares) as the "real" path. Portcullis never reads
// them, and removes them so that no backend routes on a path the policy did
// not see.
var pathOverrideHeaders = []string{
	"X-Original-Url", "X-Rewrite-Url", "X-Forwarded-Uri", "X-Forwarded-Path",
	"X-Forwarded-Prefix", "X-Original-Uri", "X-Override-Url",
}

// isIdentityHeader reports whether a header name could be read by some
// backend as one of Portcullis's identity headers: any name that, with '_'
// read as '-' and case ignored, starts with "x-portcullis-". (CGI, PHP and
// some Python servers turn both '-' and '_' into '_', so "X_Portcullis_User"
// would alias "X-Portcullis-User".)
func isIdentityHeader(name string) bool {
	const prefix = "x-portcullis"
	if len(name) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := name[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c == '_' {
			c = '-'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

// foreignIdentityHeaders are (lower case, '_' read as '-') the names and
// name prefixes other identity-aware proxies and platforms use to tell a
// backend who the user is (oauth2-proxy, Pomerium, Cloudflare Access,
// Google IAP, AWS ALB, Azure App Service, Apache's REMOTE_USER, Grafana's
// auth proxy, Authelia). A backend moved behind Portcullis may still trust one of
// them, so no client gets to send them, through a trusted proxy or not.
var foreignIdentityHeaders = []string{
	"x-forwarded-user", "x-forwarded-email", "x-forwarded-groups", "x-forwarded-preferred-username",
	"x-forwarded-access-token", "x-auth-request-", "x-pomerium-", "cf-access-", "x-goog-authenticated-user-",
	"x-goog-iap-", "x-amzn-oidc-", "x-ms-client-principal", "remote-user", "x-remote-user", "x-remote-group",
	"x-remote-email", "x-webauth-", "x-authenticated-user", "x-authenticated-groups",
	// Authelia's and others' forward-auth names.
	"remote-groups", "remote-email", "remote-name", "x-email", "x-preferred-username",
}

// clientAddrHeaders carry the client's address as some front end saw it.
// Only a trusted proxy's are believed (and kept); Portcullis sets
// X-Real-Ip itself.
var clientAddrHeaders = []string{
	"x-real-ip", "x-client-ip", "true-client-ip", "cf-connecting-ip", "fastly-client-ip",
	"x-cluster-client-ip", "x-originating-ip", "x-remote-ip", "x-remote-addr", "client-ip",
}

// scrubClientHeaders removes every client-supplied header that only
// Portcullis may set. h is the outgoing request's header; hop-by-hop headers
// (and names listed in Connection) have already been removed by
// httputil.ReverseProxy before Rewrite runs. Names are compared case
// insensitively with '_' read as '-' (CGI, PHP and some Python servers turn
// both into '_', so "X_Real_IP" reaches the application as X-Real-IP):
//   - Portcullis's own X-Portcullis-* and the path overrides some frameworks
//     honour, always;
//   - other identity-aware proxies' identity headers, always;
//   - from a client that is not a trusted proxy, also every X-Forwarded-*
//     (Portcullis sets For, Proto and Host itself), Forwarded, X-Request-Id
//     and the client-address headers.
func scrubClientHeaders(h http.Header, trusted bool) {
	for name := range h {
		l := strings.ToLower(strings.ReplaceAll(name, "_", "-"))
		drop := isIdentityHeader(name) || slices.Contains(pathOverrideLower, l) || hasAnyPrefix(l, foreignIdentityHeaders) ||
			l == "http2-settings"
		if !trusted {
			drop = drop || strings.HasPrefix(l, "x-forwarded-") || l == "forwarded" || l == "x-request-id" ||
				slices.Contains(clientAddrHeaders, l)
		} else if l != strings.ToLower(name) {
			// A trusted proxy's headers come with canonical names; one
			// with '_' is the client's, passed along.
			drop = drop || strings.HasPrefix(l, "x-forwarded-") || l == "forwarded" || l == "x-request-id" ||
				slices.Contains(clientAddrHeaders, l)
		}
		if drop {
			delete(h, name)
		}
	}
}

// pathOverrideLower is pathOverrideHeaders in lower case.
var pathOverrideLower = func() []string {
	out := make([]string, len(pathOverrideHeaders))
	for i, n := range pathOverrideHeaders {
		out[i] = strings.ToLower(n)
	}
	return out
}()

// hasAnyPrefix reports whether s starts with one of prefixes (a whole name
// counts as its own prefix).
func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// clientInfo is what Portcullis believes about the client, given which
// peers are trusted proxies.
type clientInfo struct {
	// Addr is the client's IP address: the peer's, or with a trusted peer
	// the right-most X-Forwarded-For entry that is not itself trusted.
	Addr string
	// Trusted is true when the immediate peer is a trusted proxy.
	Trusted bool
	// Proto and Host are the scheme and host the client used.
	Proto, Host string
	// RequestID is a request id from a trusted proxy, if any.
	RequestID string
}

func resolveClient(r *http.Request, trusted []netip.Prefix) clientInfo {
	ci := clientInfo{Proto: "https", Host: r.Host}
	if r.TLS == nil {
		ci.Proto = "http"
	}
	peer := peerAddr(r.RemoteAddr)
	ci.Addr = peer.String()
	if !peer.IsValid() {
		ci.Addr = r.RemoteAddr
	}
	if !inPrefixes(peer, trusted) {
		return ci
	}
	ci.Trusted = true
	// Walk X-Forwarded-For from the right, skipping trusted hops.
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		for _, part := range strings.Split(v, ",") {
			if s := strings.TrimSpace(part); s != "" {
				hops = append(hops, s)
			}
		}
	}
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(hops[i])
		if err != nil {
			break
		}
		ci.Addr = a.Unmap().String()
		if !inPrefixes(a.Unmap(), trusted) {
			break
		}
	}
	if p := r.Header.Get("X-Forwarded-Proto"); p == "http" || p == "https" {
		ci.Proto = p
	}
	if h := r.Header.Get("X-Forwarded-Host"); h != "" {
		if _, ok := NormalizeHost(h); ok {
			ci.Host = h
		}
	}
	if id := r.Header.Get(HeaderRequestID); validRequestID(id) {
		ci.RequestID = id
	}
	return ci
}

func peerAddr(remote string) netip.Addr {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

func inPrefixes(a netip.Addr, ps []netip.Prefix) bool {
	if !a.IsValid() {
		return false
	}
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// validRequestID accepts ids of up to 128 visible ASCII characters without
// separators that could break logs or headers.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}
