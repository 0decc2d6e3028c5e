package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

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
// collecting every problem. err is for an unreadable or non-YAML file.
func checkConfig(ctx context.Context, path string) (*config.File, *confkit.Problems, error) {
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
			for _, pr := range ce.Problems {
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
