package main

import (
	"bytes"
	"context"
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
