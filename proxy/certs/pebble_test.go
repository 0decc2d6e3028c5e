package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"go/build"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis/portcullis/internal/confkit"
)

// This file is the acceptance test of issue 3: a real ACME server (Pebble)
// on loopback issues certificates to the Manager, which answers the
// challenges on its own listeners.
//
// Needs `pebble` and `pebble-challtestsrv` (v2.10.3), found through
// $PEBBLE / $PEBBLE_CHALLTESTSRV, then $PATH, then $GOBIN or $GOPATH/bin.
// `.ci/pebble.sh` installs them. Without them the test skips, or fails when
// CI=true.

const pebbleInstall = "go install github.com/letsencrypt/pebble/v2/cmd/pebble@v2.10.3 github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@v2.10.3 (or run .ci/pebble.sh)"

func findTool(name, envVar string) string {
	if p := os.Getenv(envVar); p != "" {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	dirs := []string{os.Getenv("GOBIN")}
	for _, gp := range filepath.SplitList(build.Default.GOPATH) {
		dirs = append(dirs, filepath.Join(gp, "bin"))
	}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	return ""
}

// freePort returns a loopback port that was free a moment ago (for the
// tools that must be given a port number).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startProcess runs a tool until the test ends, its output going to log.
func startProcess(t *testing.T, log io.Writer, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := ok()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pebbleEnv is a running Pebble with its DNS server.
type pebbleEnv struct {
	dirURL     string
	caFile     string // trusts Pebble's own HTTPS listeners
	issuerRoot *x509.CertPool
	log        *syncBuffer
}

func (p *pebbleEnv) count(s string) int { return strings.Count(p.log.String(), s) }

// httpValidations counts the distinct HTTP-01 challenge URLs Pebble
// fetched (it validates each from several "perspectives").
func (p *pebbleEnv) httpValidations() int {
	const marker = "Attempting to validate w/ HTTP: "
	seen := map[string]bool{}
	for _, line := range strings.Split(p.log.String(), "\n") {
		if _, url, ok := strings.Cut(line, marker); ok {
			seen[strings.TrimSpace(url)] = true
		}
	}
	return len(seen)
}

func startPebble(t *testing.T, httpPort, tlsPort int) *pebbleEnv {
	t.Helper()
	pebble, chall := findTool("pebble", "PEBBLE"), findTool("pebble-challtestsrv", "PEBBLE_CHALLTESTSRV")
	if pebble == "" || chall == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pebble or pebble-challtestsrv not found; install them: %s", pebbleInstall)
		}
		t.Skipf("pebble or pebble-challtestsrv not found; install them to run this test: %s", pebbleInstall)
	}
	dir := t.TempDir()
	env := &pebbleEnv{log: &syncBuffer{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pebble and challtestsrv output:\n%s", env.log.String())
		}
	})

	// Pebble's own HTTPS certificate, from a throwaway CA of this test.
	pki := newTestPKI(t)
	certFile, keyFile := filepath.Join(dir, "pebble.crt"), filepath.Join(dir, "pebble.key")
	pki.write(t, certFile, keyFile, "localhost", "127.0.0.1")
	env.caFile = filepath.Join(dir, "pebble-ca.pem")
	if err := os.WriteFile(env.caFile, pemCert(pki.ca.Raw), 0o644); err != nil {
		t.Fatal(err)
	}

	// A DNS server answering 127.0.0.1 for every name (A only: the test's
	// listeners are IPv4).
	dnsPort, challMgmt := freePort(t), freePort(t)
	startProcess(t, env.log, nil, chall,
		"-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort), "-management", fmt.Sprintf("127.0.0.1:%d", challMgmt),
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "")

	listen, mgmt := freePort(t), freePort(t)
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", listen),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", mgmt),
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       httpPort,
		"tlsPort":                        tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm":                   "ecdsa",
		"profiles": map[string]any{"default": map[string]any{
			"description": "default", "validityPeriod": 7776000,
		}},
	}}
	confFile := filepath.Join(dir, "pebble-config.json")
	data, _ := json.Marshal(conf)
	if err := os.WriteFile(confFile, data, 0o644); err != nil {
		t.Fatal(err)
	}
	startProcess(t, env.log, []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"},
		pebble, "-config", confFile, "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort))

	pool := x509.NewCertPool()
	pool.AddCert(pki.ca)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	env.dirURL = fmt.Sprintf("https://127.0.0.1:%d/dir", listen)
	waitFor(t, "pebble directory", 30*time.Second, func() error {
		resp, err := client.Get(env.dirURL)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	// The root that signs issued certificates is not the one Pebble's
	// HTTPS uses; the management API hands it out.
	resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/roots/0", mgmt))
	if err != nil {
		t.Fatalf("fetching Pebble's issuing root: %v", err)
	}
	rootPEM, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	env.issuerRoot = x509.NewCertPool()
	if !env.issuerRoot.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("Pebble's /roots/0 returned no certificate: %q", rootPEM)
	}
	return env
}

// swappable listeners: the test restarts the Manager behind fixed ports.
type testFrontend struct {
	cur       atomic.Pointer[Manager]
	httpsAddr string
	httpAddr  string
}

// start binds the addresses and serves them with the current Manager.
func (f *testFrontend) start(t *testing.T) {
	t.Helper()
	tlsLn, err := net.Listen("tcp", f.httpsAddr)
	if err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", f.httpAddr)
	if err != nil {
		tlsLn.Close()
		t.Fatal(err)
	}
	tlsConf := &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return f.cur.Load().TLSConfig(), nil
	}}
	https := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hello from "+r.Host)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // refused handshakes are expected
	}
	plain := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.cur.Load().HTTPHandler(nil).ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go https.Serve(tls.NewListener(tlsLn, tlsConf))
	go plain.Serve(httpLn)
	t.Cleanup(func() {
		https.Close()
		plain.Close()
	})
}

func TestACMEWithPebble(t *testing.T) {
	httpPort, tlsPort := freePort(t), freePort(t)
	front := &testFrontend{httpAddr: fmt.Sprintf("127.0.0.1:%d", httpPort), httpsAddr: fmt.Sprintf("127.0.0.1:%d", tlsPort)}
	peb := startPebble(t, httpPort, tlsPort)

	storage := filepath.Join(t.TempDir(), "certs")
	var logs syncBuffer
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CERTS_TEST_LOGS") != "" {
			t.Logf("manager logs:\n%s", logs.String())
		}
	})
	newManager := func(hosts []string, challenges ...string) *Manager {
		t.Helper()
		cfg := Config{Mode: ModeACME, ACME: ACMEConfig{
			Email: "ops@portcullis.test", CA: peb.dirURL, TrustedRoots: peb.caFile, Storage: storage, Challenges: challenges,
		}}
		cfg.SetDefaults(t.TempDir())
		var p confkit.Problems
		cfg.Validate(&p, "tls", hosts)
		if p.Len() != 0 {
			t.Fatalf("config: %v", p.List())
		}
		m, err := New(t.Context(), cfg, t.TempDir(), Options{
			Logger:    slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			HTTPAddr:  front.httpAddr,
			HTTPSAddr: front.httpsAddr,
		})
		if err != nil {
			t.Fatal(err)
		}
		if front.cur.Load() == nil || front.cur.Load().ctx.Err() != nil {
			front.cur.Store(m) // the first Manager, or a restart
		}
		if err := m.SetHosts(t.Context(), hosts); err != nil {
			t.Fatal(err)
		}
		return m
	}
	// serial waits until host's certificate is served and returns its
	// serial number, checking it with nothing but Pebble's issuing root.
	serial := func(host string) string {
		t.Helper()
		var leaf *x509.Certificate
		waitFor(t, "certificate for "+host, 90*time.Second, func() error {
			var err error
			leaf, err = handshake(front.httpsAddr, host, host, peb.issuerRoot)
			return err
		})
		if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != host {
			t.Errorf("certificate for SNI %s has names %v, want [%s]", host, leaf.DNSNames, host)
		}
		return leaf.SerialNumber.String()
	}

	hosts := []string{"a.portcullis.test", "b.portcullis.test"}

	// 1. Only http-01, answered by HTTPHandler on the HTTP listener. The
	// hosts are set before the listeners are bound, as the command does;
	// certificate work must wait for them rather than take their ports.
	m1 := newManager(hosts, ChallengeHTTP01)
	time.Sleep(200 * time.Millisecond) // give a premature ACME attempt the time to grab the port
	front.start(t)
	s1 := map[string]string{}
	for _, h := range hosts {
		s1[h] = serial(h)
	}
	if s1[hosts[0]] == s1[hosts[1]] {
		t.Errorf("both hosts got the same certificate %s", s1[hosts[0]])
	}
	if got := peb.count("Added order"); got != 2 {
		t.Errorf("orders after the first start = %d, want 2", got)
	}
	if got := peb.httpValidations(); got != 2 {
		t.Errorf("HTTP-01 validations = %d, want 2 (one per host, served by HTTPHandler)", got)
	}
	// An unknown SNI is refused rather than answered with another host's
	// certificate.
	if _, err := handshake(front.httpsAddr, "c.portcullis.test", "c.portcullis.test", peb.issuerRoot); err == nil {
		t.Error("handshake for an unmanaged host succeeded")
	}

	// The HTTP listener redirects everything else to https.
	noFollow := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(http.MethodGet, "http://"+front.httpAddr+"/reports/q3?x=1", nil)
	req.Host = "a.portcullis.test"
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if want := fmt.Sprintf("https://a.portcullis.test:%d/reports/q3?x=1", tlsPort); resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
		t.Errorf("redirect = %d %q, want 308 %q", resp.StatusCode, resp.Header.Get("Location"), want)
	}
	m1.Close()

	// 2. A restart with the same storage reuses the certificates: same
	// serial numbers, no new order.
	m2 := newManager(hosts)
	for _, h := range hosts {
		if got := serial(h); got != s1[h] {
			t.Errorf("after restart %s serves serial %s, want the stored %s", h, got, s1[h])
		}
	}
	if got := peb.count("Added order"); got != 2 {
		t.Errorf("orders after the restart = %d, want still 2", got)
	}
	m2.Close()

	// 3. Only tls-alpn-01, answered by TLSConfig on the HTTPS listener, for
	// a host added by a reload; the others are still reused.
	m3 := newManager(hosts[:1], ChallengeTLSALPN01)
	defer m3.Close()
	if got := serial(hosts[0]); got != s1[hosts[0]] {
		t.Errorf("%s serves serial %s, want the stored %s", hosts[0], got, s1[hosts[0]])
	}
	more := append(append([]string{}, hosts...), "c.portcullis.test")
	if err := m3.SetHosts(t.Context(), more); err != nil {
		t.Fatal(err)
	}
	serial("c.portcullis.test")
	if got := serial(hosts[1]); got != s1[hosts[1]] {
		t.Errorf("%s serves serial %s, want the stored %s", hosts[1], got, s1[hosts[1]])
	}
	if got := peb.count("Added order"); got != 3 {
		t.Errorf("orders after adding a host = %d, want 3", got)
	}
	if got := peb.httpValidations(); got != 2 {
		t.Errorf("HTTP-01 validations = %d, want still 2 (the new host must have used tls-alpn-01)", got)
	}

	// 4. Two replicas sharing the storage add the same host at once: one
	// order between them (certmagic's lock in the storage), and both serve
	// the certificate. The listeners belong to the first replica; when the
	// second one wins the lock, its challenges are answered by the first
	// through the storage (certmagic's distributed solving).
	m3.Close()
	replica1 := newManager(hosts[:1])
	replica2 := newManager(hosts[:1])
	defer replica1.Close()
	defer replica2.Close()
	if front.cur.Load() != replica1 {
		t.Fatal("the listeners do not serve the first replica")
	}
	withD := []string{hosts[0], "d.portcullis.test"}
	errs := make(chan error, 2)
	for _, r := range []*Manager{replica1, replica2} {
		go func() { errs <- r.SetHosts(t.Context(), withD) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	d1 := serial("d.portcullis.test")
	front.cur.Store(replica2)
	if d2 := serial("d.portcullis.test"); d2 != d1 {
		t.Errorf("the replicas serve different certificates for d.portcullis.test: %s and %s", d1, d2)
	}
	if got := peb.count("Added order"); got != 4 {
		t.Errorf("orders after two replicas added one host = %d, want 4 (one new order)", got)
	}
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
