package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/portcullis/portcullis/internal/config"
	"github.com/portcullis/portcullis/internal/confkit"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("serve", "serve --config FILE", stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if *path == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "portcullis serve: --config FILE is required")
		return exitUsage
	}
	cfg, err := config.Load(*path, nil)
	if err != nil {
		return reportConfigError(stderr, *path, err)
	}
	// A SIGHUP before the reload watcher runs must not kill the process.
	signal.Ignore(syscall.SIGHUP)
	log := newLogger(cfg.Log, stderr)
	opts := appOptions{Logger: log}
	a, err := newApp(ctx, cfg, *path, opts)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if err := a.Run(ctx, opts); err != nil {
		return fail(stderr, "%v", err)
	}
	return exitOK
}

// reportConfigError prints every problem of a config, one per line.
func reportConfigError(stderr io.Writer, path string, err error) int {
	var ce *confkit.Error
	if errors.As(err, &ce) {
		fmt.Fprintf(stderr, "%s: %d problem(s):\n", path, len(ce.Problems))
		for _, pr := range ce.Problems {
			fmt.Fprintf(stderr, "  %s\n", pr)
		}
		return exitFail
	}
	if errors.Is(err, os.ErrNotExist) {
		return fail(stderr, "%s: no such file", path)
	}
	return fail(stderr, "%v", err)
}
