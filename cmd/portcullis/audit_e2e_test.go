package main

// Whole-stack acceptance of the audit trail (issue 6) against a real Pulsar
// broker: the fields of every kind of event, a broker outage under load
// (durable and fail-closed), and a kill -9 of the proxy process under load.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/apache/pulsar-client-go/pulsar"
	pulsarlog "github.com/apache/pulsar-client-go/pulsar/log"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/internal/idtest"
	"github.com/portcullis/portcullis/internal/pulsartest"
)

// Secret-looking values the tests send in query strings, cookies and
// Authorization headers. None of them may reach an audit event.
const (
	aeSecretQuery  = "qsSECRETq7c1e"
	aeSecretCookie = "ckSECRETc91ab"
	aeSecretBearer = "azSECRETa5d20"
	aeSecretBasic  = "bsSECRETb0f3c"
)

// aeWritePolicies writes the route policies of these tests into a fresh
// directory: one that lets signed-in users pass, one that denies everyone,
// one that is broken (allow is not a boolean: decision "error") and one
// that is open.
func aeWritePolicies(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"allow.rego": "package portcullis.routes.e2eallow\n\nallow if input.user.authenticated\n\nreason := \"e2e: signed-in users pass\"\n",
		"deny.rego":  "package portcullis.routes.e2edeny\n\nallow := false\n\nreason := \"e2e: nobody passes here\"\n",
		// A policy error: only the boolean true allows.
		"broken.rego": "package portcullis.routes.e2ebroken\n\nallow := \"yes\"\n",
		"open.rego":   "package portcullis.routes.e2eopen\n\nallow := true\n",
	}
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// aeConfig is a complete stack config (self-signed TLS, the mockoidc
// provider, bearer tokens on, no access log) with the given policy
// directory, audit section (indented by two spaces) and routes.
func aeConfig(idp *idtest.Provider, policyDir, auditSection, routes string) string {
	return stackConfig{
		IDP: idp, PolicyDir: policyDir, Bearer: true, NoAccessLog: true, Audit: auditSection,
		// Generous: load tests share two cores with a Pulsar broker (re)starting.
		DecisionTimeout: "5s",
	}.YAML() + "routes:\n" + routes
}

// aePulsarAudit is an audit section streaming to topic in mode; extra is
// appended as is (e.g. a spool section).
func aePulsarAudit(brokerURL, topic, mode, extra string) string {
	return `  sink: pulsar
  pulsar:
    url: ` + brokerURL + `
    topic: ` + topic + `
  mode: ` + mode + `
` + extra
}

// aeOpenRoute is a public route on host to upstream with the open policy.
func aeOpenRoute(name, host, upstream string) string {
	return `  - name: ` + name + `
    host: ` + host + `
    path: /
    upstream: ` + upstream + `
    policy: portcullis.routes.e2eopen
    public: true
`
}

// aeUpstream is an upstream that answers 200 and remembers the request ids
// it was sent (to tell forwarded requests from refused ones).
type aeUpstream struct {
	*httptest.Server
	mu   sync.Mutex
	seen map[string]bool
}

func newAEUpstream(t testing.TB) *aeUpstream {
	t.Helper()
	u := &aeUpstream{seen: map[string]bool{}}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen[r.Header.Get("X-Request-Id")] = true
		u.mu.Unlock()
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello "+r.URL.Path)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *aeUpstream) Saw(requestID string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[requestID]
}

// aeDeadUpstream is the URL of a loopback port nobody listens on.
func aeDeadUpstream(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// aeBrowser is a client with a cookie jar that follows redirects, sends
// route hosts (*.example.test) to the stack's HTTPS listener and reaches
// anything else (the identity provider) directly.
func aeBrowser(s *stack) *http.Client {
	jar, _ := cookiejar.New(nil)
	https := s.HTTPS
	return &http.Client{
		Jar:     jar,
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if host, _, _ := net.SplitHostPort(addr); strings.HasSuffix(host, ".example.test") {
					addr = https
				}
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			},
		},
	}
}

func aeNoRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// aeMessage is one message of an audit topic.
type aeMessage struct {
	Key       string
	EventTime time.Time
	Payload   []byte
	Event     audit.Event
}

// aeReadTopic reads every message of topic, oldest first.
func aeReadTopic(t testing.TB, brokerURL, topic string) []aeMessage {
	t.Helper()
	client, err := pulsar.NewClient(pulsar.ClientOptions{URL: brokerURL, MetricsRegisterer: prometheus.NewRegistry(),
		OperationTimeout: 30 * time.Second,
		Logger:           pulsarlog.NewLoggerWithSlog(slog.New(slog.DiscardHandler))})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var r pulsar.Reader
	// Right after a broker restart the topic may still be loading.
	for deadline := time.Now().Add(time.Minute); ; {
		r, err = client.CreateReader(pulsar.ReaderOptions{Topic: topic, StartMessageID: pulsar.EarliestMessageID(), ReceiverQueueSize: 10000})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reader for %s: %v", topic, err)
		}
		time.Sleep(time.Second)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out []aeMessage
	for r.HasNext() {
		msg, err := r.Next(ctx)
		if err != nil {
			t.Fatalf("read %s: %v", topic, err)
		}
		m := aeMessage{Key: msg.Key(), EventTime: msg.EventTime(), Payload: msg.Payload()}
		if err := json.Unmarshal(m.Payload, &m.Event); err != nil {
			t.Fatalf("message %s is not an audit event: %v", msg.ID(), err)
		}
		out = append(out, m)
	}
	return out
}

// aeCheckChains fails unless the messages of every instance carry seq 1..n
// exactly once, in order, each linked to its predecessor and with a hash
// that matches its content. It returns the number of events per instance.
func aeCheckChains(t testing.TB, msgs []aeMessage) map[string]int {
	t.Helper()
	last := map[string]*audit.Event{}
	n := map[string]int{}
	for i := range msgs {
		ev := &msgs[i].Event
		prev := last[ev.Instance]
		wantSeq, wantPrev := uint64(1), ""
		if prev != nil {
			wantSeq, wantPrev = prev.Seq+1, prev.Hash
		}
		if ev.Seq != wantSeq || ev.PrevHash != wantPrev {
			t.Fatalf("message %d: instance %s seq %d prev_hash %q; want seq %d prev_hash %q", i, ev.Instance, ev.Seq, ev.PrevHash, wantSeq, wantPrev)
		}
		h, err := audit.ComputeHash(ev)
		if err != nil || h != ev.Hash {
			t.Fatalf("message %d (seq %d): hash %s, computed %s (%v)", i, ev.Seq, ev.Hash, h, err)
		}
		last[ev.Instance] = ev
		n[ev.Instance]++
	}
	return n
}

// aeWaitDelivered waits until the sink acknowledged every recorded event.
func aeWaitDelivered(t testing.TB, p *audit.Pipeline) audit.Status {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st := p.Status()
		if st.Acked == st.Seq {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("events not delivered: seq %d, acked %d, sink %+v", st.Seq, st.Acked, st.Sink)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// aeVerify runs `portcullis audit verify` over topic and fails unless it
// passes for wantInstances instances and wantEvents events.
func aeVerify(t testing.TB, brokerURL, topic string, wantInstances, wantEvents int) {
	t.Helper()
	code, stdout, stderr := runAuditT(t, "verify", "--pulsar", brokerURL, "--topic", topic)
	if code != exitOK {
		t.Fatalf("audit verify: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	want := fmt.Sprintf("ok: %d instances, %d events", wantInstances, wantEvents)
	if !strings.Contains(stdout, want) {
		t.Fatalf("audit verify said %q, want %q", stdout, want)
	}
	t.Logf("audit verify: %s", strings.TrimSpace(stdout))
}

// jsonKeys returns the keys of a JSON object and of the objects nested in
// it, as dotted paths.
func jsonKeys(prefix string, m map[string]any) []string {
	var keys []string
	for k, v := range m {
		keys = append(keys, prefix+k)
		if sub, ok := v.(map[string]any); ok {
			keys = append(keys, jsonKeys(prefix+k+".", sub)...)
		}
	}
	sort.Strings(keys)
	return keys
}

// specKeys are the fields of SPEC §6, schema 1.
var specKeys = func() []string {
	k := []string{"schema", "id", "time", "instance", "seq", "prev_hash", "hash", "request_id", "decision", "reason", "route",
		"policy", "policy.package", "policy.revision",
		"user", "user.sub", "user.email", "user.groups", "user.provider", "user.auth_method",
		"request", "request.method", "request.host", "request.path", "request.remote_addr", "request.user_agent",
		"response", "response.status",
		"duration_ms", "duration_ms.authn", "duration_ms.policy", "duration_ms.upstream", "duration_ms.total"}
	sort.Strings(k)
	return k
}()

var (
	aeInstancePattern = regexp.MustCompile(`^portcullis-[0-9a-f]{8}$`)
	aeTimePattern     = regexp.MustCompile(`"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z"`)
)

// TestAuditE2EEventFields sends allow, deny, error, upstream-down, 404 and
// unauthenticated requests through the whole proxy into a Pulsar topic and
// checks every SPEC §6 field of their events, the Pulsar key and event
// time, the hash chain, and that no query string, cookie or Authorization
// value was recorded anywhere in the messages.
func TestAuditE2EEventFields(t *testing.T) {
	brokerURL, adminURL := pulsartest.Require(t)
	topic := pulsartest.NewTopic(t, adminURL)
	up := newAEUpstream(t)
	idp := idtest.NewProvider(t)
	s := newStack(t, aeConfig(idp, aeWritePolicies(t), aePulsarAudit(brokerURL, topic, "durable", ""), `
  - name: app
    host: app.example.test
    path: /
    upstream: `+up.URL+`
    policy: portcullis.routes.e2eallow
  - name: vault
    host: vault.example.test
    path: /
    upstream: `+up.URL+`
    policy: portcullis.routes.e2edeny
  - name: broken
    host: broken.example.test
    path: /
    upstream: `+up.URL+`
    policy: portcullis.routes.e2ebroken
  - name: gone
    host: gone.example.test
    path: /
    upstream: `+aeDeadUpstream(t)+`
    policy: portcullis.routes.e2eallow
`))
	s.Start(appOptions{Logger: aeLogger(t, s)})

	idp.QueueUser("alice", "alice@example.test", []string{"engineering"})
	alice := aeBrowser(s)
	idtest.Login(t, alice, s.URL("app.example.test", "/welcome"))
	alice.CheckRedirect = aeNoRedirects
	anon := s.Client()
	// The session cookie is a credential too.
	var sessionValues []string
	for _, c := range alice.Jar.Cookies(mustParseURL(t, s.URL("app.example.test", "/"))) {
		sessionValues = append(sessionValues, c.Value)
	}
	if len(sessionValues) == 0 {
		t.Fatal("no session cookie after sign-in")
	}
	basic := base64.StdEncoding.EncodeToString([]byte("alice:" + aeSecretBasic))

	type want struct {
		status                   int
		decision, reason, route  string
		pkg                      string
		revision                 bool // the serving policy revision is recorded
		user                     string
		forwarded                bool
		reasonContains           bool
		authMethod, email, group string
	}
	aliceWant := func(w want) want {
		w.user, w.authMethod, w.email, w.group = "alice", "session", "alice@example.test", "engineering"
		return w
	}
	cases := []struct {
		name   string
		client *http.Client
		method string
		host   string
		path   string
		header map[string]string
		want   want
	}{
		{"allow", alice, http.MethodGet, "app.example.test", "/items/42", map[string]string{"Authorization": "Basic " + basic},
			aliceWant(want{status: 200, decision: "allow", reason: "e2e: signed-in users pass", route: "app", pkg: "portcullis.routes.e2eallow", revision: true, forwarded: true})},
		{"allow POST", alice, http.MethodPost, "app.example.test", "/items", nil,
			aliceWant(want{status: 200, decision: "allow", reason: "e2e: signed-in users pass", route: "app", pkg: "portcullis.routes.e2eallow", revision: true, forwarded: true})},
		{"deny", alice, http.MethodGet, "vault.example.test", "/keys/master", nil,
			aliceWant(want{status: 403, decision: "deny", reason: "e2e: nobody passes here", route: "vault", pkg: "portcullis.routes.e2edeny", revision: true})},
		{"policy error", alice, http.MethodGet, "broken.example.test", "/", nil,
			aliceWant(want{status: 403, decision: "error", reason: "not a boolean", reasonContains: true, route: "broken", pkg: "portcullis.routes.e2ebroken", revision: true})},
		{"upstream down", alice, http.MethodGet, "gone.example.test", "/status", nil,
			aliceWant(want{status: 502, decision: "allow", reason: "upstream unreachable", route: "gone", pkg: "portcullis.routes.e2eallow", revision: true, forwarded: true})},
		// Portcullis's own endpoints: no policy decides them, the user is
		// the one they answered for.
		{"own endpoint", alice, http.MethodGet, "app.example.test", "/.portcullis/me", nil,
			aliceWant(want{status: 200, decision: "allow", reason: "portcullis endpoint /.portcullis/me", route: "app"})},
		{"own endpoint, unknown path", alice, http.MethodGet, "app.example.test", "/.portcullis/nope", nil,
			want{status: 404, decision: "deny", reason: "portcullis endpoint /.portcullis/nope", route: "app"}},
		// The external URL's host has a certificate but no route: a host
		// without a certificate fails in the TLS handshake, before HTTP.
		{"no route (404)", anon, http.MethodGet, "auth.example.test", "/missing", nil,
			want{status: 404, decision: "deny", reason: "no route for this host and path"}},
		{"sign-in redirect", anon, http.MethodGet, "app.example.test", "/private", map[string]string{"Accept": "text/html"},
			want{status: 302, decision: "unauthenticated", reason: "sign-in required: redirected to the identity provider", route: "app", pkg: "portcullis.routes.e2eallow", revision: true}},
		{"sign-in required (401)", anon, http.MethodGet, "app.example.test", "/api/v1", nil,
			want{status: 401, decision: "unauthenticated", reason: "sign-in required", route: "app", pkg: "portcullis.routes.e2eallow", revision: true}},
		{"invalid bearer token", anon, http.MethodGet, "app.example.test", "/api/v1", map[string]string{"Authorization": "Bearer " + aeSecretBearer},
			want{status: 401, decision: "unauthenticated", reason: "invalid credentials", route: "app", pkg: "portcullis.routes.e2eallow", revision: true}},
	}

	type sent struct {
		id            string
		before, after time.Time
		ua            string
	}
	sentBy := map[string]sent{}
	for _, tc := range cases {
		ua := "portcullis-e2e/1.0 (" + tc.name + ")"
		var body io.Reader
		if tc.method == http.MethodPost {
			body = strings.NewReader("password=" + aeSecretBasic)
		}
		req, err := http.NewRequest(tc.method, s.URL(tc.host, tc.path)+"?token="+aeSecretQuery+"&page=2", body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("User-Agent", ua)
		req.Header.Set("Cookie", "sneaky="+aeSecretCookie)
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		before := time.Now()
		resp, err := tc.client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		after := time.Now()
		if resp.StatusCode != tc.want.status {
			t.Fatalf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.want.status)
		}
		id := resp.Header.Get("X-Request-Id")
		if id == "" {
			t.Fatalf("%s: no X-Request-Id in the response", tc.name)
		}
		if tc.want.forwarded != up.Saw(id) && tc.want.status != 502 {
			t.Errorf("%s: forwarded to the upstream = %v, want %v", tc.name, up.Saw(id), tc.want.forwarded)
		}
		sentBy[tc.name] = sent{id: id, before: before, after: after, ua: ua}
	}

	st := aeWaitDelivered(t, s.App.pipeline)
	msgs := aeReadTopic(t, brokerURL, topic)
	if uint64(len(msgs)) != st.Seq {
		t.Fatalf("topic holds %d messages, the proxy recorded %d events", len(msgs), st.Seq)
	}
	if n := aeCheckChains(t, msgs); len(n) != 1 {
		t.Fatalf("events of %d instances, want 1: %v", len(n), n)
	}
	instance := s.App.pipeline.Instance()
	if kept, err := os.ReadFile(filepath.Join(s.Dir, "data", "instance")); err != nil || strings.TrimSpace(string(kept)) != instance {
		t.Errorf("data_dir/instance holds %q (%v), the pipeline's instance is %q", kept, err, instance)
	}
	if !aeInstancePattern.MatchString(instance) {
		t.Errorf("instance %q does not look like portcullis-<8 hex>", instance)
	}

	// Nothing secret anywhere in any message: query strings, cookies
	// (ours and the session's), Authorization values.
	secrets := append([]string{aeSecretQuery, aeSecretCookie, aeSecretBearer, aeSecretBasic, basic, "token=", "sneaky", "page=2", "?"}, sessionValues...)
	byID := map[string][]*aeMessage{}
	ids := map[string]bool{}
	for i := range msgs {
		m := &msgs[i]
		for _, sec := range secrets {
			if bytes.Contains(m.Payload, []byte(sec)) || strings.Contains(m.Key, sec) {
				t.Errorf("message %d (request %s) contains %q: %s", i, m.Event.RequestID, sec, m.Payload)
			}
		}
		if ids[m.Event.ID] {
			t.Errorf("event id %s appears twice", m.Event.ID)
		}
		ids[m.Event.ID] = true
		byID[m.Event.RequestID] = append(byID[m.Event.RequestID], m)
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			snt := sentBy[tc.name]
			got := byID[snt.id]
			if len(got) != 1 {
				t.Fatalf("request %s has %d events, want 1", snt.id, len(got))
			}
			m, w := got[0], tc.want
			ev := &m.Event
			t.Logf("%s", m.Payload)

			var raw map[string]any
			if err := json.Unmarshal(m.Payload, &raw); err != nil {
				t.Fatal(err)
			}
			if keys := jsonKeys("", raw); !slices.Equal(keys, specKeys) {
				t.Errorf("event fields %v,\nwant SPEC §6's %v", keys, specKeys)
			}
			if !aeTimePattern.Match(m.Payload) {
				t.Errorf("time is not RFC 3339 UTC with at most microseconds: %s", m.Payload)
			}
			if !bytes.Contains(m.Payload, []byte(`"groups":[`)) {
				t.Errorf("user.groups is not a JSON array: %s", m.Payload)
			}

			check := func(field string, got, want any) {
				t.Helper()
				if got != want {
					t.Errorf("%s = %#v, want %#v", field, got, want)
				}
			}
			check("schema", ev.Schema, 1)
			id, err := ulid.ParseStrict(ev.ID)
			if err != nil {
				t.Errorf("id %q is not a ULID: %v", ev.ID, err)
			} else if ms := int64(id.Time()); ms != ev.Time.UnixMilli() {
				t.Errorf("id %s carries time %d ms, event time is %d ms", ev.ID, ms, ev.Time.UnixMilli())
			}
			if ev.Time.Location() != time.UTC || ev.Time.Before(snt.before.Truncate(time.Microsecond)) || ev.Time.After(snt.after) {
				t.Errorf("time %v outside the request [%v, %v]", ev.Time, snt.before, snt.after)
			}
			check("instance", ev.Instance, instance)
			if !strings.HasPrefix(ev.Hash, "sha256:") || len(ev.Hash) != len("sha256:")+64 {
				t.Errorf("hash %q is not sha256:<64 hex>", ev.Hash)
			}
			if ev.Seq > 1 && !strings.HasPrefix(ev.PrevHash, "sha256:") {
				t.Errorf("prev_hash %q", ev.PrevHash)
			}
			check("request_id", ev.RequestID, snt.id)
			check("decision", ev.Decision, w.decision)
			if w.reasonContains {
				if !strings.Contains(ev.Reason, w.reason) {
					t.Errorf("reason %q does not mention %q", ev.Reason, w.reason)
				}
			} else {
				check("reason", ev.Reason, w.reason)
			}
			check("route", ev.Route, w.route)
			check("policy.package", ev.Policy.Package, w.pkg)
			if w.revision != strings.HasPrefix(ev.Policy.Revision, "sha256:") {
				t.Errorf("policy.revision %q; want a sha256: revision: %v", ev.Policy.Revision, w.revision)
			}
			if w.revision {
				check("policy.revision", ev.Policy.Revision, s.App.engine.Current().Revision())
			}
			check("user.sub", ev.User.Sub, w.user)
			check("user.email", ev.User.Email, w.email)
			wantGroups := []string{}
			if w.group != "" {
				wantGroups = []string{w.group}
			}
			if !slices.Equal(ev.User.Groups, wantGroups) {
				t.Errorf("user.groups = %v, want %v", ev.User.Groups, wantGroups)
			}
			wantProvider := ""
			if w.user != "" {
				wantProvider = "corp"
			}
			check("user.provider", ev.User.Provider, wantProvider)
			check("user.auth_method", ev.User.AuthMethod, w.authMethod)
			check("request.method", ev.Request.Method, tc.method)
			check("request.host", ev.Request.Host, tc.host)
			check("request.path", ev.Request.Path, tc.path)
			check("request.remote_addr", ev.Request.RemoteAddr, "127.0.0.1")
			check("request.user_agent", ev.Request.UserAgent, snt.ua)
			check("response.status", ev.Response.Status, w.status)
			d := ev.DurationMS
			if d.Total <= 0 || d.Authn < 0 || d.Policy < 0 || d.Upstream < 0 || d.Upstream > d.Total || d.Policy > d.Total {
				t.Errorf("duration_ms %+v: want total > 0, every phase >= 0 and within total", d)
			}
			// Requests refused before the policy (sign-in) record the
			// revision serving but spend no time in it.
			if evaluated := w.revision && w.decision != "unauthenticated"; (d.Policy > 0) != evaluated {
				t.Errorf("duration_ms.policy = %v; a policy was evaluated: %v", d.Policy, evaluated)
			}
			if (d.Upstream > 0) != w.forwarded {
				t.Errorf("duration_ms.upstream = %v; forwarded: %v", d.Upstream, w.forwarded)
			}
			wantKey := w.user
			if wantKey == "" {
				wantKey = "anonymous"
			}
			check("message key", m.Key, wantKey)
			if !m.EventTime.Equal(ev.Time.Truncate(time.Millisecond)) {
				t.Errorf("message event time %v, want the event's time %v (ms)", m.EventTime, ev.Time)
			}
		})
	}

	// The spool kept the same events on disk: no secrets there either.
	filepath.WalkDir(filepath.Join(s.Dir, "data", "spool"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(p)
		for _, sec := range secrets[:5] {
			if bytes.Contains(b, []byte(sec)) {
				t.Errorf("spool file %s contains %q", p, sec)
			}
		}
		return nil
	})

	// The CLI reads the same events back: deny and the two 404s are the
	// denials.
	code, stdout, stderr := runAuditT(t, "query", "--pulsar", brokerURL, "--topic", topic, "--decision", "deny", "--output", "jsonl")
	if code != exitOK {
		t.Fatalf("audit query: exit %d: %s", code, stderr)
	}
	if got, want := jsonlIDs(t, stdout), []string{byID[sentBy["deny"].id][0].Event.ID,
		byID[sentBy["own endpoint, unknown path"].id][0].Event.ID, byID[sentBy["no route (404)"].id][0].Event.ID}; !slices.Equal(got, want) {
		t.Errorf("audit query --decision deny printed %v, want %v", got, want)
	}
	aeVerify(t, brokerURL, topic, 1, len(msgs))
}

func mustParseURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// aeResult is one request of a load run.
type aeResult struct {
	ID     string // X-Request-Id of the response ("" when none came)
	Status int
	Err    error
	At     time.Time // when the answer (or the error) came
}

// aeLoad sends GET requests to url from several workers until Stop.
type aeLoad struct {
	mu   sync.Mutex
	res  []aeResult
	stop chan struct{}
	wg   sync.WaitGroup
}

func aeStartLoad(client *http.Client, url string, workers int, pause time.Duration) *aeLoad {
	l := &aeLoad{stop: make(chan struct{})}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				r := aeResult{}
				resp, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					r.ID, r.Status = resp.Header.Get("X-Request-Id"), resp.StatusCode
				}
				r.Err, r.At = err, time.Now()
				l.mu.Lock()
				l.res = append(l.res, r)
				l.mu.Unlock()
				select {
				case <-l.stop:
					return
				case <-time.After(pause):
				}
			}
		}()
	}
	return l
}

// Results returns a copy of the results so far.
func (l *aeLoad) Results() []aeResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.res)
}

// Stop ends the load and returns every result.
func (l *aeLoad) Stop() []aeResult {
	close(l.stop)
	l.wg.Wait()
	return l.Results()
}

// waitFor polls cond every 50ms until it holds or d passes.
func aeWaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// aeCount counts results matching pred.
func aeCount(res []aeResult, pred func(aeResult) bool) int {
	n := 0
	for _, r := range res {
		if pred(r) {
			n++
		}
	}
	return n
}

// aeStatusCounts summarises results as "status:count" (and transport
// errors as "err").
func aeStatusCounts(res []aeResult) map[string]int {
	c := map[string]int{}
	for _, r := range res {
		if r.Err != nil {
			c["err"]++
		} else {
			c[fmt.Sprint(r.Status)]++
		}
	}
	return c
}

// aeEventsByRequest counts events per request id and returns the events.
func aeEventsByRequest(msgs []aeMessage) map[string][]*audit.Event {
	m := map[string][]*audit.Event{}
	for i := range msgs {
		m[msgs[i].Event.RequestID] = append(m[msgs[i].Event.RequestID], &msgs[i].Event)
	}
	return m
}

// aeGetStatus is the status of GET url, or 0 when it failed.
func aeGetStatus(url string) int {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// aeGetBody is aeGetStatus with the body.
func aeGetBody(url string) (int, string) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// aeDropped sums portcullis_audit_events_dropped_total by reason.
func aeDropped(t testing.TB, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "portcullis_audit_events_dropped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			reason := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					reason = l.GetValue()
				}
			}
			out[reason] += m.GetCounter().GetValue()
		}
	}
	return out
}

// TestAuditE2EBrokerOutage stops a private broker for more than 10 seconds
// under steady load through the proxy, then starts it again.
//
// durable: every request is answered 200 during the outage, and every
// answered request has exactly one event in the topic (ids compared).
//
// fail-closed (spool.max_bytes 256KiB, so that the outage fills it): once
// the spool cannot take events the proxy answers 503 instead of forwarding;
// after the broker is back it serves 200 again. Every 200 has exactly one
// event; a 503 has one event (decision error) while the spool still had
// room for it, and none once it was full (counted as dropped).
func TestAuditE2EBrokerOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts, stops and restarts a Pulsar broker twice (several minutes)")
	}
	// The shared broker being reachable shows that brokers can run here.
	pulsartest.Require(t)
	const (
		durableTopic = "persistent://public/default/e2e-outage-durable"
		closedTopic  = "persistent://public/default/e2e-outage-fail-closed"
	)
	// Ports of our own, apart from the audit package's outage test.
	broker := pulsartest.StartPrivateBroker(t, pulsartest.PrivateBrokerOptions{
		BrokerPort: 26761, WebPort: 28181, BookiePort: 23281,
		Topics: []string{durableTopic, closedTopic},
	})
	up := newAEUpstream(t)
	idp := idtest.NewProvider(t)
	policies := aeWritePolicies(t)
	const outage = 12 * time.Second

	run := func(t *testing.T, topic, mode, extra string) (*stack, func() []aeResult) {
		if err := pulsartest.Healthy(context.Background(), broker.AdminURL); err != nil {
			if err := broker.Start(); err != nil {
				t.Fatal(err)
			}
		}
		// A restarted standalone broker reports healthy a while before its
		// bookie takes writes ("Not enough non-faulty bookies"); the
		// steady state before the outage needs a broker that stores.
		aeWaitWritable(t, broker.URL, "persistent://public/default/e2e-outage-probe")
		s := newStack(t, aeConfig(idp, policies, aePulsarAudit(broker.URL, topic, mode, extra),
			aeOpenRoute("load", "load.example.test", up.URL)))
		s.Start(appOptions{Logger: aeLogger(t, s)})
		// Load starts once events flow to the broker.
		aeWaitFor(t, 2*time.Minute, "the Pulsar sink to be live", func() bool { return s.App.pipeline.Status().Sink.Live })
		load := aeStartLoad(s.Client(), s.URL("load.example.test", "/tick"), 4, 10*time.Millisecond)
		return s, load.Stop
	}

	// checkTopic reads the topic and checks exactly one event per answered
	// 200, and no event without a response.
	checkTopic := func(t *testing.T, s *stack, topic string, res []aeResult) map[string][]*audit.Event {
		st := aeWaitDelivered(t, s.App.pipeline)
		s.Stop()
		msgs := aeReadTopic(t, broker.URL, topic)
		if uint64(len(msgs)) != st.Seq {
			t.Errorf("topic holds %d messages, the proxy recorded %d events", len(msgs), st.Seq)
		}
		aeCheckChains(t, msgs)
		events := aeEventsByRequest(msgs)
		answered := map[string]bool{}
		for _, r := range res {
			if r.Err != nil {
				continue
			}
			if r.ID == "" || answered[r.ID] {
				t.Fatalf("response without a unique X-Request-Id: %+v", r)
			}
			answered[r.ID] = true
			if r.Status == 200 && len(events[r.ID]) != 1 {
				t.Errorf("request %s answered 200 has %d events, want 1", r.ID, len(events[r.ID]))
			}
		}
		for id, evs := range events {
			if !answered[id] {
				t.Errorf("event %s for request %s that got no response", evs[0].ID, id)
			}
			if len(evs) > 1 {
				t.Errorf("request %s has %d events", id, len(evs))
			}
		}
		aeVerify(t, broker.URL, topic, 1, len(msgs))
		return events
	}

	t.Run("durable", func(t *testing.T) {
		s, stopLoad := run(t, durableTopic, "durable", "")
		var spooling, readyDuring bool
		time.Sleep(3 * time.Second)
		if err := broker.Stop(); err != nil {
			t.Fatal(err)
		}
		down := time.Now()
		for time.Since(down) < outage {
			if st := s.App.pipeline.Status(); st.Spooling && !st.Sink.Live {
				spooling = true
				// durable: still ready, the spool takes the events, and
				// /readyz says so.
				code, body := aeGetBody("http://" + s.Admin + "/readyz")
				readyDuring = code == 200 && strings.Contains(body, `"audit":"ok: spooling`)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err := broker.Start(); err != nil {
			t.Fatal(err)
		}
		back := time.Now()
		time.Sleep(3 * time.Second)
		res := stopLoad()

		during := aeCount(res, func(r aeResult) bool { return r.At.After(down) && r.At.Before(back) })
		t.Logf("durable: %d requests (%v), %d answered while the broker was down (%v, counting its restart)",
			len(res), aeStatusCounts(res), during, back.Sub(down).Round(time.Second))
		if n := aeCount(res, func(r aeResult) bool { return r.Err != nil || r.Status != 200 }); n > 0 {
			t.Errorf("%d requests were not answered 200: %v", n, aeStatusCounts(res))
		}
		if during == 0 {
			t.Error("no request was answered while the broker was down")
		}
		if !spooling {
			t.Error("the pipeline never reported spooling during the outage")
		}
		if !readyDuring {
			t.Error(`/readyz was not 200 with "audit":"ok: spooling ..." while durable mode spooled`)
		}
		events := checkTopic(t, s, durableTopic, res)
		t.Logf("durable: %d answered requests, %d in the topic, each exactly once", len(res), len(events))
	})

	t.Run("fail-closed", func(t *testing.T) {
		s, stopLoad := run(t, closedTopic, "fail-closed", "  spool:\n    max_bytes: 256KiB\n")
		// Watch Accepting: when it turns false and true again, and what
		// /readyz says meanwhile.
		var (
			mu                     sync.Mutex
			refusedAt, acceptingAt time.Time
			readyDuring            int
		)
		watch := func() (time.Time, time.Time) { mu.Lock(); defer mu.Unlock(); return refusedAt, acceptingAt }
		stopWatch := make(chan struct{})
		watchDone := make(chan struct{})
		go func() {
			defer close(watchDone)
			for {
				select {
				case <-stopWatch:
					return
				case <-time.After(20 * time.Millisecond):
				}
				ok := s.App.pipeline.Accepting()
				now := time.Now()
				mu.Lock()
				switch {
				case !ok && refusedAt.IsZero():
					refusedAt = now
					mu.Unlock()
					code := aeGetStatus("http://" + s.Admin + "/readyz")
					mu.Lock()
					readyDuring = code
				case ok && !refusedAt.IsZero() && acceptingAt.IsZero():
					acceptingAt = now
				}
				mu.Unlock()
			}
		}()
		time.Sleep(3 * time.Second)
		stopAt := time.Now()
		if err := broker.Stop(); err != nil {
			t.Fatal(err)
		}
		aeWaitFor(t, 2*time.Minute, "the spool to refuse events", func() bool { r, _ := watch(); return !r.IsZero() })
		if d := outage - time.Since(stopAt); d > 0 {
			time.Sleep(d)
		}
		startAt := time.Now()
		if err := broker.Start(); err != nil {
			t.Fatal(err)
		}
		aeWaitFor(t, 2*time.Minute, "the spool to accept events again", func() bool {
			_, a := watch()
			return !a.IsZero() && s.App.pipeline.Status().Sink.Live
		})
		time.Sleep(3 * time.Second)
		res := stopLoad()
		close(stopWatch)
		<-watchDone
		refusedAt, acceptingAt = watch()

		t.Logf("fail-closed: %d requests (%v); broker stopping at +0s, spool refused events from +%v, broker starting at +%v, spool accepting again at +%v",
			len(res), aeStatusCounts(res), refusedAt.Sub(stopAt).Round(100*time.Millisecond),
			startAt.Sub(stopAt).Round(100*time.Millisecond), acceptingAt.Sub(stopAt).Round(100*time.Millisecond))
		if n := aeCount(res, func(r aeResult) bool { return r.Err != nil }); n > 0 {
			t.Errorf("%d requests failed without an answer", n)
		}
		if n := aeCount(res, func(r aeResult) bool { return r.At.Before(stopAt) && r.Status != 200 }); n > 0 {
			t.Errorf("%d requests before the outage were not answered 200", n)
		}
		refused := aeCount(res, func(r aeResult) bool { return r.Status == 503 })
		if refused == 0 {
			t.Fatal("fail-closed mode never answered 503 while the spool could not take events")
		}
		// The watcher looks every 20ms: a 503 answered before it saw the
		// spool refuse would have been refused while the spool accepted.
		if n := aeCount(res, func(r aeResult) bool { return r.Status == 503 && r.At.Before(refusedAt.Add(-100*time.Millisecond)) }); n > 0 {
			t.Errorf("%d requests answered 503 before the spool stopped accepting events", n)
		}
		if n := aeCount(res, func(r aeResult) bool { return r.Status == 200 && r.At.After(acceptingAt) }); n == 0 {
			t.Error("no request answered 200 after the spool accepted events again")
		}
		if n := aeCount(res, func(r aeResult) bool { return r.Status != 200 && r.Status != 503 && r.Err == nil }); n > 0 {
			t.Errorf("%d answers neither 200 nor 503: %v", n, aeStatusCounts(res))
		}
		if readyDuring != http.StatusServiceUnavailable {
			t.Errorf("/readyz answered %d while the spool refused events, want 503", readyDuring)
		}
		dropped := aeDropped(t, s.App.reg)

		events := checkTopic(t, s, closedTopic, res)
		var recorded503, unrecorded503, forwarded503 int
		for _, r := range res {
			if r.Status != 503 {
				continue
			}
			if up.Saw(r.ID) {
				forwarded503++
			}
			switch evs := events[r.ID]; len(evs) {
			case 0:
				unrecorded503++
			case 1:
				recorded503++
				if ev := evs[0]; ev.Decision != audit.DecisionError || ev.Response.Status != 503 || !strings.Contains(ev.Reason, "audit unavailable") {
					t.Errorf("event of a 503: decision %q status %d reason %q", ev.Decision, ev.Response.Status, ev.Reason)
				}
			}
		}
		var droppedTotal float64
		for _, v := range dropped {
			droppedTotal += v
		}
		t.Logf("fail-closed: %d answered 503: %d recorded (decision error), %d not recorded (spool full); %d of them had reached the upstream; dropped metric %v",
			refused, recorded503, unrecorded503, forwarded503, dropped)
		if droppedTotal < float64(unrecorded503) {
			t.Errorf("dropped metric %v counts fewer than the %d unrecorded 503s", dropped, unrecorded503)
		}
	})
}

// aeWaitWritable waits until the broker acknowledges a message on topic.
func aeWaitWritable(t testing.TB, brokerURL, topic string) {
	t.Helper()
	client, err := pulsar.NewClient(pulsar.ClientOptions{URL: brokerURL, MetricsRegisterer: prometheus.NewRegistry(),
		OperationTimeout: 10 * time.Second,
		Logger:           pulsarlog.NewLoggerWithSlog(slog.New(slog.DiscardHandler))})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	start := time.Now()
	var lastErr error
	for time.Since(start) < 3*time.Minute {
		p, err := client.CreateProducer(pulsar.ProducerOptions{Topic: topic, SendTimeout: 10 * time.Second})
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			_, err = p.Send(ctx, &pulsar.ProducerMessage{Payload: []byte("probe")})
			cancel()
			p.Close()
			if err == nil {
				t.Logf("broker stores messages (%v after asking)", time.Since(start).Round(100*time.Millisecond))
				return
			}
		}
		lastErr = err
		time.Sleep(time.Second)
	}
	t.Fatalf("the broker at %s does not store messages: %v", brokerURL, lastErr)
}

// aeLogger logs at info level to s.Logs, and warnings and errors to the
// test log too.
func aeLogger(t *testing.T, s *stack) *slog.Logger {
	return slog.New(slog.NewJSONHandler(io.MultiWriter(s.Logs, aeWarnings{t}), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// aeWarnings passes warnings and errors of the app to the test log (load
// tests would drown it in info lines).
type aeWarnings struct{ t *testing.T }

func (w aeWarnings) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(`"level":"WARN"`)) || bytes.Contains(p, []byte(`"level":"ERROR"`)) {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// aeBuildBinary builds the portcullis command into a temporary directory.
func aeBuildBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "portcullis")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// aeProc is a running `portcullis serve`.
type aeProc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once it exited; cmd.ProcessState is then set
}

// aeServe runs `portcullis serve --config` as a child process, logging to
// logPath, and waits until /readyz answers 200.
func aeServe(t testing.TB, bin string, s *stack, logPath string) *aeProc {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", s.CfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(30 * time.Second)
	for aeGetStatus("http://"+s.Admin+"/readyz") != 200 {
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("portcullis serve exited at start:\n%s", aeTail(b))
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("portcullis serve not ready within 30s:\n%s", aeTail(b))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &aeProc{cmd: cmd, exited: exited}
}

// aeTail is the last 4KiB of a log.
func aeTail(b []byte) string {
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// TestAuditE2EProxyCrash runs the built binary with a Pulsar sink, kills
// it with SIGKILL under load, restarts it on the same data directory and
// keeps the load going: every answered request must have exactly one event
// in the topic, and the hash chain must verify across the restart. Events
// of requests that were recorded but not answered before the kill are
// allowed (they were in flight) and reported.
func TestAuditE2EProxyCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and kills it under load")
	}
	brokerURL, adminURL := pulsartest.Require(t)
	topic := pulsartest.NewTopic(t, adminURL)
	bin := aeBuildBinary(t)
	up := newAEUpstream(t)
	idp := idtest.NewProvider(t)
	s := newStack(t, aeConfig(idp, aeWritePolicies(t), aePulsarAudit(brokerURL, topic, "durable", ""),
		aeOpenRoute("load", "load.example.test", up.URL)))

	first := aeServe(t, bin, s, filepath.Join(s.Dir, "serve-1.log"))
	instance, err := os.ReadFile(filepath.Join(s.Dir, "data", "instance"))
	if err != nil {
		t.Fatal(err)
	}
	client := s.Client()
	client.Timeout = 10 * time.Second
	load := aeStartLoad(client, s.URL("load.example.test", "/tick"), 4, 5*time.Millisecond)
	answered := func() int {
		return aeCount(load.Results(), func(r aeResult) bool { return r.Err == nil })
	}
	aeWaitFor(t, time.Minute, "500 answered requests", func() bool { return answered() >= 500 })
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	atKill := answered()
	<-first.exited
	spoolAtKill := aeSpoolBytes(filepath.Join(s.Dir, "data", "spool"))

	second := aeServe(t, bin, s, filepath.Join(s.Dir, "serve-2.log"))
	restartedAt := time.Now()
	aeWaitFor(t, time.Minute, "500 more answered requests", func() bool { return answered() >= atKill+500 })
	res := load.Stop()

	// A graceful stop flushes the spool to the broker.
	if err := second.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-second.exited:
	case <-time.After(time.Minute):
		t.Fatal("the second process did not exit within a minute of SIGTERM")
	}
	log2, _ := os.ReadFile(filepath.Join(s.Dir, "serve-2.log"))
	if code := second.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("second process exited with %d:\n%s", code, aeTail(log2))
	}
	if kept, _ := os.ReadFile(filepath.Join(s.Dir, "data", "instance")); !bytes.Equal(kept, instance) {
		t.Errorf("instance changed across the restart: %q -> %q", instance, kept)
	}

	msgs := aeReadTopic(t, brokerURL, topic)
	perInstance := aeCheckChains(t, msgs)
	if len(perInstance) != 1 || perInstance[strings.TrimSpace(string(instance))] != len(msgs) {
		t.Fatalf("events per instance %v, want all %d of %s", perInstance, len(msgs), instance)
	}
	events := aeEventsByRequest(msgs)
	ok := map[string]bool{}
	failed := 0
	for _, r := range res {
		if r.Err != nil {
			failed++
			continue
		}
		ok[r.ID] = true
		if n := len(events[r.ID]); n != 1 {
			t.Errorf("request %s (status %d, at %v) has %d events, want 1", r.ID, r.Status, r.At.Sub(killedAt), n)
		}
	}
	unanswered := 0
	for id, evs := range events {
		if len(evs) > 1 {
			t.Errorf("request %s has %d events (seq %d and %d)", id, len(evs), evs[0].Seq, evs[1].Seq)
		}
		if !ok[id] {
			unanswered++
			t.Logf("event seq %d for request %s that got no answer (in flight at the kill)", evs[0].Seq, id)
		}
	}
	// Only requests in flight at the kill can be recorded and unanswered:
	// at most one per load worker.
	if unanswered > 4 {
		t.Errorf("%d events of unanswered requests; at most 4 were in flight", unanswered)
	}
	t.Logf("crash: %d answered before the kill, %d in all (%v); %d failed while the proxy was down (%v until ready again); spool held %d bytes at the kill; %d events in the topic, %d of unanswered requests; restart logged: %s",
		atKill, len(ok), aeStatusCounts(res), failed, restartedAt.Sub(killedAt).Round(10*time.Millisecond), spoolAtKill, len(msgs), unanswered, aeRecoveryLine(log2))
	aeVerify(t, brokerURL, topic, 1, len(msgs))
}

// aeRecoveryLine is what the restarted process logged about audit.
func aeRecoveryLine(log []byte) string {
	var lines []string
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, `"msg":"audit`) && len(lines) < 4 {
			lines = append(lines, strings.TrimSpace(line))
		}
	}
	if len(lines) == 0 {
		return "(nothing logged)"
	}
	return strings.Join(lines, " | ")
}

// aeSpoolBytes is the size of the spool's segment files.
func aeSpoolBytes(dir string) int64 {
	var n int64
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	for _, p := range segs {
		if fi, err := os.Stat(p); err == nil {
			n += fi.Size()
		}
	}
	return n
}
