package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"
)

// ErrBadTarget is a request target that Portcullis refuses to interpret,
// because a backend might read it differently than the router did.
var ErrBadTarget = errors.New("proxy: bad request target")

// Target is a request's path after normalization: the single form that is
// both routed and forwarded.
type Target struct {
	// Path is the decoded, canonical path: what routes and policies see.
	Path string
	// RawPath is Path in escaped form as sent to the upstream (percent
	// escapes that are not unreserved characters are kept, upper-cased).
	RawPath string
	// RawQuery is the query string, untouched.
	RawQuery string
}

// ParseTarget checks the request-target of r and normalizes its path.
//
// It refuses (with an error wrapping ErrBadTarget) everything that
// different HTTP stacks are known to interpret differently: targets that are
// not in origin form, encoded slashes and backslashes, raw backslashes, NUL,
// CR/LF and other control characters, a raw '#', invalid or double percent
// encoding (%25 followed by two hex digits), path parameters (';', raw or
// encoded: servlet containers cut them off), segments ending in a dot or a
// space (Windows servers drop those), and escapes whose bytes are not UTF-8
// (overlong forms of '.' and '/'). Dot segments are
// resolved and runs of slashes merged, after decoding escapes of unreserved
// characters (so "/%2e%2e/" is a dot segment, as a backend would see it).
func ParseTarget(r *http.Request) (Target, error) {
	// The target as the client sent it: the request line's target, or
	// HTTP/2's :path verbatim (both servers keep it in RequestURI), so
	// that bytes a request line could not carry (a space, CR, LF) are
	// refused here rather than re-escaped by url.URL.
	raw := r.RequestURI
	if raw == "" {
		// A request built in-process (tests, policy eval): only r.URL.
		raw = r.URL.RequestURI()
		if r.URL.RawPath == "" && r.URL.Path != "" {
			raw = r.URL.EscapedPath()
			if r.URL.RawQuery != "" || r.URL.ForceQuery {
				raw += "?" + r.URL.RawQuery
			}
		}
	}
	if !strings.HasPrefix(raw, "/") {
		return Target{}, fmt.Errorf("%w: %q is not an origin-form target (must start with /)", ErrBadTarget, truncate(raw))
	}
	rawPath, rawQuery, _ := strings.Cut(raw, "?")
	for i := 0; i < len(rawQuery); i++ {
		if c := rawQuery[i]; c < 0x21 || c == 0x7f || c == '#' {
			return Target{}, fmt.Errorf("%w: control character or '#' in query", ErrBadTarget)
		} else if c == ';' {
			// Some servers (Rack, older Python) split a query at ';' as at
			// '&', the policy does not: x=1;admin=1 would be one thing to
			// the policy and another to the upstream.
			return Target{}, fmt.Errorf("%w: ';' in query (send it as %%3B)", ErrBadTarget)
		}
	}
	escaped, err := NormalizePath(rawPath)
	if err != nil {
		return Target{}, err
	}
	decoded, err := url.PathUnescape(escaped)
	if err != nil {
		return Target{}, fmt.Errorf("%w: %v", ErrBadTarget, err)
	}
	if !utf8.ValidString(decoded) {
		// Overlong forms such as %C0%AE ('.') and stray bytes: some
		// decoders map them to ASCII, others reject them.
		return Target{}, fmt.Errorf("%w: escapes that are not UTF-8", ErrBadTarget)
	}
	return Target{Path: decoded, RawPath: escaped, RawQuery: rawQuery}, nil
}

// NormalizePath returns the canonical escaped form of an escaped path, or an
// error wrapping ErrBadTarget. See ParseTarget for what is refused.
func NormalizePath(raw string) (string, error) {
	if !strings.HasPrefix(raw, "/") {
		return "", fmt.Errorf("%w: path must start with /", ErrBadTarget)
	}
	var b strings.Builder
	b.Grow(len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '%':
			if i+2 >= len(raw) || !ishex(raw[i+1]) || !ishex(raw[i+2]) {
				return "", fmt.Errorf("%w: invalid percent-encoding", ErrBadTarget)
			}
			v := unhex(raw[i+1])<<4 | unhex(raw[i+2])
			switch {
			case v == '/' || v == '\\':
				return "", fmt.Errorf("%w: encoded slash or backslash", ErrBadTarget)
			case v < 0x20 || v == 0x7f:
				return "", fmt.Errorf("%w: encoded control character", ErrBadTarget)
			case v == '%' && i+4 < len(raw) && ishex(raw[i+3]) && ishex(raw[i+4]):
				// %25XX: a server that decodes twice reads XX's byte.
				return "", fmt.Errorf("%w: double percent-encoding", ErrBadTarget)
			case v == ';':
				return "", fmt.Errorf("%w: path parameter (';')", ErrBadTarget)
			}
			if unreserved(v) {
				b.WriteByte(v)
			} else {
				b.WriteByte('%')
				b.WriteByte(upperhex(raw[i+1]))
				b.WriteByte(upperhex(raw[i+2]))
			}
			i += 2
		case c == '\\':
			return "", fmt.Errorf("%w: backslash in path", ErrBadTarget)
		case c == '#':
			return "", fmt.Errorf("%w: raw '#' in request target", ErrBadTarget)
		case c == ';':
			// Servlet containers and Spring cut "/admin;x" to "/admin",
			// which no prefix rule for /admin would see.
			return "", fmt.Errorf("%w: path parameter (';')", ErrBadTarget)
		case c < 0x21 || c >= 0x7f:
			return "", fmt.Errorf("%w: control, space or non-ASCII byte in path", ErrBadTarget)
		default:
			b.WriteByte(c)
		}
	}
	return cleanSegments(b.String())
}

// cleanSegments merges slashes and resolves dot segments, keeping a
// trailing slash.
func cleanSegments(p string) (string, error) {
	trailing := strings.HasSuffix(p, "/") || strings.HasSuffix(p, "/.") || strings.HasSuffix(p, "/..")
	segs := strings.Split(p, "/")
	out := make([]string, 0, len(segs))
	for _, s := range segs {
		switch {
		case s == "" || s == ".":
		case s == "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		case strings.HasSuffix(s, ".") || strings.HasSuffix(s, "%20"):
			// Windows servers drop trailing dots and spaces: "/admin." and
			// "/admin%20" are "/admin" there.
			return "", fmt.Errorf("%w: path segment ending in a dot or space", ErrBadTarget)
		default:
			out = append(out, s)
		}
	}
	res := "/" + strings.Join(out, "/")
	if trailing && res != "/" {
		res += "/"
	}
	return res, nil
}

func unreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func ishex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

func upperhex(c byte) byte {
	if c >= 'a' && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// NormalizeHost lower-cases a Host header value and strips its port and a
// trailing dot. It reports false for values that are not a host name or IP
// literal.
func NormalizeHost(h string) (string, bool) {
	if h == "" {
		return "", false
	}
	host := h
	if strings.HasPrefix(host, "[") {
		end := strings.IndexByte(host, ']')
		if end < 0 {
			return "", false
		}
		rest := host[end+1:]
		if rest != "" && (rest[0] != ':' || !validPort(rest[1:])) {
			return "", false
		}
		host = host[:end+1]
	} else if i := strings.LastIndexByte(host, ':'); i >= 0 {
		if !validPort(host[i+1:]) {
			return "", false
		}
		host = host[:i]
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if !validHostname(host) {
		return "", false
	}
	return host, true
}

// validPort reports whether s is a TCP port number, 1 to 65535.
func validPort(s string) bool {
	if len(s) == 0 || len(s) > 5 {
		return false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n >= 1 && n <= 65535
}
