package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/portcullis/portcullis/policy"
)

// runPolicyTest implements `portcullis policy test [DIR...]`: the Rego unit
// tests (test_* rules) of every directory, with `opa test` semantics and
// output. Exit 0 when all pass, 1 when one fails or the files do not
// compile, 2 for bad usage.
func runPolicyTest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("policy test", "policy test [flags] [DIR...]   (default DIR: ./policies)", stderr)
	verbose := fs.Bool("v", false, "verbose: list every test, and print the full trace of each failure")
	coverage := fs.Bool("coverage", false, "report which policy lines the tests evaluated")
	runRE := fs.String("run", "", "run only tests whose full name (data.<package>.<rule>) matches this regular expression")
	timeout := fs.Duration("timeout", 5*time.Second, "time limit for each test")
	// Flags may follow the directories, as with `opa test DIR -v`.
	var dirs []string
	for {
		if code := parseFlagsAndArgs(fs, args); code >= 0 {
			return code
		}
		if fs.NArg() == 0 {
			break
		}
		dirs = append(dirs, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(dirs) == 0 {
		dirs = []string{"./policies"}
	}
	if *timeout <= 0 {
		fmt.Fprintln(stderr, "portcullis policy test: --timeout must be positive")
		return exitUsage
	}
	opts := policy.TestOptions{Verbose: *verbose, Coverage: *coverage, Run: *runRE, Timeout: *timeout}
	passed, failed, err := policy.RunTests(ctx, dirs, opts, stdout)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "portcullis: %d of %d policy tests failed\n", failed, passed+failed)
		return exitFail
	}
	return exitOK
}
