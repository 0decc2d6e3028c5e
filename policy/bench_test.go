package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/build"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// benchCase is one representative, allowed request for a shipped route
// package.
type benchCase struct {
	name string // the package's last segment
	pkg  string
	in   *Input
}

func benchCases() []benchCase {
	finance := userSpec{sub: "fin", groups: []string{"finance"}, amr: []any{"pwd", "otp"}}
	hr := userSpec{sub: "hr", groups: []string{"hr"}}
	partner := userSpec{sub: "pat", email: "pat@partner.example", groups: []string{}}
	analyst := userSpec{sub: "ana", groups: []string{"analysts"}}
	cases := []benchCase{
		{pkg: "portcullis.routes.demo", in: input(alice, "GET", "/reports/q3")},
		{pkg: "portcullis.routes.admin", in: input(bob, "GET", "/users")},
		{pkg: "portcullis.routes.partners", in: input(partner, "GET", "/")},
		{pkg: "portcullis.routes.docs", in: input(alice, "GET", "/guide")},
		{pkg: "portcullis.routes.api", in: input(analyst, "GET", "/api/v1/reports/q3")},
		{pkg: "portcullis.routes.payroll", in: input(hr, "GET", "/")},
		{pkg: "portcullis.routes.internal", in: input(alice, "GET", "/")},
		{pkg: "portcullis.routes.finance", in: input(finance, "GET", "/")},
	}
	for i := range cases {
		cases[i].name = cases[i].pkg[strings.LastIndex(cases[i].pkg, ".")+1:]
		// A browser-like set of headers, as the proxy would pass them.
		cases[i].in.Request.Headers = map[string][]string{
			"accept":          {"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
			"accept-encoding": {"gzip, deflate, br"},
			"accept-language": {"en-US,en;q=0.5"},
			"user-agent":      {"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"},
			"sec-fetch-mode":  {"navigate"},
		}
	}
	return cases
}

// BenchmarkDecision measures one in-process decision per shipped route
// package through Engine.Eval, as the proxy makes it with the default
// configuration: input conversion, evaluation, reading the rules, metrics,
// and the decision cache. The same request is repeated, so every package
// whose decisions may be remembered answers from the cache; payroll reads
// input.request.time and is evaluated every time. See
// BenchmarkDecisionEvaluated for the cost of an evaluation.
func BenchmarkDecision(b *testing.B) { benchDecisions(b, Config{Dir: shippedDir}) }

// BenchmarkDecisionEvaluated is BenchmarkDecision with the decision cache
// off: every decision is evaluated by OPA, as a request whose input the
// package has not seen before is.
func BenchmarkDecisionEvaluated(b *testing.B) {
	off := 0
	benchDecisions(b, Config{Dir: shippedDir, DecisionCache: &off})
}

func benchDecisions(b *testing.B, cfg Config) {
	e, err := NewEngine(cfg, Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := e.Reload(ctx); err != nil {
		b.Fatal(err)
	}
	cases := benchCases()
	var pkgs []string
	for _, c := range cases {
		pkgs = append(pkgs, c.pkg)
	}
	if err := e.SetPackages(pkgs); err != nil {
		b.Fatal(err)
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if d := e.Eval(ctx, c.pkg, c.in); !d.Allow {
				b.Fatalf("benchmark request denied: %+v", d)
			}
			b.ReportAllocs()
			cpu := startCPU(0)
			for b.Loop() {
				e.Eval(ctx, c.pkg, c.in)
			}
			cpu.report(b)
		})
	}
}

// BenchmarkSidecar makes the same decisions through an OPA server on
// loopback (`opa run --server`, REST POST /v1/data/<package path>), the
// usual alternative to evaluating in-process: JSON encoding of the input,
// one HTTP round trip on a kept-alive connection, JSON decoding of the
// package document.
func BenchmarkSidecar(b *testing.B) {
	bin := findOPA()
	if bin == "" {
		msg := "opa binary not found in $OPA, $PATH or $(go env GOPATH)/bin: run .ci/opa.sh (go install github.com/open-policy-agent/opa@<go.mod version>)"
		if os.Getenv("CI") == "true" {
			b.Fatal(msg)
		}
		b.Skip(msg)
	}
	base, pid := startOPA(b, bin, shippedDir)
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true},
		Timeout:   10 * time.Second,
	}
	for _, c := range benchCases() {
		url := base + "/v1/data/" + strings.ReplaceAll(c.pkg, ".", "/")
		b.Run(c.name, func(b *testing.B) {
			if allow, err := sidecarDecision(client, url, c.in); err != nil || !allow {
				b.Fatalf("sidecar decision: allow=%v err=%v", allow, err)
			}
			b.ReportAllocs()
			cpu := startCPU(pid)
			for b.Loop() {
				if _, err := sidecarDecision(client, url, c.in); err != nil {
					b.Fatal(err)
				}
			}
			cpu.report(b)
		})
	}
}

// sidecarDecision asks the OPA server for the package document and reads
// allow the way the proxy would: only a literal true allows.
func sidecarDecision(client *http.Client, url string, in *Input) (bool, error) {
	body, err := json.Marshal(struct {
		Input *Input `json:"input"`
	}{in})
	if err != nil {
		return false, err
	}
	resp, err := client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return false, fmt.Errorf("opa answered %s: %s", resp.Status, b)
	}
	var out struct {
		Result struct {
			Allow   any               `json:"allow"`
			Reason  string            `json:"reason"`
			Status  int               `json:"status"`
			Headers map[string]string `json:"headers"`
		} `json:"result"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return false, err
	}
	return out.Result.Allow == true, nil
}

// findOPA looks for the opa binary in $OPA, $PATH and $(go env GOPATH)/bin.
func findOPA() string {
	if p := os.Getenv("OPA"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("opa"); err == nil {
		return p
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		gopath = build.Default.GOPATH
	}
	for _, dir := range filepath.SplitList(gopath) {
		p := filepath.Join(dir, "bin", "opa")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// startOPA runs `opa run --server` on a free loopback port until the
// benchmark ends, and returns its base URL once it answers /health.
func startOPA(b *testing.B, bin, dir string) (string, int) {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var logs bytes.Buffer
	cmd := exec.Command(bin, "run", "--server", "--addr", addr, "--log-level", "error",
		"--disable-telemetry", "--ignore", "*_test.rego", dir)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	base := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			b.Fatalf("opa exited before serving: %v\n%s", err, logs.String())
		default:
		}
		resp, err := http.Get(base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base, cmd.Process.Pid
			}
		} else if !errors.Is(err, context.DeadlineExceeded) {
			time.Sleep(50 * time.Millisecond)
		}
	}
	b.Fatalf("opa did not answer %s/health within 30s:\n%s", base, logs.String())
	return "", 0
}

// BenchmarkInputConversion measures building the Rego input document, the
// part of a decision that does not depend on the policy: every field
// (full), and only the fields the shipped policies read (shipped), which is
// what their decisions convert.
func BenchmarkInputConversion(b *testing.B) {
	set, err := Load(context.Background(), shippedDir, LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	in := benchCases()[0].in
	for _, c := range []struct {
		name string
		use  fieldMask
	}{{"full", allFields}, {"shipped", set.use}} {
		b.Run(c.name, func(b *testing.B) {
			keys := newInputKeys()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := keys.valueOf(in, c.use); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
