package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPolicyTestCommand(t *testing.T) {
	failing := t.TempDir()
	for name, content := range map[string]string{
		"p.rego":      "package t.p\n\ndefault allow := false\n",
		"p_test.rego": "package t.p_test\n\nimport data.t.p\n\ntest_allows if {\n\tp.allow\n}\n\ntest_default if {\n\tnot p.allow\n}\n",
	} {
		if err := os.WriteFile(filepath.Join(failing, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name      string
		args      []string
		code      int
		stdoutHas string
		stderrHas string
	}{
		{"shipped policies pass", []string{"../../policies"}, exitOK, "PASS: ", ""},
		{"failure exits 1", []string{failing}, exitFail, "test_allows: FAIL", "1 of 2 policy tests failed"},
		{"flags after the directory", []string{failing, "--run", "test_default", "-v"}, exitOK, "test_default: PASS", ""},
		{"coverage", []string{"--coverage", failing, "--run", "default"}, exitOK, "coverage: ", ""},
		{"missing directory", []string{filepath.Join(failing, "nope")}, exitFail, "", "portcullis: "},
		{"default directory", nil, exitFail, "", "policies"},
		{"help", []string{"--help"}, exitOK, "", "Usage: portcullis policy test"},
		{"unknown flag", []string{"--nope"}, exitUsage, "", "flag provided but not defined"},
		{"bad regex", []string{"--run", "(", failing}, exitFail, "", "--run"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runPolicyTest(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.stdoutHas) {
				t.Errorf("stdout lacks %q:\n%s", tt.stdoutHas, stdout.String())
			}
			if !strings.Contains(stderr.String(), tt.stderrHas) {
				t.Errorf("stderr lacks %q:\n%s", tt.stderrHas, stderr.String())
			}
			if code == exitFail && tt.stderrHas != "" && strings.Count(strings.TrimSpace(stderr.String()), "\n") > 0 {
				t.Errorf("stderr has more than one line:\n%s", stderr.String())
			}
		})
	}
}
