package policy

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// TestOptions tune RunTests.
type TestOptions struct {
	// Verbose prints every test, not only failures, and the full
	// evaluation trace of each failure.
	Verbose bool
	// Coverage prints, after the results, the share of policy lines the
	// tests evaluated, per file, with the lines they missed.
	Coverage bool
	// Run selects the tests to run: a regular expression matched against
	// the test's full name (data.<package>.<rule>). Empty runs all.
	Run string
	// Timeout bounds each test; zero means 5s, as `opa test`.
	Timeout time.Duration
}

// RunTests runs the Rego unit tests (rules named test_*; todo_* are
// skipped) of every .rego file under dirs, with the semantics and output of
// `opa test`: every module and every JSON or YAML document under dirs is
// loaded, failures are listed with the failing expression's file:line (and
// with Verbose the whole trace), and a summary closes the report.
//
// It returns how many tests passed and how many failed (a test that errors
// counts as failed). err is set when the files do not load or compile, or a
// Run expression is invalid; then no test ran.
func RunTests(ctx context.Context, dirs []string, opts TestOptions, out io.Writer) (passed, failed int, err error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Run != "" {
		if _, err := regexp.Compile(opts.Run); err != nil {
			return 0, 0, fmt.Errorf("policy: --run %q: %w", opts.Run, err)
		}
	}
	popts := ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true}
	modules, store, err := tester.LoadWithParserOptions(dirs, nil, popts)
	if err != nil {
		return 0, 0, fmt.Errorf("policy: load tests: %w", err)
	}
	txn, err := store.NewTransaction(ctx, storage.WriteParams)
	if err != nil {
		return 0, 0, fmt.Errorf("policy: load tests: %w", err)
	}
	defer store.Abort(ctx, txn)

	compiler := ast.NewCompiler().
		WithDefaultRegoVersion(ast.RegoV1).
		WithPathConflictsCheck(storage.NonEmpty(ctx, store, txn)).
		WithEnablePrintStatements(true).
		WithUseTypeCheckAnnotations(true)

	var cov *cover.Cover
	runner := tester.NewRunner().
		SetCompiler(compiler).
		SetStore(store).
		SetModules(modules).
		CapturePrintOutput(true).
		EnableTracing(true). // for the failing line, always; the full trace with Verbose
		StackTraces(true).
		SetTimeout(opts.Timeout).
		Filter(opts.Run)
	if opts.Coverage {
		cov = cover.New()
		runner = runner.SetCoverageQueryTracer(cov)
	}
	ch, err := runner.RunTests(ctx, txn)
	if err != nil {
		return 0, 0, fmt.Errorf("policy: compile tests: %w", err)
	}

	counted := make(chan *tester.Result)
	go func() {
		defer close(counted)
		for r := range ch {
			switch {
			case r.Skip:
			case r.Pass():
				passed++
			default:
				failed++
			}
			if !opts.Verbose {
				r.Trace = failTrace(r.Trace)
			}
			counted <- r
		}
	}()
	reporter := tester.PrettyReporter{Output: out, Verbose: opts.Verbose, FailureLine: true}
	if err := reporter.Report(counted); err != nil {
		for range counted { // let the counting goroutine finish
		}
		return passed, failed, fmt.Errorf("policy: report tests: %w", err)
	}
	if passed+failed == 0 {
		fmt.Fprintln(out, "no tests found (test rules are named test_*)")
	}
	if cov != nil {
		printCoverage(out, cov.Report(modules))
	}
	return passed, failed, nil
}

// failTrace keeps only the events the failure line needs, so that a long
// test does not hold its whole trace.
func failTrace(trace []*topdown.Event) []*topdown.Event {
	var out []*topdown.Event
	for _, e := range trace {
		if e.Op == topdown.FailOp || e.Op == topdown.NoteOp {
			out = append(out, e)
		}
	}
	return out
}

func printCoverage(out io.Writer, r cover.Report) {
	fmt.Fprintf(out, "coverage: %.1f%% of %d lines\n", r.Coverage, r.CoveredLines+r.NotCoveredLines)
	files := make([]string, 0, len(r.Files))
	for f := range r.Files {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, f := range files {
		fr := r.Files[f]
		line := fmt.Sprintf("  %6.1f%%  %s", fr.Coverage, f)
		if len(fr.NotCovered) > 0 {
			var missed []string
			for _, rg := range fr.NotCovered {
				m := fmt.Sprint(rg.Start.Row)
				if rg.Start.Row != rg.End.Row {
					m = fmt.Sprintf("%d-%d", rg.Start.Row, rg.End.Row)
				}
				if len(missed) == 0 || missed[len(missed)-1] != m {
					// OPA reports a line once per uncovered expression.
					missed = append(missed, m)
				}
			}
			line += "  not covered: " + strings.Join(missed, ",")
		}
		fmt.Fprintln(out, line)
	}
}
