package proxy

import "testing"

func TestIsIdentityHeader(t *testing.T) {
	for _, name := range []string{
		"X-Portcullis-User", "x-portcullis-user", "X-PORTCULLIS-EMAIL", "X_Portcullis_User",
		"x_portcullis_groups", "X-Portcullis_Assertion", "X-Portcullis-Anything", "X-Portcullis",
	} {
		if !isIdentityHeader(name) {
			t.Errorf("isIdentityHeader(%q) = false, want true", name)
		}
	}
	for _, name := range []string{"X-Portcullix-User", "Portcullis-User", "X-Port", "User", "X-Forwarded-User"} {
		if isIdentityHeader(name) {
			t.Errorf("isIdentityHeader(%q) = true, want false", name)
		}
	}
}
