package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// checkUnsetEnv clears an environment variable for the rest of the test
// (t.Setenv restores it afterwards) so a developer's own value cannot make
// the example pass.
func checkUnsetEnv(t *testing.T, name string) {
	t.Setenv(name, "")
	os.Unsetenv(name)
}

// The example's relative paths (./policies, ./portcullis-data) are relative
// to the working directory, as they are for a user who runs the documented
// command from the repository root.
func TestCheckPassesOnExampleConfig(t *testing.T) {
	t.Chdir("../..")
	checkUnsetEnv(t, "PORTCULLIS_CLIENT_SECRET")
	checkUnsetEnv(t, "PORTCULLIS_SESSION_SECRET")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"check", "--config", "deploy/portcullis.example.yaml"}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("check exit = %d, want 0\nstdout: %s\nstderr: %s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "ok") {
		t.Errorf("stdout = %q, want an ok line", stdout.String())
	}
	// Its fallback session secret is printed in the repository: check says
	// serve will refuse it.
	if !strings.Contains(stderr.String(), "warning: identity.session.secrets[0]: is the example configuration's published secret") {
		t.Errorf("stderr = %q, want a warning about the published session secret", stderr.String())
	}
	// check has no side effects: the data directory is not created.
	if _, err := os.Stat("portcullis-data"); err == nil {
		t.Errorf("check created ./portcullis-data")
	}
}

func TestCheckListsEveryProblemWithItsPath(t *testing.T) {
	policies, err := filepath.Abs(repoPolicies)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "portcullis.yaml")
	// Three different mistakes: an unknown key, an invalid value, and a
	// route naming a policy package the policy directory does not have.
	cfg := checkConfigHead(dir, policies) + `
routes:
  - name: docs
    host: docs.example.com
    upstream: ftp://127.0.0.1:9000
    policy: portcullis.routes.docs
    public: true
  - name: wiki
    host: wiki.example.com
    upstream: http://127.0.0.1:9001
    policy: portcullis.routes.missing
    public: true
audit:
  sink: file
  moed: durable
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"check", "--config", path}, &stdout, &stderr)
	if code != exitFail {
		t.Fatalf("check exit = %d, want 1\nstdout: %s\nstderr: %s", code, stdout.String(), stderr.String())
	}
	out := stderr.String()
	if !strings.Contains(out, "3 problem(s)") {
		t.Errorf("stderr does not count 3 problems:\n%s", out)
	}
	for _, want := range []string{
		"audit.moed: unknown key",
		"routes[0].upstream: ",
		"routes[1].policy: ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stderr lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
		t.Errorf("check created the data directory")
	}
}

// Each problem is listed once: OPA reports an unterminated raw string as
// "non-terminated string" plus "illegal token" (twice) at one position,
// and a malformed route package name is found both by the config check and
// by the compiled policy set.
func TestCheckListsEachProblemOnce(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policies")
	if err := os.Mkdir(pol, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(path, s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := checkConfigHead(dir, pol) + `
routes:
  - name: docs
    host: docs.example.com
    upstream: http://127.0.0.1:9000
    policy: %s
    public: true
`
	path := filepath.Join(dir, "portcullis.yaml")
	for _, tt := range []struct {
		name, rego, pkg string
		want            string
	}{
		{"rego parse error", "package portcullis.routes.docs\nx := `\n", "portcullis.routes.docs", "non-terminated string"},
		{"route package name", "package portcullis.routes.docs\nallow if true\n", `"portcullis.routes.docs!"`, "is not a Rego package name"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			write(filepath.Join(pol, "docs.rego"), tt.rego)
			write(path, strings.Replace(cfg, "%s", tt.pkg, 1))
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), []string{"check", "--config", path}, &stdout, &stderr)
			if code != exitFail {
				t.Fatalf("check exit = %d, want 1\nstdout: %s\nstderr: %s", code, stdout.String(), stderr.String())
			}
			out := stderr.String()
			if n := strings.Count(out, tt.want); n != 1 {
				t.Errorf("%q appears %d times, want once:\n%s", tt.want, n, out)
			}
			if strings.Contains(out, "illegal token") {
				t.Errorf("the scanner's error is followed by the parser's generic one at the same place:\n%s", out)
			}
			if !strings.Contains(out, "1 problem(s)") {
				t.Errorf("stderr does not count 1 problem:\n%s", out)
			}
		})
	}
}

// checkConfigHead is the start of a config for the check tests: everything
// but routes (and audit), with data under dir and policies in policyDir.
func checkConfigHead(dir, policyDir string) string {
	return `
data_dir: ` + filepath.Join(dir, "data") + `
listen:
  admin: "127.0.0.1:9901"
tls:
  mode: self-signed
identity:
  external_url: https://auth.example.com
  session:
    secrets: ["c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0NQ=="]
policy:
  dir: ` + policyDir
}
