// Command peers measures Portcullis side by side with a bare
// httputil.ReverseProxy and with oauth2-proxy, in one run, in front of the
// same tiny upstream, and prints each one's throughput, latency
// percentiles and CPU per request with their ratios.
//
// The harness starts, on loopback:
//
//   - the upstream (a child process of this binary) answering a small fixed
//     JSON body;
//   - a mockoidc OpenID Connect provider (in this process), the one both
//     identity-aware proxies sign in against;
//   - the three proxies, each a process of its own, all over TLS with
//     HTTP/1.1 keep-alive (Portcullis serves TLS only, so the other two get
//     TLS too): `portcullis serve` with a config in a temporary directory
//     (self-signed TLS, a group policy, durable audit to a file sink, access
//     log on — the defaults users get), oauth2-proxy with a cookie session
//     and its default upstream headers, and a bare ReverseProxy (a child
//     process of this binary) with Portcullis's upstream transport settings.
//
// It signs a user in to each identity-aware proxy by following the real
// redirects (proxy → provider → callback → app) with a cookie jar, checks
// what the upstream receives, and then drives load with the session
// cookie: a fixed number of connections, each sending one GET after
// another, for a fixed time per round, rounds interleaved (bare,
// portcullis, oauth2-proxy, bare, ...) so that the noise of a shared
// machine hits all three. Every response must be the upstream's 200 and
// body; anything else fails the run. CPU per request is the proxy process's
// utime+stime (/proc/<pid>/stat) over the round divided by its requests.
// With taskset and two CPUs, the load generator runs on one CPU and the
// upstream and proxies on the other.
//
// bench/peers/run.sh builds Portcullis and this harness, installs
// oauth2-proxy if needed, and runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the harness's flags.
type options struct {
	duration, warmup time.Duration
	conns, rounds    int
	portcullis       string // path of the portcullis binary
	oauth2Proxy      string // path of the oauth2-proxy binary, "" to skip it
	skipReason       string // why oauth2-proxy is skipped, when it is
	pin              bool
	keep             bool
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case childUpstream:
			os.Exit(runUpstream())
		case childBare:
			os.Exit(runBare(os.Args[2:]))
		}
	}
	os.Exit(runMain(os.Args[1:]))
}

func runMain(args []string) int {
	fs := flag.NewFlagSet("peers", flag.ContinueOnError)
	var o options
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measured time per target and round")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured load before each measured round (connections, caches)")
	fs.IntVar(&o.conns, "conns", 16, "concurrent connections, each sending one request after another")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds; each round measures every target once")
	fs.StringVar(&o.portcullis, "portcullis", "", "path of the portcullis binary (required)")
	fs.StringVar(&o.oauth2Proxy, "oauth2-proxy", "", "path of the oauth2-proxy binary; empty skips oauth2-proxy")
	fs.StringVar(&o.skipReason, "oauth2-proxy-skipped", "", "why oauth2-proxy is skipped (printed in the table)")
	fs.BoolVar(&o.pin, "pin", true, "with taskset and at least two CPUs, run the load generator on one CPU and the upstream and proxies on another")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs, logs, audit files)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: peers -portcullis PATH [-oauth2-proxy PATH] [-duration 10s] [-conns 16] [-rounds 3]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if o.portcullis == "" || fs.NArg() > 0 || o.conns < 1 || o.rounds < 1 || o.duration <= 0 || o.warmup < 0 {
		fs.Usage()
		return 2
	}
	pins, reexec, note := pinning(o.pin)
	if reexec {
		// Move this process (the load generator) to its CPU: taskset execs
		// us again with the same args and the pins in the environment, and
		// the new Go runtime sizes itself for that one CPU.
		err := reexecPinned(pins, args)
		pins, note = cpuPins{}, fmt.Sprintf("not pinned: taskset failed: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, pins, note); err != nil {
		fmt.Fprintf(os.Stderr, "peers: %v\n", err)
		return 1
	}
	return 0
}

// pinnedEnv carries the pins ("client:servers") into the process taskset
// started.
const pinnedEnv = "PORTCULLIS_PEERS_PINNED"

// cpuPins are taskset CPU lists; empty means not pinned.
type cpuPins struct{ client, servers string }

// pinning picks one allowed CPU for the load generator and another for the
// upstream and proxies, when taskset exists and two CPUs are allowed.
// reexec says this process has yet to move to p.client; note says what was
// decided, for the report.
func pinning(want bool) (p cpuPins, reexec bool, note string) {
	if !want {
		return cpuPins{}, false, "not pinned (-pin=false)"
	}
	if env := os.Getenv(pinnedEnv); env != "" {
		client, servers, _ := strings.Cut(env, ":")
		p = cpuPins{client: client, servers: servers}
		return p, false, fmt.Sprintf("taskset: load generator (and the idle OIDC provider) on CPU %s; upstream and proxies on CPU %s", p.client, p.servers)
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return cpuPins{}, false, "not pinned: taskset not found"
	}
	cpus, err := allowedCPUs()
	if err != nil {
		return cpuPins{}, false, "not pinned: " + err.Error()
	}
	if len(cpus) < 2 {
		return cpuPins{}, false, fmt.Sprintf("not pinned: only CPU %v allowed", cpus)
	}
	return cpuPins{client: strconv.Itoa(cpus[0]), servers: strconv.Itoa(cpus[1])}, true, ""
}

// allowedCPUs parses Cpus_allowed_list of this process ("0-1", "0,2-3").
func allowedCPUs() ([]int, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		list, ok := strings.CutPrefix(line, "Cpus_allowed_list:")
		if !ok {
			continue
		}
		var cpus []int
		for _, part := range strings.Split(strings.TrimSpace(list), ",") {
			lo, hi, isRange := strings.Cut(part, "-")
			a, err := strconv.Atoi(lo)
			if err != nil {
				return nil, fmt.Errorf("Cpus_allowed_list %q: %w", list, err)
			}
			b := a
			if isRange {
				if b, err = strconv.Atoi(hi); err != nil {
					return nil, fmt.Errorf("Cpus_allowed_list %q: %w", list, err)
				}
			}
			for c := a; c <= b; c++ {
				cpus = append(cpus, c)
			}
		}
		return cpus, nil
	}
	return nil, errors.New("no Cpus_allowed_list in /proc/self/status")
}

// reexecPinned replaces this process with itself under taskset; it returns
// only when that fails.
func reexecPinned(p cpuPins, args []string) error {
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	argv := append([]string{"taskset", "-c", p.client, self}, args...)
	return syscall.Exec(taskset, argv, append(os.Environ(), pinnedEnv+"="+p.client+":"+p.servers))
}

// run is the whole benchmark: start everything, sign in, measure, report,
// stop everything.
func run(ctx context.Context, o options, pins cpuPins, pinNote string) error {
	dir, err := os.MkdirTemp("", "portcullis-peers-")
	if err != nil {
		return err
	}
	if o.keep {
		defer fmt.Printf("kept %s (configs, logs, audit files)\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	env := &bench{opts: o, dir: dir, pins: pins}
	defer env.stopAll()

	fmt.Printf("peers: %s, %s/%s, %s; %s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, cpuInfo(), loadavg())
	fmt.Printf("peers: %s\n", pinNote)
	fmt.Printf("peers: %d rounds x (%s warm-up + %s measured) per target, %d connections, HTTPS (TLS 1.3, HTTP/1.1 keep-alive) to every proxy, plain HTTP to the upstream\n",
		o.rounds, o.warmup, o.duration, o.conns)

	targets, err := env.startAll(ctx)
	if err != nil {
		return err
	}
	for r := 1; r <= o.rounds; r++ {
		for _, t := range targets {
			if t.skipped != "" {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			res, err := env.measure(ctx, t)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w%s", r, t.name, err, t.logTail())
			}
			t.results = append(t.results, res)
			fmt.Printf("round %d/%d %-12s %s\n", r, o.rounds, t.name, res)
		}
	}
	fmt.Println()
	report(os.Stdout, targets)
	env.afterword(targets)
	return nil
}
