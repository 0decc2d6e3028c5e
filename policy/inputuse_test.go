package policy

import (
	"context"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"
)

// TestInputUse checks which input fields a set converts: exactly the ones
// its modules can read, and everything when a module may read input whole.
func TestInputUse(t *testing.T) {
	tests := []struct {
		name string
		rego string
		want fieldMask
	}{
		{"no input", `allow := true`, 0},
		{"one field", `allow if input.request.method == "GET"`, fRequestMethod},
		{"below a field", `allow if input.request.headers["x-team"][0] == "a"`, fRequestHeaders},
		{"iteration below a field", `allow if { some g in input.user.groups; g == "a" }`, fUserGroups},
		{"index is itself input", `allow if input.request.headers[input.user.sub]`, fRequestHeaders | fUserSub},
		{"section", `allow if { u := input.user; u.groups[_] == "a" }`, userFields},
		{"section by variable field", `allow if { some k; input.route[k] == "a" }`, routeFields},
		{"function argument", "f(x) := x.name\nallow if f(input.route) == \"a\"", routeFields},
		{"import", "import input.user.claims\nallow if claims.amr == \"mfa\"", fUserClaims},
		{"with", "ok if input.user.authenticated\nallow if ok with input.user.groups as []", fUserAuthenticated | fUserGroups},
		{"unknown section", `allow if input.nothing.here`, 0},
		{"unknown field", `allow if input.request.body`, 0},
		{"whole document", `allow if count(input) > 0`, allFields},
		{"whole document in a builtin", `allow if object.get(input, ["request", "path"], "") == "/"`, allFields},
		{"variable section", `allow if { some s; input[s].name == "a" }`, allFields},
		{"walk", `allow if { walk(input, [_, v]); v == "x" }`, allFields},
		{"else branch", "allow := false if input.request.scheme == \"http\"\nelse := true if input.route.upstream", fRequestScheme | fRouteUpstream},
		{"helper rule", "admin if \"admins\" in input.user.groups\nallow if admin", fUserGroups},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, map[string]string{"t.rego": "package t\n\n" + tc.rego + "\n"})
			s := mustLoad(t, dir, LoadOptions{})
			if s.use != tc.want {
				t.Errorf("use %022b, want %022b", s.use, tc.want)
			}
		})
	}

	t.Run("another package counts too", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{
			"a.rego": "package a\n\nallow if input.request.path == \"/\"\n",
			"b.rego": "package b\n\nallow if input.request.headers.x\n",
		})
		if s := mustLoad(t, dir, LoadOptions{}); s.use != fRequestPath|fRequestHeaders {
			t.Errorf("use %022b, want path and headers", s.use)
		}
	})
}

// TestPrunedInputDecides checks that a policy sees the fields it reads with
// their values, and that one reading the whole input sees the whole document
// (SPEC §5), as the JSON form gives it.
func TestPrunedInputDecides(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"partial.rego": `package partial

allow if {
	input.request.headers["user-agent"] == ["test/1.0"]
	input.user.claims.amr == ["pwd", "otp"]
	input.request.time == "2026-11-26T09:00:00Z"
}
`,
		"whole.rego": `package whole

allow if count(input.request) == 9

reason := json.marshal(input)
`,
	})
	s := mustLoad(t, dir, LoadOptions{})
	in := input(userSpec{sub: "bob", amr: []any{"pwd", "otp"}}, "GET", "/")
	if d := s.Eval(context.Background(), "partial", in); !d.Allow {
		t.Errorf("partial: %+v", d)
	}
	if s.use != allFields {
		t.Fatalf("use %022b with a module reading input whole", s.use)
	}
	d := s.Eval(context.Background(), "whole", in)
	full, err := s.keys.value(in)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := util.UnmarshalJSON([]byte(d.Reason), &doc); err != nil {
		t.Fatalf("whole: reason %q: %v", d.Reason, err)
	}
	seen, err := ast.InterfaceToValue(doc)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Allow || seen.Compare(full) != 0 {
		t.Errorf("whole: allow %v, policy saw\n%s\nwant\n%s", d.Allow, seen, full)
	}
}
