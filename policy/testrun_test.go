package policy

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestRunTestsShippedPolicies(t *testing.T) {
	var out bytes.Buffer
	passed, failed, err := RunTests(context.Background(), []string{shippedDir}, TestOptions{}, &out)
	if err != nil || failed != 0 || passed < 50 {
		t.Fatalf("got passed=%d failed=%d err=%v, want every shipped test to pass:\n%s", passed, failed, err, out.String())
	}
	if !strings.Contains(out.String(), "PASS: ") {
		t.Errorf("no PASS summary in:\n%s", out.String())
	}
}

func TestRunTests(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"p.rego": "package t.p\n\ndefault allow := false\n\nallow if input.user == \"alice\"\n",
		"p_test.rego": `package t.p_test

import data.t.p

test_alice if {
	p.allow with input.user as "alice"
}

test_bob_wrongly_expected if {
	p.allow with input.user as "bob"
}

todo_test_later if {
	false
}
`,
	})
	ctx := context.Background()
	tests := []struct {
		name             string
		opts             TestOptions
		passed, failed   int
		outHas, outLacks []string
	}{
		{"all", TestOptions{}, 1, 1, []string{"test_bob_wrongly_expected", "FAIL", "p_test.rego:10", "p.allow with input.user as \"bob\"", "SKIPPED"}, []string{"data.t.p_test.test_alice: PASS"}},
		{"verbose", TestOptions{Verbose: true}, 1, 1, []string{"data.t.p_test.test_alice: PASS", "FAILURES", "Enter data.t.p_test.test_bob_wrongly_expected"}, nil},
		{"run filter", TestOptions{Run: "alice"}, 1, 0, []string{"PASS: 1/1"}, []string{"bob"}},
		{"coverage", TestOptions{Coverage: true, Run: "alice"}, 1, 0, []string{"coverage: ", "p.rego"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			passed, failed, err := RunTests(ctx, []string{dir}, tt.opts, &out)
			if err != nil || passed != tt.passed || failed != tt.failed {
				t.Fatalf("got passed=%d failed=%d err=%v, want %d %d nil\n%s", passed, failed, err, tt.passed, tt.failed, out.String())
			}
			for _, s := range tt.outHas {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out.String())
				}
			}
			for _, s := range tt.outLacks {
				if strings.Contains(out.String(), s) {
					t.Errorf("output has %q:\n%s", s, out.String())
				}
			}
		})
	}

	t.Run("bad regex", func(t *testing.T) {
		if _, _, err := RunTests(ctx, []string{dir}, TestOptions{Run: "("}, &bytes.Buffer{}); err == nil {
			t.Error("an invalid --run expression was accepted")
		}
	})
	t.Run("compile error", func(t *testing.T) {
		bad := t.TempDir()
		writeFiles(t, bad, map[string]string{"x_test.rego": "package x\n\ntest_y if {\n\tz == 1\n}\n"})
		_, _, err := RunTests(ctx, []string{bad}, TestOptions{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "x_test.rego:4") {
			t.Errorf("got %v, want a compile error at x_test.rego:4", err)
		}
	})
}
