package proxy

import (
	"testing"

	"github.com/portcullis/portcullis/internal/confkit"
)

func TestRouteTable(t *testing.T) {
	routes := []Route{
		{Name: "app-root", Host: "app.example.com", Path: "/"},
		{Name: "app-api", Host: "app.example.com", Path: "/api"},
		{Name: "app-api-v2", Host: "app.example.com", Path: "/api/v2/"},
		{Name: "wild-root", Host: "*.example.com", Path: "/"},
		{Name: "wild-admin", Host: "*.example.com", Path: "/admin"},
		{Name: "only-docs", Host: "docs.example.org", Path: "/docs"},
		{Name: "upper", Host: "MiXeD.Example.NET.", Path: "/"},
	}
	for i := range routes {
		routes[i].Upstream = "http://127.0.0.1:1"
		routes[i].Policy = "portcullis.routes.x"
		routes[i].SetDefaults()
	}
	var p confkit.Problems
	ValidateRoutes(&p, "routes", routes)
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
	tb := newTable(routes)
	tests := []struct {
		host, path, want string
	}{
		{"app.example.com", "/", "app-root"},
		{"app.example.com", "/index.html", "app-root"},
		{"app.example.com", "/api", "app-api"},
		{"app.example.com", "/api/users", "app-api"},
		{"app.example.com", "/apiary", "app-root"}, // prefixes match on segment boundaries
		{"app.example.com", "/api/v2/x", "app-api-v2"},
		{"app.example.com", "/api/v2", "app-api"},   // "/api/v2/" needs the slash
		{"app.example.com", "/admin", "wild-admin"}, // the longest prefix wins, whichever host form matched
		{"app.example.com", "/admin/x", "wild-admin"},
		{"app.example.com", "/adminx", "app-root"}, // a tie ("/"): the exact host beats the wildcard
		{"other.example.com", "/", "wild-root"},
		{"other.example.com", "/admin/x", "wild-admin"},
		{"other.example.com", "/administrator", "wild-root"},
		{"a.b.example.com", "/", ""}, // a wildcard covers one label
		{"example.com", "/", ""},     // and not the apex
		{"docs.example.org", "/docs/intro", "only-docs"},
		{"docs.example.org", "/", ""}, // host matches but no prefix does
		{"mixed.example.net", "/", "upper"},
		{"unknown.test", "/", ""},
	}
	for _, tt := range tests {
		t.Run(tt.host+tt.path, func(t *testing.T) {
			got := ""
			if r := tb.match(tt.host, tt.path); r != nil {
				got = r.Name
			}
			if got != tt.want {
				t.Errorf("match(%q, %q) = %q, want %q", tt.host, tt.path, got, tt.want)
			}
		})
	}
}

func TestNormalizeHost(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"App.Example.com", "app.example.com", true},
		{"app.example.com:8443", "app.example.com", true},
		{"app.example.com.", "app.example.com", true},
		{"app.example.com.:443", "app.example.com", true},
		{"[::1]:8443", "[::1]", true},
		{"127.0.0.1", "127.0.0.1", true},
		{"", "", false},
		{"evil.com/x", "", false},
		{"a b", "", false},
		{"app.example.com:80x", "", false},
		{"localhost:99999", "", false},
		{"localhost:65536", "", false},
		{"localhost:", "", false},
		{"localhost:0", "", false},
		{"[::1]:", "", false},
		{"localhost:65535", "localhost", true},
		{"xn--80ak6aa92e.com", "xn--80ak6aa92e.com", true},
		{"аpple.com", "", false}, // Cyrillic a: only ASCII/punycode is routed
	}
	for _, tt := range tests {
		got, ok := NormalizeHost(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("NormalizeHost(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
