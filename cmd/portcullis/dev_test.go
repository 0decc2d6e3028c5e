package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/portcullis/portcullis/internal/demoapp"
)

// devRun is `portcullis dev` running in-process on a loopback port.
type devRun struct {
	URL    string // https://localhost:PORT
	CAFile string
	Data   string
	Out    *syncBuffer
	Err    *syncBuffer
	cancel context.CancelFunc
	done   chan int
}

var (
	devOpenLine = regexp.MustCompile(`(?m)^\s+Open\s+(https://localhost:\d+)/$`)
	devCALine   = regexp.MustCompile(`(?m)^\s+Local CA\s+(\S+)$`)
)

// startDevCommand runs `portcullis dev --listen 127.0.0.1:0` with a
// temporary data directory (and the policies shipped in the binary, since
// the test's working directory has no ./policies), and reads the URL and
// the CA file from the banner it prints.
func startDevCommand(t *testing.T) *devRun {
	t.Helper()
	d := &devRun{Data: t.TempDir(), Out: &syncBuffer{}, Err: &syncBuffer{}, done: make(chan int, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go func() {
		d.done <- runDev(ctx, []string{"--listen", "127.0.0.1:0", "--data", d.Data}, d.Out, d.Err)
	}()
	deadline := time.After(30 * time.Second)
	for !strings.Contains(d.Out.String(), "Press Ctrl-C to stop.") {
		select {
		case code := <-d.done:
			t.Fatalf("dev exited with %d before printing its banner\nstderr:\n%s", code, d.Err.String())
		case <-deadline:
			cancel()
			t.Fatalf("no banner within 30s\nstdout:\n%s\nstderr:\n%s", d.Out.String(), d.Err.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	banner := d.Out.String()
	m := devOpenLine.FindStringSubmatch(banner)
	c := devCALine.FindStringSubmatch(banner)
	if m == nil || c == nil {
		cancel()
		t.Fatalf("banner without Open URL or Local CA:\n%s", banner)
	}
	d.URL, d.CAFile = m[1], c[1]
	t.Cleanup(func() {
		if code := d.Stop(t); code != exitOK {
			t.Errorf("dev exited with %d, want 0\nstderr:\n%s", code, d.Err.String())
		}
	})
	return d
}

// Stop cancels dev (as Ctrl-C does) and returns its exit status.
func (d *devRun) Stop(t *testing.T) int {
	t.Helper()
	d.cancel()
	select {
	case code := <-d.done:
		d.done <- code // a second Stop sees it too
		return code
	case <-time.After(40 * time.Second):
		t.Fatal("dev did not stop within 40s")
		return -1
	}
}

// Client is a browser-like client: it verifies the server's certificate
// against dev's local CA (no skipping), keeps cookies, follows redirects
// and resolves localhost to the loopback address dev listens on.
func (d *devRun) Client(t *testing.T) *http.Client {
	t.Helper()
	pemBytes, err := os.ReadFile(d.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("no certificate in %s", d.CAFile)
	}
	u, _ := url.Parse(d.URL)
	jar, _ := cookiejar.New(nil)
	return &http.Client{
		Jar:     jar,
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool},
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if addr == u.Host {
					addr = "127.0.0.1:" + u.Port()
				}
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			},
		},
	}
}

var (
	devidpHiddenField = regexp.MustCompile(`<input type="hidden" name="([a-z_]+)" value="([^"]*)">`)
	devidpFormAction  = regexp.MustCompile(`<form method="post" action="([^"]*)"`)
)

// devidpSubmit fills in the embedded provider's sign-in form found in body
// (the page at pageURL) and posts it with client, following redirects.
func devidpSubmit(t *testing.T, client *http.Client, pageURL *url.URL, body, username, password string) (*http.Response, string) {
	t.Helper()
	act := devidpFormAction.FindStringSubmatch(body)
	if act == nil {
		t.Fatalf("no sign-in form at %s:\n%.2000s", pageURL, body)
	}
	target, err := pageURL.Parse(html.UnescapeString(act[1]))
	if err != nil {
		t.Fatalf("form action %q: %v", act[1], err)
	}
	form := url.Values{}
	for _, m := range devidpHiddenField.FindAllStringSubmatch(body, -1) {
		form.Set(m[1], html.UnescapeString(m[2]))
	}
	if form.Get("csrf") == "" || form.Get("request") == "" {
		t.Fatalf("sign-in form without csrf or request fields:\n%.2000s", body)
	}
	form.Set("username", username)
	form.Set("password", password)
	req, _ := http.NewRequest(http.MethodPost, target.String(), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "text/html")
	return devDo(t, client, req)
}

func devGet(t *testing.T, client *http.Client, u, accept string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", accept)
	return devDo(t, client, req)
}

func devDo(t *testing.T, client *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp, string(b)
}

func isDevSignInForm(resp *http.Response, body string) bool {
	return strings.HasPrefix(resp.Request.URL.Path, "/.devidp/") &&
		strings.Contains(body, `name="password"`)
}

// TestDevSignInAsAlice runs `portcullis dev` and goes through what a new
// user does: open the app, land on the embedded provider's form, sign in as
// alice, see the demo app report alice's identity with a verified
// assertion, be refused /admin, sign out, and be asked to sign in again.
func TestDevSignInAsAlice(t *testing.T) {
	d := startDevCommand(t)
	banner := d.Out.String()
	for _, want := range []string{"alice / alice", "bob / bob", "engineering, admins", d.CAFile, filepath.Join(d.Data, "audit.jsonl")} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner lacks %q:\n%s", want, banner)
		}
	}
	if fi, err := os.Stat(d.CAFile); err != nil || fi.IsDir() {
		t.Fatalf("CA file %s: %v", d.CAFile, err)
	}
	client := d.Client(t)

	resp, body := devGet(t, client, d.URL+"/", "text/html")
	if resp.StatusCode != http.StatusOK || !isDevSignInForm(resp, body) {
		t.Fatalf("opening the app ended at %s with %d, want the sign-in form:\n%.2000s", resp.Request.URL, resp.StatusCode, body)
	}
	if !strings.Contains(body, "alice") {
		t.Errorf("the sign-in form does not list the demo accounts")
	}

	resp, body = devidpSubmit(t, client, resp.Request.URL, body, "alice", "not-alice") // 401, the form again
	if resp.StatusCode != http.StatusUnauthorized || !isDevSignInForm(resp, body) || !strings.Contains(body, `role="alert"`) {
		t.Fatalf("a wrong password ended at %s with %d, want the form with an alert:\n%.2000s", resp.Request.URL, resp.StatusCode, body)
	}

	resp, body = devidpSubmit(t, client, resp.Request.URL, body, "alice", "alice")
	if resp.StatusCode != http.StatusOK || resp.Request.URL.String() != d.URL+"/" {
		t.Fatalf("signing in ended at %s with %d, want %s/ with 200:\n%.2000s", resp.Request.URL, resp.StatusCode, d.URL, body)
	}
	for _, want := range []string{"alice@example.com", "engineering", "Assertion verified"} {
		if !strings.Contains(body, want) {
			t.Errorf("demo app page lacks %q", want)
		}
	}

	resp, body = devGet(t, client, d.URL+"/?format=json", "application/json")
	var rep demoapp.Report
	if err := json.Unmarshal([]byte(body), &rep); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("demo app JSON: %d %v\n%s", resp.StatusCode, err, body)
	}
	if rep.User != "alice" || rep.Email != "alice@example.com" || strings.Join(rep.Groups, ",") != "engineering" {
		t.Errorf("demo app saw user %q email %q groups %v, want alice, alice@example.com, [engineering]", rep.User, rep.Email, rep.Groups)
	}
	if !rep.Assertion.Verified || !rep.Assertion.JTIMatchesRequestID {
		t.Errorf("assertion verified=%v jti matches=%v error=%q, want verified with jti = request id", rep.Assertion.Verified, rep.Assertion.JTIMatchesRequestID, rep.Assertion.Error)
	}
	if rep.Forwarded.Proto != "https" {
		t.Errorf("X-Forwarded-Proto = %q, want https", rep.Forwarded.Proto)
	}

	resp, _ = devGet(t, client, d.URL+"/admin", "text/html")
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("GET /admin as alice: %d, want 403", resp.StatusCode)
	}

	resp, body = devGet(t, client, d.URL+"/.portcullis/logout", "text/html")
	if resp.StatusCode != http.StatusOK || !strings.Contains(strings.ToLower(body), "signed out") {
		t.Fatalf("sign-out ended at %s with %d, want a signed-out page:\n%.2000s", resp.Request.URL, resp.StatusCode, body)
	}
	if resp.Request.URL.Host != strings.TrimPrefix(d.URL, "https://") {
		t.Errorf("sign-out ended on %s, want the proxy's own origin", resp.Request.URL)
	}

	// The provider's session ended too: the password is asked again.
	resp, body = devGet(t, client, d.URL+"/", "text/html")
	if resp.StatusCode != http.StatusOK || !isDevSignInForm(resp, body) {
		t.Fatalf("after sign-out, opening the app ended at %s with %d, want the sign-in form", resp.Request.URL, resp.StatusCode)
	}

	if code := d.Stop(t); code != exitOK {
		t.Fatalf("dev exited with %d\nstderr:\n%s", code, d.Err.String())
	}
	// The audit trail holds alice's allowed request and her refused /admin.
	f, err := os.Open(filepath.Join(d.Data, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var allowed, denied bool
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct {
			Decision string `json:"decision"`
			Route    string `json:"route"`
			User     struct {
				Sub string `json:"sub"`
			} `json:"user"`
			Request struct {
				Path string `json:"path"`
			} `json:"request"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if ev.Route == devRouteName && ev.User.Sub == "alice" {
			allowed = allowed || ev.Decision == "allow" && ev.Request.Path == "/"
			denied = denied || ev.Decision == "deny" && ev.Request.Path == "/admin"
		}
	}
	if !allowed || !denied {
		t.Errorf("audit.jsonl: alice allowed on / = %v, denied on /admin = %v; want both", allowed, denied)
	}
}

// TestDevFlags: bad usage is exit 2 with a message; --help is exit 0.
func TestDevFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"--help"}, exitOK},
		{[]string{"--nope"}, exitUsage},
		{[]string{"extra"}, exitUsage},
	} {
		var out, errOut strings.Builder
		if got := runDev(context.Background(), tc.args, &out, &errOut); got != tc.want {
			t.Errorf("dev %v: exit %d, want %d (stderr %q)", tc.args, got, tc.want, errOut.String())
		}
	}
	// A port already in use is a readable error, exit 1.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var out, errOut strings.Builder
	if got := runDev(context.Background(), []string{"--listen", ln.Addr().String(), "--data", t.TempDir()}, &out, &errOut); got != exitFail {
		t.Errorf("dev on a busy port: exit %d, want 1", got)
	}
	if msg := errOut.String(); !strings.Contains(msg, "--listen") || strings.Count(strings.TrimSpace(msg), "\n") > 0 {
		t.Errorf("busy port message = %q, want one line naming --listen", msg)
	}
	if msg := errOut.String(); !strings.Contains(msg, "another portcullis dev running") {
		t.Errorf("busy port message = %q, want the hint that another dev may be running", msg)
	}
	// A malformed address is not a busy port: no such hint.
	for _, addr := range []string{"bogus", "127.0.0.1:99999", "192.0.2.1:0"} {
		out.Reset()
		errOut.Reset()
		if got := runDev(context.Background(), []string{"--listen", addr, "--data", t.TempDir()}, &out, &errOut); got != exitFail {
			t.Errorf("dev --listen %s: exit %d, want 1", addr, got)
		}
		if msg := errOut.String(); !strings.Contains(msg, "--listen") || strings.Contains(msg, "another portcullis dev") {
			t.Errorf("dev --listen %s: message = %q, want one naming --listen without the busy-port hint", addr, msg)
		}
	}
}
