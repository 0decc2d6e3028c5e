package identity

import (
	"net"
	"net/url"
	"regexp"
	"strings"
)

// maxReturnLen bounds a return-to target; longer values fall back.
const maxReturnLen = 2048

// badSequence matches a slash or backslash followed (after optional
// whitespace or one or two dots) by another: "//", "/\", "/./", "/../",
// "/ /". Browsers and upstream routers disagree on such paths, and return
// targets never need them.
var badSequence = regexp.MustCompile(`[/\\](?:[\s\v]*|\.{1,2})[/\\]`)

// returnChecker decides whether a return-to target (the `rd` of login and
// logout, or the URL a sign-in started from) may be followed.
//
// A target is followed only when it is either a same-origin absolute path
// ("/reports?q=1") or an https URL whose host is exactly external_url's
// host or a configured route host, in lower-case ASCII, without userinfo,
// with no port or the port of the https listener. Anything unusual falls
// back: characters outside RFC 3986 (whitespace, controls, backslashes,
// non-ASCII), any '%' that decodes to another escape (double encoding), an
// encoded slash or backslash, "//", "/./" or "/../" anywhere after the
// authority (even in the query), scheme-relative and other schemes.
type returnChecker struct {
	externalHost string
	externalPort string
	httpsPort    string
	hostAllowed  func(string) bool
}

// check validates raw for a request that arrived on curHost:curPort and
// returns the absolute https URL to follow.
func (c *returnChecker) check(raw, curHost, curPort string) (string, bool) {
	if raw == "" || len(raw) > maxReturnLen || !uriChars(raw) {
		return "", false
	}
	lower := strings.ToLower(raw)
	if strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") {
		return "", false
	}
	if raw[0] == '/' {
		if !cleanRest(raw) {
			return "", false
		}
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
			return "", false
		}
		return "https://" + joinHostPort(curHost, curPort) + raw, true
	}

	const scheme = "https://"
	if !strings.HasPrefix(lower, scheme) {
		return "", false
	}
	rest := raw[len(scheme):]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := strings.ToLower(rest[:end]), rest[end:]
	host, port := authority, ""
	if i := strings.LastIndexByte(authority, ':'); i >= 0 {
		host, port = authority[:i], authority[i+1:]
		if port == "" || !allDigits(port) {
			return "", false
		}
	}
	if !validHostname(host) || !c.hostOK(host) || !c.portOK(port, curPort) {
		return "", false
	}
	if tail != "" && !cleanRest(tail) {
		return "", false
	}
	if u, err := url.Parse(raw); err != nil || u.User != nil || u.Opaque != "" || strings.ToLower(u.Host) != authority {
		return "", false
	}
	return scheme + authority + tail, true
}

func (c *returnChecker) hostOK(host string) bool {
	if host == c.externalHost {
		return true
	}
	return c.hostAllowed != nil && c.hostAllowed(host)
}

func (c *returnChecker) portOK(port, curPort string) bool {
	if port == "" || port == "443" {
		return true
	}
	return port == curPort || port == c.httpsPort || port == c.externalPort
}

// cleanRest checks a path (with query and fragment) once decoded: no
// double encoding, no controls or backslashes, no "//"-like sequences.
func cleanRest(s string) bool {
	dec, err := url.PathUnescape(s)
	if err != nil || strings.Contains(dec, "%") {
		return false
	}
	for i := 0; i < len(dec); i++ {
		if b := dec[i]; b < 0x20 || b == 0x7f || b == '\\' {
			return false
		}
	}
	return !badSequence.MatchString(dec) && !badSequence.MatchString(s)
}

// uriChars reports whether s holds only RFC 3986 characters (unreserved,
// reserved and '%').
func uriChars(s string) bool {
	for i := 0; i < len(s); i++ {
		b := s[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		case strings.IndexByte("-._~:/?#[]@!$&'()*+,;=%", b) >= 0:
		default:
			return false
		}
	}
	return true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return len(s) <= 5
}

// splitHost splits a Host header value into a lower-case hostname without
// trailing dot and a port ("" when absent).
func splitHost(hostport string) (host, port string) {
	host = hostport
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		host, port = h, p
	}
	return strings.TrimSuffix(strings.ToLower(host), "."), port
}

func joinHostPort(host, port string) string {
	if port == "" || port == "443" {
		return host
	}
	return net.JoinHostPort(host, port)
}
