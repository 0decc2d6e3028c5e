package policy

import (
	"context"
	"maps"
	"testing"
	"time"
)

// TestShippedPolicies decides requests with every route package of the
// policies/ library through Engine.Eval, as the proxy does.
func TestShippedPolicies(t *testing.T) {
	e, err := NewEngine(Config{Dir: shippedDir, DecisionTimeout: testTimeout}, Options{Clock: fixedClock{thursdayMorning}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.Reload(ctx); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	routes := []string{
		"portcullis.routes.demo", "portcullis.routes.admin", "portcullis.routes.partners",
		"portcullis.routes.docs", "portcullis.routes.api", "portcullis.routes.payroll",
		"portcullis.routes.internal", "portcullis.routes.finance",
	}
	if err := e.SetPackages(routes); err != nil {
		t.Fatalf("SetPackages: %v", err)
	}

	at := func(in *Input, ts string) *Input {
		tm, err := time.Parse(time.RFC3339, ts)
		if err != nil {
			t.Fatal(err)
		}
		in.Request.Time = tm
		return in
	}
	from := func(in *Input, addr string) *Input { in.Request.RemoteAddr = addr; return in }
	unverified := func(in *Input) *Input { in.User.EmailVerified = false; return in }
	hr := userSpec{sub: "hr", groups: []string{"hr"}}
	fin := func(amr ...any) userSpec { return userSpec{sub: "fin", groups: []string{"finance"}, amr: amr} }
	bobMFA := userSpec{sub: "bob", groups: []string{"engineering", "admins"}, amr: []any{"pwd", "otp"}}
	pat := userSpec{sub: "pat", email: "pat@partner.example"}
	eve := userSpec{sub: "eve", email: "eve@evil.test", groups: []string{"sales"}}
	writer := userSpec{sub: "wendy", groups: []string{"writers"}}
	analyst := userSpec{sub: "ana", groups: []string{"analysts"}}

	tests := []struct {
		name    string
		pkg     string
		in      *Input
		allow   bool
		reason  string
		status  int
		headers map[string]string
	}{
		{"demo alice app", "portcullis.routes.demo", input(alice, "GET", "/reports/q3"), true, "member of engineering or admins", 0, map[string]string{"X-Demo-Role": "member"}},
		{"demo alice admin area", "portcullis.routes.demo", input(alice, "GET", "/admin/users"), false, "the /admin area is for group admins", 403, nil},
		{"demo alice admin root", "portcullis.routes.demo", input(alice, "GET", "/admin"), false, "the /admin area is for group admins", 403, nil},
		{"demo bob app", "portcullis.routes.demo", input(bob, "GET", "/"), true, "member of engineering or admins", 0, map[string]string{"X-Demo-Role": "admin"}},
		{"demo bob admin area", "portcullis.routes.demo", input(bob, "POST", "/admin/users"), true, "admin: member of admins", 0, map[string]string{"X-Demo-Role": "admin"}},
		{"demo anonymous", "portcullis.routes.demo", input(anon, "GET", "/"), false, "sign-in required", 403, nil},
		{"demo other group", "portcullis.routes.demo", input(eve, "GET", "/"), false, "the demo app is for groups engineering or admins", 403, nil},

		{"admin bob reads", "portcullis.routes.admin", input(bob, "GET", "/"), true, "member of admins", 0, nil},
		{"admin bob writes without mfa", "portcullis.routes.admin", input(bob, "POST", "/"), false, "changes require multi-factor sign-in: sign out and in again with a second factor", 403, nil},
		{"admin bob writes with mfa", "portcullis.routes.admin", input(bobMFA, "POST", "/"), true, "member of admins", 0, nil},
		{"admin alice", "portcullis.routes.admin", input(alice, "GET", "/"), false, "requires group admins", 403, nil},

		{"partners partner", "portcullis.routes.partners", input(pat, "GET", "/"), true, "verified address at partner.example", 0, nil},
		{"partners staff", "portcullis.routes.partners", input(alice, "GET", "/"), true, "verified address at example.com", 0, nil},
		{"partners unverified", "portcullis.routes.partners", unverified(input(pat, "GET", "/")), false, "your email address is not verified by the identity provider", 403, nil},
		{"partners other domain", "portcullis.routes.partners", input(eve, "GET", "/"), false, "email domain evil.test is not a partner domain", 403, nil},

		{"docs read", "portcullis.routes.docs", input(alice, "GET", "/guide"), true, "reading", 0, nil},
		{"docs write denied", "portcullis.routes.docs", input(alice, "PUT", "/guide"), false, "PUT needs group writers; everyone else may only read", 405, nil},
		{"docs writer", "portcullis.routes.docs", input(writer, "PUT", "/guide"), true, "writer", 0, map[string]string{"X-Docs-Can-Edit": "true"}},
		{"docs anonymous", "portcullis.routes.docs", input(anon, "GET", "/guide"), false, "sign-in required", 403, nil},

		{"api health anonymous", "portcullis.routes.api", input(anon, "GET", "/api/health"), true, "allowed", 0, nil},
		{"api reports analyst", "portcullis.routes.api", input(analyst, "GET", "/api/v1/reports/q3"), true, "allowed", 0, nil},
		{"api reports engineer", "portcullis.routes.api", input(alice, "GET", "/api/v1/reports/q3"), false, "reports are read-only for group analysts", 403, nil},
		{"api engineer deploys", "portcullis.routes.api", input(alice, "POST", "/api/v1/deployments"), true, "allowed", 0, nil},
		{"api unknown path", "portcullis.routes.api", input(alice, "GET", "/api/v9/x"), false, "no such API path", 404, nil},

		{"payroll hr office hours", "portcullis.routes.payroll", input(hr, "GET", "/"), true, "hr, within office hours", 0, nil},
		{"payroll hr evening", "portcullis.routes.payroll", at(input(hr, "GET", "/"), "2026-11-26T19:00:00Z"), false, "payroll is open Monday to Friday, 08:00 to 18:00 Berlin time", 403, nil},
		{"payroll hr saturday", "portcullis.routes.payroll", at(input(hr, "GET", "/"), "2026-11-28T10:00:00Z"), false, "payroll is open Monday to Friday, 08:00 to 18:00 Berlin time", 403, nil},
		{"payroll not hr", "portcullis.routes.payroll", input(alice, "GET", "/"), false, "requires group hr", 403, nil},

		{"internal office", "portcullis.routes.internal", input(alice, "GET", "/"), true, "signed in from the office or VPN", 0, nil},
		{"internal office v6", "portcullis.routes.internal", from(input(alice, "GET", "/"), "2001:db8:100::7"), true, "signed in from the office or VPN", 0, nil},
		{"internal outside", "portcullis.routes.internal", from(input(alice, "GET", "/"), "203.0.113.9"), false, "source address 203.0.113.9 is outside the office and VPN ranges", 404, nil},

		{"finance mfa", "portcullis.routes.finance", input(fin("pwd", "mfa"), "GET", "/"), true, "finance, multi-factor", 0, nil},
		{"finance password only", "portcullis.routes.finance", input(fin("pwd"), "GET", "/"), false, "requires multi-factor sign-in (amr claim)", 403, nil},
		{"finance no amr", "portcullis.routes.finance", input(userSpec{sub: "fin", groups: []string{"finance"}}, "GET", "/"), false, "requires multi-factor sign-in (amr claim)", 403, nil},
		{"finance engineer", "portcullis.routes.finance", input(alice, "GET", "/"), false, "requires group finance", 403, nil},
	}
	rev := e.Current().Revision()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := e.Eval(ctx, tt.pkg, tt.in)
			if d.Allow != tt.allow || d.Reason != tt.reason || d.Status != tt.status {
				t.Errorf("got allow=%v reason=%q status=%d, want allow=%v reason=%q status=%d",
					d.Allow, d.Reason, d.Status, tt.allow, tt.reason, tt.status)
			}
			wantOutcome := OutcomeDeny
			if tt.allow {
				wantOutcome = OutcomeAllow
			}
			if d.Outcome != wantOutcome || d.Err != nil {
				t.Errorf("got outcome %q err %v, want %q and no error", d.Outcome, d.Err, wantOutcome)
			}
			if !maps.Equal(d.Headers, tt.headers) {
				t.Errorf("got headers %v, want %v", d.Headers, tt.headers)
			}
			if d.Package != tt.pkg || d.Revision != rev {
				t.Errorf("got package %q revision %q, want %q %q", d.Package, d.Revision, tt.pkg, rev)
			}
		})
	}
}
