package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/portcullis/portcullis/identity"
	"github.com/portcullis/portcullis/internal/config"
	"github.com/portcullis/portcullis/internal/confkit"
	"github.com/portcullis/portcullis/policy"
)

func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check", "check --config FILE", stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if *path == "" {
		fmt.Fprintln(stderr, "portcullis check: --config FILE is required")
		return exitUsage
	}
	f, problems, err := checkConfig(ctx, *path)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if f != nil {
		// Valid, so that the example passes check as it ships, but serve
		// will not run with it.
		for _, sp := range f.Identity.PublishedSecrets() {
			fmt.Fprintf(stderr, "warning: %s (`portcullis serve` refuses it)\n", identity.PublishedSecretProblem(sp))
		}
		for _, w := range f.Identity.Warnings() {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
	}
	if problems.Len() > 0 {
		fmt.Fprintf(stderr, "%s: %d problem(s):\n", *path, problems.Len())
		for _, pr := range problems.List() {
			fmt.Fprintf(stderr, "  %s\n", pr)
		}
		return exitFail
	}
	fmt.Fprintf(stdout, "%s: ok (%d routes, policies compiled)\n", *path, len(f.Routes))
	return exitOK
}

// checkConfig validates the file and compiles the policies it names,
// collecting every problem, each once. err is for an unreadable or
// non-YAML file.
func checkConfig(ctx context.Context, path string) (*config.File, *confkit.Problems, error) {
	f, p, err := collectProblems(ctx, path)
	if err != nil {
		return nil, nil, err
	}
	return f, uniqueProblems(p), nil
}

// uniqueProblems drops repeats: a route's malformed package name is found
// both by the config check and by the compiled policy set.
func uniqueProblems(p *confkit.Problems) *confkit.Problems {
	var out confkit.Problems
	seen := map[confkit.Problem]bool{}
	for _, pr := range p.List() {
		if !seen[pr] {
			seen[pr] = true
			out.Add(pr.Path, "%s", pr.Message)
		}
	}
	return &out
}

// policyProblems are the problems of a policy directory that does not
// compile, each once. OPA reports a token the scanner cannot read (an
// unterminated string) with the scanner's message and then, at the same
// place, the parser's generic "illegal token" (sometimes twice): that is
// one problem, and the scanner's message says what it is.
func policyProblems(ce *policy.CompileError) []policy.Problem {
	type place struct {
		file      string
		line, col int
	}
	parsed := map[place]bool{}
	var out []policy.Problem
	for _, pr := range ce.Problems {
		at := place{pr.File, pr.Line, pr.Col}
		if pr.Code == "rego_parse_error" && pr.Line > 0 {
			if pr.Message == "illegal token" && parsed[at] {
				continue
			}
			parsed[at] = true
		}
		out = append(out, pr)
	}
	return out
}

func collectProblems(ctx context.Context, path string) (*config.File, *confkit.Problems, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var p confkit.Problems
	f, err := config.Decode(data, nil, &p)
	if err != nil {
		return nil, nil, err
	}
	set, err := policy.Load(ctx, f.Policy.Dir, policy.LoadOptions{DecisionTimeout: f.Policy.DecisionTimeout})
	if err != nil {
		var ce *policy.CompileError
		if errors.As(err, &ce) {
			for _, pr := range policyProblems(ce) {
				p.Add("policy.dir", "%s", pr)
			}
		} else {
			p.Add("policy.dir", "%v", err)
		}
		return f, &p, nil
	}
	for i, r := range f.Routes {
		if r.Policy != "" {
			set.ValidatePackage(&p, confkit.Join(confkit.Index("routes", i), "policy"), r.Policy)
		}
	}
	return f, &p, nil
}
