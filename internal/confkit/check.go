package confkit

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// RequireDuration records a problem when d is not strictly positive.
func RequireDuration(p *Problems, path string, d time.Duration) {
	if d <= 0 {
		p.Add(path, "must be a positive duration such as 30s or 12h, got %s", d)
	}
}

// ParseURL parses an absolute URL whose scheme is one of schemes and that has
// a host, recording a problem (and returning nil) otherwise. Userinfo,
// fragments and (when noPath is set) paths other than "/" are refused.
func ParseURL(p *Problems, path, raw string, noPath bool, schemes ...string) *url.URL {
	if raw == "" {
		p.Add(path, "is required: give an absolute URL such as %s://host:port", schemes[0])
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		p.Add(path, "is not a valid URL: %v", err)
		return nil
	}
	ok := false
	for _, s := range schemes {
		if strings.EqualFold(u.Scheme, s) {
			ok = true
		}
	}
	if !ok {
		p.Add(path, "scheme %q is not allowed: use %s", u.Scheme, strings.Join(schemes, " or "))
		return nil
	}
	if u.Host == "" {
		p.Add(path, "has no host: give an absolute URL such as %s://host:port", schemes[0])
		return nil
	}
	if u.User != nil {
		p.Add(path, "must not carry user:password; use the dedicated secret setting")
		return nil
	}
	if u.Fragment != "" || u.RawQuery != "" {
		p.Add(path, "must not have a query or fragment")
		return nil
	}
	if noPath && u.Path != "" && u.Path != "/" {
		p.Add(path, "must not have a path (got %q)", u.Path)
		return nil
	}
	u.Scheme = strings.ToLower(u.Scheme)
	u.Host = strings.ToLower(u.Host)
	return u
}

// OneOf records a problem when v is not among allowed.
func OneOf(p *Problems, path, v string, allowed ...string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	p.Add(path, "must be one of %s, got %q", strings.Join(allowed, ", "), v)
	return false
}

// Quote renders a list for messages: "a", "b".
func Quote(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
