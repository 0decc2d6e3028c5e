package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/portcullis/portcullis/proxy"
)

// Child modes of this binary: the upstream and the bare proxy run as
// processes of their own so that their CPU is theirs alone and taskset can
// put them beside the other proxies.
const (
	childUpstream = "child-upstream"
	childBare     = "child-bare"
)

// upstreamBody is what the upstream answers on every path but its own
// /__peers/ ones (the same body as proxy.BenchmarkProxiedGET's).
const upstreamBody = `{"status":"ok","items":[1,2,3]}`

// Paths the upstream answers itself.
const (
	whoamiPath = "/__peers/whoami" // the identity headers it received
	connsPath  = "/__peers/conns"  // how many connections it accepted so far
)

// identityHeaders are the request headers whoami reports: what Portcullis
// and oauth2-proxy tell the upstream about the user.
var identityHeaders = []string{
	"X-Portcullis-User", "X-Portcullis-Email", "X-Portcullis-Groups", "X-Portcullis-Assertion",
	"X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups", "X-Forwarded-Preferred-Username",
	"Authorization", "Cookie",
}

// inheritedListener is the listener the harness passes as fd 3.
func inheritedListener() (net.Listener, error) {
	f := os.NewFile(3, "listener")
	if f == nil {
		return nil, errors.New("no listener on fd 3")
	}
	defer f.Close()
	return net.FileListener(f)
}

// runUpstream serves the fixed body until killed.
func runUpstream() int {
	ln, err := inheritedListener()
	if err != nil {
		fmt.Fprintf(os.Stderr, "upstream: %v\n", err)
		return 1
	}
	var conns atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc(whoamiPath, func(w http.ResponseWriter, r *http.Request) {
		var b strings.Builder
		for _, h := range identityHeaders {
			for _, v := range r.Header.Values(h) {
				if len(v) > 60 {
					v = fmt.Sprintf("%.40s... (%d bytes)", v, len(v))
				}
				fmt.Fprintf(&b, "%s: %s\n", h, v)
			}
		}
		io.WriteString(w, b.String())
	})
	mux.HandleFunc(connsPath, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, conns.Load())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, upstreamBody)
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		},
	}
	err = srv.Serve(ln)
	fmt.Fprintf(os.Stderr, "upstream: %v\n", err)
	return 1
}

// runBare is the baseline: httputil.ReverseProxy with SetURL and
// SetXForwarded, Portcullis's upstream transport (proxy.NewTransport), TLS
// with the harness's certificate, and nothing else.
func runBare(args []string) int {
	fs := flag.NewFlagSet(childBare, flag.ContinueOnError)
	upstream := fs.String("upstream", "", "upstream URL")
	cert := fs.String("cert", "", "TLS certificate (PEM)")
	key := fs.String("key", "", "TLS key (PEM)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	up, err := url.Parse(*upstream)
	if err != nil || up.Host == "" {
		fmt.Fprintf(os.Stderr, "bare: bad -upstream %q\n", *upstream)
		return 2
	}
	ln, err := inheritedListener()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bare: %v\n", err)
		return 1
	}
	rp := &httputil.ReverseProxy{
		Transport: proxy.NewTransport(),
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(up)
			pr.SetXForwarded()
		},
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	err = srv.ServeTLS(ln, *cert, *key)
	fmt.Fprintf(os.Stderr, "bare: %v\n", err)
	return 1
}

// proc is a child process: a proxy or the upstream.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when it exited
	waitErr error
}

// startProc starts argv (under taskset -c cpu when cpu is set) with its
// output in logPath and extra files from fd 3 on.
func startProc(name, cpu, logPath string, extra []*os.File, argv ...string) (*proc, error) {
	if cpu != "" {
		// taskset execs the program, so the pid stays the program's.
		argv = append([]string{"taskset", "-c", cpu}, argv...)
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = extra
	// Its own process group: a Ctrl-C to the harness reaches the harness,
	// which then stops the children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended, and how.
func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// stop sends SIGTERM (so Portcullis drains and flushes its audit spool)
// and SIGKILL after 20s.
func (p *proc) stop() {
	if ok, _ := p.exited(); ok {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail is the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
