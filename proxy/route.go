package proxy

import (
	"sort"
	"strings"
)

// table selects a route for a host and a normalized path (SPEC §2: the
// longest matching path prefix among the routes whose host matches; an
// exact host beats a wildcard when their prefixes are as long). It is
// immutable once built.
type table struct {
	exact    map[string][]*Route // host -> routes, longest path first
	wildcard map[string][]*Route // "example.com" for "*.example.com"
}

func newTable(routes []Route) *table {
	t := &table{exact: map[string][]*Route{}, wildcard: map[string][]*Route{}}
	for i := range routes {
		r := &routes[i]
		if suffix, ok := strings.CutPrefix(r.Host, "*."); ok {
			t.wildcard[suffix] = append(t.wildcard[suffix], r)
		} else {
			t.exact[r.Host] = append(t.exact[r.Host], r)
		}
	}
	for _, m := range []map[string][]*Route{t.exact, t.wildcard} {
		for _, rs := range m {
			sort.SliceStable(rs, func(i, j int) bool { return len(rs[i].Path) > len(rs[j].Path) })
		}
	}
	return t
}

// match returns the route for host (already normalized) and path, or nil:
// among the routes whose host matches, exactly or by wildcard, the one with
// the longest path prefix that matches; on a tie, the exact host's. A
// wildcard covers exactly one label, as a wildcard certificate does:
// "*.example.com" matches "a.example.com" but neither "example.com" nor
// "a.b.example.com".
func (t *table) match(host, path string) *Route {
	r := longestPrefix(t.exact[host], path)
	if parent, ok := wildcardParent(host); ok {
		if w := longestPrefix(t.wildcard[parent], path); w != nil && (r == nil || prefixLen(w) > prefixLen(r)) {
			return w
		}
	}
	return r
}

// prefixLen is the length of r's path prefix ("/api/" and "/api" count
// the same).
func prefixLen(r *Route) int { return len(strings.TrimSuffix(r.Path, "/")) }

// hasHost reports whether any route serves host.
func (t *table) hasHost(host string) bool {
	if len(t.exact[host]) > 0 {
		return true
	}
	parent, ok := wildcardParent(host)
	return ok && len(t.wildcard[parent]) > 0
}

func wildcardParent(host string) (string, bool) {
	i := strings.IndexByte(host, '.')
	if i <= 0 || i == len(host)-1 {
		return "", false
	}
	return host[i+1:], true
}

func longestPrefix(rs []*Route, path string) *Route {
	for _, r := range rs {
		if pathHasPrefix(path, r.Path) {
			return r
		}
	}
	return nil
}

// pathHasPrefix matches on segment boundaries: "/app" matches "/app" and
// "/app/x" but not "/apple".
func pathHasPrefix(path, prefix string) bool {
	if prefix == "/" {
		return true
	}
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || strings.HasSuffix(prefix, "/") || path[len(prefix)] == '/'
}
