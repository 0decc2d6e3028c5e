package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// TestPolicyEvalCommand dry-runs requests through the example config's
// routing and the shipped policies, as the README's policy guide shows.
func TestPolicyEvalCommand(t *testing.T) {
	t.Chdir("../..")
	checkUnsetEnv(t, "PORTCULLIS_CLIENT_SECRET")
	checkUnsetEnv(t, "PORTCULLIS_SESSION_SECRET")
	eval := func(args ...string) (int, string, string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"policy", "eval", "--config", "deploy/portcullis.example.yaml"}, args...), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}

	code, out, errOut := eval("--url", "https://app.example.com/reports", "--user", "alice", "--groups", "engineering")
	if code != exitOK {
		t.Fatalf("exit %d: %s%s", code, out, errOut)
	}
	for _, want := range []string{
		"route:    demo (host app.example.com",
		"policy:   portcullis.routes.demo @ sha256:",
		`"path": "/reports"`,
		`"sub": "alice"`,
		"decision: allow",
		"reason:   member of engineering or admins",
		"headers:  map[X-Demo-Role:member]",
		"cache:    remembered per request.path, user.authenticated, user.groups",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	code, out, _ = eval("--url", "https://app.example.com/admin/users", "--user", "alice", "--groups", "engineering", "--output", "json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, out)
	}
	var got struct {
		Route, Decision, Reason, Policy, Cache string
		Status                                 int
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("--output json: %v\n%s", err, out)
	}
	if got.Route != "demo" || got.Decision != "deny" || got.Status != 403 || got.Policy != "portcullis.routes.demo" ||
		!strings.Contains(got.Reason, "admins") || !strings.HasPrefix(got.Cache, "remembered per") {
		t.Fatalf("json = %+v", got)
	}

	// The user comes through the config's provider, with its issuer, by
	// session unless told otherwise.
	code, out, _ = eval("--url", "https://app.example.com/x", "--user", "svc", "--auth-method", "bearer")
	if code != exitOK || !strings.Contains(out, `"issuer": "https://idp.example.com"`) || !strings.Contains(out, `"provider": "corp"`) ||
		!strings.Contains(out, `"auth_method": "bearer"`) {
		t.Errorf("bearer user: exit %d\n%s", code, out)
	}
	if code, _, _ := eval("--url", "https://app.example.com/x", "--user", "svc", "--auth-method", "token"); code != exitUsage {
		t.Errorf("--auth-method token: exit %d, want %d", code, exitUsage)
	}

	// The input is what a live request builds: the method as given, groups
	// trimmed, no Host header (the host is the URL's).
	code, out, errOut = eval("--url", "https://app.example.com/reports", "--user", "alice", "--groups", "a, engineering,,c", "--method", "post")
	if code != exitOK || !strings.Contains(out, `"method": "post"`) || !strings.Contains(out, `"engineering"`) || strings.Contains(out, `" engineering"`) || strings.Contains(out, `""`+"\n") {
		t.Errorf("method and groups as a live request has them: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := eval("--url", "https://app.example.com/", "--header", "Host=evil.example.com"); code != exitUsage || !strings.Contains(errOut, "give the host in --url") {
		t.Errorf("--header Host: exit %d %q, want a usage error", code, errOut)
	}

	// No route for the host: said so, no policy.
	code, out, _ = eval("--url", "https://nowhere.example.com/")
	if code != exitOK || !strings.Contains(out, "route:    (none)") {
		t.Fatalf("unrouted host: exit %d\n%s", code, out)
	}

	// Missing flags: a usage error naming them.
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"policy", "eval"}, &stdout, &stderr); code == exitOK ||
		!strings.Contains(stderr.String(), "--config FILE and --url URL are required") {
		t.Fatalf("no flags: exit %d, stderr %q", code, stderr.String())
	}
}
