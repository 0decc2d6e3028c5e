package policy

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestDecisionFailuresDeny checks that every way a policy can fail to give
// an answer denies, with outcome "error" and a reason that says what to fix.
func TestDecisionFailuresDeny(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"conflict.rego": `package t.conflict
allow := true if input.user.authenticated
allow := false if input.request.method == "GET"
`,
		"slow.rego": `package t.slow
default allow := false
allow if count([x | some x in numbers.range(1, 10000000); x > 0]) > 0
`,
		"stringallow.rego": `package t.stringallow
allow := "true"
reason := "looks allowed"
`,
		"numberallow.rego": `package t.numberallow
allow := 1
`,
		"claims.rego": `package t.claims
default allow := false
allow if input.user.claims.weird
`,
		"badstatus.rego": `package t.badstatus
default allow := false
status := 200
reason := "nope"
`,
		"stringstatus.rego": `package t.stringstatus
default allow := false
status := "418"
`,
		"teapot.rego": `package t.teapot
default allow := false
status := 418
`,
		"undefined.rego": `package t.undefined
allow if input.user.sub == "nobody"
`,
		"noreason.rego": `package t.noreason
allow := true
`,
		"badreason.rego": `package t.badreason
allow := false
reason := {"not": "a string"}
`,
		"headers.rego": `package t.headers
allow := true
headers := {
	"x-team": "eng",
	"X-Portcullis-User": "root",
	"Host": "evil.test",
	"Connection": "close",
	"X-Forwarded-For": "1.2.3.4",
	"X-Real-IP": "1.2.3.4",
	"X_Portcullis_User": "root",
	"X-Forwarded_For": "1.2.3.4",
	"X-Del": "a\u007fb",
	"X-Bell": "a\u0007b",
	"X-Tab": "a\tb",
	"X-Number": 7,
	"bad name": "x",
	"X-Split": "a\r\nInjected: yes",
}
`,
		"denyheaders.rego": `package t.denyheaders
allow := false
headers := {"X-Team": "eng"}
`,
	})
	ctx := context.Background()
	newEngine := func(timeout time.Duration) *Engine {
		e, err := NewEngine(Config{Dir: dir, DecisionTimeout: timeout}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Reload(ctx); err != nil {
			t.Fatalf("Reload: %v", err)
		}
		return e
	}
	// Only the timeout case runs with a tiny timeout: on a loaded machine
	// with the race detector any decision may take tens of milliseconds.
	e, hurried := newEngine(testTimeout), newEngine(30*time.Millisecond)

	weird := input(alice, "GET", "/")
	weird.User.Claims = map[string]any{"weird": make(chan int)} // cannot become Rego

	tests := []struct {
		name       string
		pkg        string
		in         *Input
		outcome    string
		status     int
		err        error
		reasonHas  []string
		allow      bool
		wantHeader map[string]string
	}{
		{"evaluation error", "t.conflict", input(alice, "GET", "/"), OutcomeError, 403, ErrEvaluation, []string{"policy evaluation failed", "conflict"}, false, nil},
		{"timeout", "t.slow", input(alice, "GET", "/"), OutcomeError, 403, ErrTimeout, []string{"decision_timeout (30ms)", "t.slow"}, false, nil},
		{"missing package", "t.nothere", input(alice, "GET", "/"), OutcomeError, 403, ErrPackageNotFound, []string{"t.nothere not found"}, false, nil},
		{"string allow", "t.stringallow", input(alice, "GET", "/"), OutcomeError, 403, ErrBadAllow, []string{`"true"`, "not a boolean"}, false, nil},
		{"number allow", "t.numberallow", input(alice, "GET", "/"), OutcomeError, 403, ErrBadAllow, []string{"is 1, not a boolean"}, false, nil},
		{"claims that are not JSON", "t.claims", weird, OutcomeError, 403, ErrEvaluation, []string{"user.claims"}, false, nil},
		{"panic recovered", "t.claims", nil, OutcomeError, 403, ErrEvaluation, []string{"panic"}, false, nil},
		{"status 200 ignored", "t.badstatus", input(alice, "GET", "/"), OutcomeDeny, 403, nil, []string{"nope", "status 200 ignored"}, false, nil},
		{"string status ignored", "t.stringstatus", input(alice, "GET", "/"), OutcomeDeny, 403, nil, []string{`status "418" ignored`}, false, nil},
		{"custom status", "t.teapot", input(alice, "GET", "/"), OutcomeDeny, 418, nil, []string{"denied by t.teapot"}, false, nil},
		{"undefined allow", "t.undefined", input(alice, "GET", "/"), OutcomeDeny, 403, nil, []string{"allow is undefined"}, false, nil},
		{"allow without reason", "t.noreason", input(alice, "GET", "/"), OutcomeAllow, 0, nil, []string{"allowed by t.noreason"}, true, nil},
		{"reason not a string", "t.badreason", input(alice, "GET", "/"), OutcomeDeny, 403, nil, []string{"denied by t.badreason", "reason", "ignored: not a string"}, false, nil},
		{"refused headers", "t.headers", input(alice, "GET", "/"), OutcomeAllow, 0, nil,
			[]string{"X-Portcullis-User ignored", "Host ignored", "Connection ignored", "X-Forwarded-For ignored", "X-Real-Ip ignored", "X_portcullis_user ignored", "X-Forwarded_for ignored", "X-Del ignored", "X-Bell ignored", "X-Number ignored", `"bad name" ignored`, "X-Split ignored"},
			true, map[string]string{"X-Team": "eng", "X-Tab": "a\tb"}},
		{"no headers on deny", "t.denyheaders", input(alice, "GET", "/"), OutcomeDeny, 403, nil, nil, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng := e
			if errors.Is(tt.err, ErrTimeout) {
				eng = hurried
			}
			start := time.Now()
			d := eng.Eval(ctx, tt.pkg, tt.in)
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("decision took %s: the timeout did not stop evaluation", took)
			}
			if d.Allow != tt.allow || d.Outcome != tt.outcome || d.Status != tt.status {
				t.Errorf("got allow=%v outcome=%q status=%d, want allow=%v outcome=%q status=%d (reason %q)",
					d.Allow, d.Outcome, d.Status, tt.allow, tt.outcome, tt.status, d.Reason)
			}
			if (tt.err == nil) != (d.Err == nil) || tt.err != nil && !errors.Is(d.Err, tt.err) {
				t.Errorf("got err %v, want errors.Is %v", d.Err, tt.err)
			}
			for _, s := range tt.reasonHas {
				if !strings.Contains(d.Reason, s) {
					t.Errorf("reason %q does not mention %q", d.Reason, s)
				}
			}
			if d.Reason == "" {
				t.Error("empty reason")
			}
			if len(d.Headers) != len(tt.wantHeader) {
				t.Errorf("got headers %v, want %v", d.Headers, tt.wantHeader)
			}
			for k, v := range tt.wantHeader {
				if d.Headers[k] != v {
					t.Errorf("header %s: got %q, want %q", k, d.Headers[k], v)
				}
			}
		})
	}
}

func TestEvalCanceledByCaller(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"slow.rego": `package t.slow
default allow := false
allow if count([x | some x in numbers.range(1, 10000000); x > 0]) > 0
`})
	s := mustLoad(t, dir, LoadOptions{DecisionTimeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	d := s.Eval(ctx, "t.slow", input(alice, "GET", "/"))
	if d.Allow || d.Outcome != OutcomeError || !errors.Is(d.Err, ErrCanceled) {
		t.Errorf("got allow=%v outcome=%q err=%v, want a canceled error decision", d.Allow, d.Outcome, d.Err)
	}
}

func TestEngineBeforeLoadDenies(t *testing.T) {
	e, err := NewEngine(Config{Dir: t.TempDir()}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := e.Eval(context.Background(), "data.portcullis.routes.demo", input(bob, "GET", "/"))
	if d.Allow || d.Outcome != OutcomeError || !errors.Is(d.Err, ErrNotLoaded) || d.Package != "portcullis.routes.demo" {
		t.Errorf("got %+v, want an error decision with ErrNotLoaded for portcullis.routes.demo", d)
	}
}

// TestDecisionControls: a decision names the headers its package can set
// literally, whether or not it sets them, so the proxy can remove client
// copies; also when remembered.
func TestDecisionControls(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"ref.rego": `package c.ref
default allow := true
headers["x-role"] := "admin" if input.user.sub == "alice"
headers["X-Tenant"] := "acme"
headers[k] := "v" if { some k in ["X-Dyn"]; input.user.sub == "nobody" }
headers["X-Portcullis-User"] := "root" if input.user.sub == "nobody"
headers["X_Request_Id"] := "mine" if input.user.sub == "nobody"
headers["Cookie"] := "a=b" if input.user.sub == "nobody"
`,
		"obj.rego": `package c.obj
default allow := true
headers := {"X-One": "1", "x-two": input.user.sub}
`,
		"none.rego": `package c.none
default allow := true
`,
	})
	s := mustLoad(t, dir, LoadOptions{DecisionCache: 10})
	bob := userSpec{sub: "bob"}
	for pkg, want := range map[string][]string{
		"c.ref":  {"X-Role", "X-Tenant"},
		"c.obj":  {"X-One", "X-Two"},
		"c.none": nil,
	} {
		for range 2 { // evaluated, then remembered
			d := s.Eval(context.Background(), pkg, input(bob, "GET", "/"))
			if !slices.Equal(d.Controls, want) {
				t.Errorf("%s (cached %v): Controls = %q, want %q", pkg, d.Cached, d.Controls, want)
			}
		}
	}
}
