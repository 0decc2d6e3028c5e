package proxy

import (
	"strings"
	"testing"

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
