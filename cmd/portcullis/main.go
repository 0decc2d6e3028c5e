// Command portcullis is the identity-aware reverse proxy: `serve` runs it,
// `dev` runs an all-in-one demo, `check` validates a configuration, `policy`
// tests and dry-runs Rego policies, `audit` queries the audit trail.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// Exit statuses (SPEC §1).
const (
	exitOK    = 0
	exitFail  = 1 // bad input or a failed check
	exitUsage = 2 // bad usage
)

const usageText = `Portcullis — an identity-aware reverse proxy.

Usage:
  portcullis serve --config FILE        run the proxy (SIGHUP or a file change reloads)
  portcullis dev [--listen ADDR] [--pulsar URL] [--data DIR] [--policies DIR]
                                        all-in-one local demo with sign-in, policies and audit
  portcullis check --config FILE        validate the config and compile every policy
  portcullis policy test [DIR...]       run Rego unit tests
  portcullis policy eval --config FILE --url URL [...]
                                        dry-run one request through routing and policy
  portcullis audit query|tail|verify    read, follow and verify the audit trail
  portcullis version                    print version information

Run "portcullis help COMMAND" (or "portcullis COMMAND --help") for a command's flags.
`

type command func(ctx context.Context, args []string, stdout, stderr io.Writer) int

func commands() map[string]command {
	return map[string]command{
		"serve":   runServe,
		"dev":     runDev,
		"check":   runCheck,
		"version": runVersion,
		"policy":  runPolicy,
		"audit":   runAudit,
	}
}

// subcommands are the subcommands of the commands that have them, for
// `help COMMAND SUBCOMMAND`.
func subcommands() map[string][]string {
	return map[string][]string{
		"policy": {"test", "eval"},
		"audit":  {"query", "tail", "verify"},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		return runHelp(ctx, args[1:], stdout, stderr)
	case "--version", "-version":
		return runVersion(ctx, args[1:], stdout, stderr)
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "portcullis: unknown command %q\n\n%s", args[0], usageText)
		return exitUsage
	}
	return cmd(ctx, args[1:], stdout, stderr)
}

// runHelp is `help [COMMAND [SUBCOMMAND]]`: the top-level help, or what
// `COMMAND [SUBCOMMAND] --help` prints, on stdout.
func runHelp(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || len(args) == 1 && (args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
		fmt.Fprint(stdout, usageText)
		return exitOK
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "portcullis help: unknown command %q\n\n%s", args[0], usageText)
		return exitUsage
	}
	rest := args[1:]
	if subs := subcommands()[args[0]]; len(rest) > 0 && subs != nil {
		if !slices.Contains(subs, rest[0]) {
			fmt.Fprintf(stderr, "portcullis help: unknown command %q: %s has %s\n", args[0]+" "+rest[0], args[0], strings.Join(subs, ", "))
			return exitUsage
		}
		rest = rest[1:]
	}
	if len(rest) > 0 {
		fmt.Fprintf(stderr, "portcullis help: unexpected argument %q\n", rest[0])
		return exitUsage
	}
	// With --help a command prints its usage and nothing else, to stderr
	// for flag sets: asked for with `help`, it goes to stdout.
	return cmd(ctx, append(slices.Clone(args[1:]), "--help"), stdout, stdout)
}

// newFlagSet returns a FlagSet that reports errors instead of exiting, and
// prints its usage (with a one-line synopsis) to stderr for --help.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: portcullis %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses the args of a command that takes no positional
// arguments and maps the outcome to an exit status: -1 to go on, exitOK
// after --help, exitUsage for bad flags or an argument left over (named on
// stderr: `check --config a.yaml extra` is about "extra", not --config).
func parseFlags(fs *flag.FlagSet, args []string) int {
	if code := parseFlagsAndArgs(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "portcullis %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return exitUsage
	}
	return -1
}

// parseFlagsAndArgs is parseFlags for a command that takes positional
// arguments (fs.Args()).
func parseFlagsAndArgs(fs *flag.FlagSet, args []string) int {
	err := fs.Parse(args)
	switch {
	case err == nil:
		return -1
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	default:
		return exitUsage
	}
}

// fail prints one readable line to stderr and returns exitFail.
func fail(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "portcullis: %s\n", oneLine(fmt.Sprintf(format, args...)))
	return exitFail
}

// oneLine folds a message that spans lines (errors.Join, a list of config
// problems) into the one line an error gets on stderr: "a:\n  b\n  c"
// becomes "a: b; c".
func oneLine(msg string) string {
	if !strings.Contains(msg, "\n") {
		return msg
	}
	var b strings.Builder
	for _, part := range strings.Split(msg, "\n") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if b.Len() > 0 {
			if strings.HasSuffix(b.String(), ":") {
				b.WriteByte(' ')
			} else {
				b.WriteString("; ")
			}
		}
		b.WriteString(part)
	}
	return b.String()
}
