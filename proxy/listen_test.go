package proxy

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/portcullis/portcullis/internal/confkit"
)

// TestListenersNeedTheirOwnPorts: two listeners on one port are a config
// error naming both keys, not an "address already in use" at start.
func TestListenersNeedTheirOwnPorts(t *testing.T) {
	tests := []struct {
		https, http, admin string
		want               string // "" means valid
	}{
		{":8443", ":8080", "127.0.0.1:9901", ""},
		{"127.0.0.1:8443", "", "127.0.0.2:8443", ""},
		{":8443", "", ":8443", `listen.admin: ":8443" is the port of listen.https`},
		{":8443", "", "127.0.0.1:8443", `listen.admin: "127.0.0.1:8443" is the port of listen.https`},
		{"0.0.0.0:8443", ":8080", "[::1]:8080", `listen.admin: "[::1]:8080" is the port of listen.http`},
		{"127.0.0.1:9901", "", "127.0.0.1:9901", "listen.admin"},
	}
	for _, tt := range tests {
		c := ListenConfig{HTTPS: tt.https, HTTP: tt.http, Admin: tt.admin}
		var p confkit.Problems
		c.Validate(&p, "listen")
		err := p.Err()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%+v: %v", tt, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%+v: error %v, want one containing %q", tt, err, tt.want)
		}
	}
}

// TestMaxHeaderBytesTakesUnits: server.max_header_bytes is a size like the
// others ("64KiB"), not only a number of bytes.
func TestMaxHeaderBytesTakesUnits(t *testing.T) {
	for doc, want := range map[string]confkit.ByteSize{"max_header_bytes: 64KiB": 64 << 10, "max_header_bytes: 8192": 8192} {
		var c ServerConfig
		if err := yaml.Unmarshal([]byte(doc), &c); err != nil {
			t.Fatalf("%s: %v", doc, err)
		}
		c.SetDefaults()
		var p confkit.Problems
		c.Validate(&p, "server")
		if err := p.Err(); err != nil || c.MaxHeaderBytes != want {
			t.Errorf("%s: %v, %v; want %v", doc, c.MaxHeaderBytes, err, want)
		}
	}
}
