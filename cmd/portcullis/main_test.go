package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func runT(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code = run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

// A positional argument no command takes is bad usage, named as such, not
// mistaken for a missing flag (and no command runs).
func TestVersionCheckServeDevPolicyAuditRejectExtraArgument(t *testing.T) {
	for _, args := range [][]string{
		{"version", "extra"},
		{"--version", "extra"},
		{"check", "--config", "a.yaml", "extra"},
		{"check", "extra", "--config", "a.yaml"},
		{"serve", "--config", "a.yaml", "extra"},
		{"dev", "--listen", "127.0.0.1:0", "extra"},
		{"policy", "eval", "--config", "a.yaml", "--url", "https://app.example.com/", "extra"},
		{"audit", "query", "--file", "audit.jsonl", "extra"},
		{"audit", "tail", "--file", "audit.jsonl", "extra"},
		{"audit", "verify", "--file", "audit.jsonl", "extra"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, stdout, stderr := runT(t, args...)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d (stdout %q, stderr %q)", code, exitUsage, stdout, stderr)
			}
			if !strings.Contains(stderr, `unexpected argument "extra"`) || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
				t.Errorf("stderr %q, want one line saying that \"extra\" is unexpected", stderr)
			}
		})
	}
}

// `help COMMAND [SUBCOMMAND]` prints that command's help on stdout, exit 0,
// as `COMMAND [SUBCOMMAND] --help` does.
func TestHelpCommand(t *testing.T) {
	const top = "identity-aware reverse proxy"
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"help", "policy"}, "eval --config FILE --url URL"},
		{[]string{"help", "policy", "eval"}, "--url"},
		{[]string{"help", "policy", "test"}, "-coverage"},
		{[]string{"help", "audit"}, "portcullis audit COMMAND"},
		{[]string{"help", "audit", "verify"}, "portcullis audit verify"},
		{[]string{"help", "check"}, "portcullis check --config FILE"},
		{[]string{"help", "serve"}, "portcullis serve --config FILE"},
		{[]string{"help", "dev"}, "-listen"},
		{[]string{"help", "version"}, "portcullis version"},
		{[]string{"--help", "audit"}, "portcullis audit COMMAND"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runT(t, tt.args...)
			if code != exitOK {
				t.Fatalf("exit %d, want 0 (stdout %q, stderr %q)", code, stdout, stderr)
			}
			if !strings.Contains(stdout, tt.want) || strings.Contains(stdout, top) {
				t.Errorf("stdout %q, want the command's help (mentioning %q), not the top-level one", stdout, tt.want)
			}
			if stderr != "" {
				t.Errorf("stderr %q, want nothing", stderr)
			}
		})
	}
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}, {"help", "help"}} {
		code, stdout, _ := runT(t, args...)
		if code != exitOK || !strings.Contains(stdout, top) {
			t.Errorf("%v: exit %d, stdout %q; want 0 and the top-level help", args, code, stdout)
		}
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"help", "nosuch"}, `unknown command "nosuch"`},
		{[]string{"help", "audit", "grep"}, `unknown command "audit grep"`},
		{[]string{"help", "check", "extra"}, `unexpected argument "extra"`},
		{[]string{"help", "audit", "verify", "extra"}, `unexpected argument "extra"`},
	} {
		code, stdout, stderr := runT(t, tt.args...)
		if code != exitUsage || !strings.Contains(stderr, tt.want) || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %d and stderr naming %q", tt.args, code, stdout, stderr, exitUsage, tt.want)
		}
	}
}

// TestErrorsAreOneLine: SPEC §1, an error is one readable line on stderr,
// also when it joins several (missing test directories).
func TestErrorsAreOneLine(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"policy", "test", filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")}, &stdout, &stderr)
	if code != exitFail {
		t.Errorf("exit %d, want %d", code, exitFail)
	}
	if got := strings.TrimSuffix(stderr.String(), "\n"); strings.Contains(got, "\n") || !strings.Contains(got, "; stat ") {
		t.Errorf("stderr = %q, want one line naming both directories", stderr.String())
	}
	if got, want := oneLine("config: 2 problem(s):\n  a: bad\n  b: worse\n"), "config: 2 problem(s): a: bad; b: worse"; got != want {
		t.Errorf("oneLine = %q, want %q", got, want)
	}
}

// `help --help` is help about help: the top-level usage, exit 0.
func TestHelpHelp(t *testing.T) {
	for _, args := range [][]string{{"help", "--help"}, {"help", "-h"}, {"help", "help"}} {
		code, stdout, _ := runT(t, args...)
		if code != exitOK || !strings.Contains(stdout, "identity-aware reverse proxy") {
			t.Errorf("%v: exit %d, stdout %q; want 0 and the usage", args, code, stdout)
		}
	}
}
