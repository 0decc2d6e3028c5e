package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/internal/pulsartest"
)

var (
	auditTestUsers = []audit.User{
		{Sub: "alice", Email: "alice@example.com", Groups: []string{"engineering"}, Provider: "corp", AuthMethod: "session"},
		{Sub: "bob", Email: "bob@example.com", Groups: []string{"engineering", "admins"}, Provider: "corp", AuthMethod: "bearer"},
		{Groups: []string{}},
		{Sub: "carol", Email: "Carol@Example.org", Groups: []string{}, Provider: "corp", AuthMethod: "session"},
	}
	auditTestRoutes    = []string{"admin", "app", "", "reports", "app"}
	auditTestDecisions = []string{audit.DecisionAllow, audit.DecisionDeny, audit.DecisionUnauthenticated, audit.DecisionAllow, audit.DecisionError, audit.DecisionAllow}
)

// chainedEvents returns seq 1..n of instance, one every step from start,
// with a valid hash chain.
func chainedEvents(t testing.TB, instance string, n int, start time.Time, step time.Duration) []*audit.Event {
	t.Helper()
	evs := make([]*audit.Event, n)
	prev := ""
	for i := range evs {
		seq := i + 1
		ev := &audit.Event{
			Schema: audit.SchemaVersion, ID: fmt.Sprintf("%s-%08d", instance, seq),
			Time:     start.Add(time.Duration(i) * step).UTC().Truncate(time.Microsecond),
			Instance: instance, Seq: uint64(seq), PrevHash: prev,
			RequestID: fmt.Sprintf("req-%d", seq),
			Decision:  auditTestDecisions[seq%len(auditTestDecisions)],
			Reason:    "policy said so",
			Route:     auditTestRoutes[seq%len(auditTestRoutes)],
			Policy:    audit.PolicyRef{Package: "portcullis.routes.test", Revision: "sha256:00"},
			User:      auditTestUsers[seq%len(auditTestUsers)],
			Request:   audit.Request{Method: "GET", Host: "app.example.com", Path: fmt.Sprintf("/items/%d", seq), RemoteAddr: "203.0.113.7", UserAgent: "test"},
			Response:  audit.Response{Status: 200},
		}
		h, err := audit.ComputeHash(ev)
		if err != nil {
			t.Fatal(err)
		}
		ev.Hash, prev = h, h
		evs[i] = ev
	}
	return evs
}

func writeJSONL(t testing.TB, path string, evs []*audit.Event) {
	t.Helper()
	var buf bytes.Buffer
	for _, ev := range evs {
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func runAuditT(t testing.TB, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code = runAudit(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

// jsonlIDs parses jsonl output into event ids.
func jsonlIDs(t testing.TB, out string) []string {
	t.Helper()
	var ids []string
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev audit.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("output line %q: %v", sc.Text(), err)
		}
		ids = append(ids, ev.ID)
	}
	return ids
}

// expectIDs is what query should print: matching events in time order,
// the first limit of them.
func expectIDs(evs []*audit.Event, f audit.Filter, limit int) []string {
	var m []*audit.Event
	for _, ev := range evs {
		if f.Match(ev) {
			m = append(m, ev)
		}
	}
	slices.SortStableFunc(m, func(a, b *audit.Event) int { return a.Time.Compare(b.Time) })
	if limit > 0 && len(m) > limit {
		m = m[:limit]
	}
	ids := make([]string, len(m))
	for i, ev := range m {
		ids[i] = ev.ID
	}
	return ids
}

func TestAuditUsage(t *testing.T) {
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	writeJSONL(t, file, nil)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no command", nil, exitUsage, "Usage"},
		{"unknown command", []string{"grep"}, exitUsage, "unknown command"},
		{"help", []string{"--help"}, exitOK, ""},
		{"query help", []string{"query", "--help"}, exitOK, "--decision"},
		{"verify help", []string{"verify", "-h"}, exitOK, "--pulsar"},
		{"no source", []string{"query"}, exitUsage, "a source is required"},
		{"two sources", []string{"query", "--file", file, "--pulsar", "pulsar://127.0.0.1:1"}, exitUsage, "choose one source"},
		{"topic without pulsar", []string{"query", "--file", file, "--topic", "t"}, exitUsage, "go with --pulsar"},
		{"bad decision", []string{"query", "--file", file, "--decision", "maybe"}, exitUsage, "--decision"},
		{"bad output", []string{"query", "--file", file, "--output", "xml"}, exitUsage, "--output"},
		{"bad since", []string{"query", "--file", file, "--since", "yesterday"}, exitUsage, "--since"},
		{"negative since", []string{"query", "--file", file, "--since", "-2h"}, exitUsage, "--since"},
		{"since after until", []string{"query", "--file", file, "--since", "1h", "--until", "2h"}, exitUsage, "before --until"},
		{"negative limit", []string{"query", "--file", file, "--limit", "-1"}, exitUsage, "--limit"},
		{"unknown flag", []string{"tail", "--file", file, "--follow"}, exitUsage, "flag provided but not defined"},
		{"extra argument", []string{"verify", "--file", file, "now"}, exitUsage, "unexpected argument"},
		{"verify has no filters", []string{"verify", "--file", file, "--user", "bob"}, exitUsage, "not defined"},
		{"bad pulsar url", []string{"query", "--pulsar", "http://x"}, exitFail, "scheme"},
		{"unreadable config", []string{"query", "--config", "/nonexistent/portcullis.yaml"}, exitFail, "portcullis audit query"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runAuditT(t, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			if !strings.Contains(stdout+stderr, tt.wantErr) {
				t.Errorf("output %q, want it to mention %q", stdout+stderr, tt.wantErr)
			}
			if code == exitFail && strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
				t.Errorf("error is not one line: %q", stderr)
			}
		})
	}
}

// query and verify of a --file path with no audit file there fail with one
// line naming the path (a mistyped path is not an empty trail), and so
// does a directory, for every audit command.
func TestAuditFileNotThere(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.jsonl")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"query", "--file", missing}, missing},
		{[]string{"verify", "--file", missing}, missing},
		{[]string{"query", "--file", dir}, dir + " is a directory"},
		{[]string{"verify", "--file", dir}, dir + " is a directory"},
		{[]string{"tail", "--file", dir}, dir + " is a directory"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runAuditT(t, tt.args...)
			if code != exitFail {
				t.Fatalf("exit %d, want %d (stdout %q, stderr %q)", code, exitFail, stdout, stderr)
			}
			if !strings.Contains(stderr, tt.want) || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
				t.Errorf("stderr %q, want one line containing %q", stderr, tt.want)
			}
			if strings.Contains(stdout, "ok") {
				t.Errorf("stdout %q reports success", stdout)
			}
		})
	}
}

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
	}{
		{"2h", now.Add(-2 * time.Hour)},
		{"90m", now.Add(-90 * time.Minute)},
		{"0s", now},
		{"2026-11-26T15:04:05Z", time.Date(2026, 11, 26, 15, 4, 5, 0, time.UTC)},
		{"2026-11-26T15:04:05.123456+01:00", time.Date(2026, 11, 26, 14, 4, 5, 123456000, time.UTC)},
		{"2026-11-25", time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseWhen(tt.in, now)
			if err != nil || !got.Equal(tt.want) {
				t.Errorf("parseWhen(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "-1h", "yesterday", "26/11/2026"} {
		if _, err := parseWhen(bad, now); err == nil {
			t.Errorf("parseWhen(%q) succeeded, want an error", bad)
		}
	}
}

// TestAuditFile runs query and verify over the file sink's format, with
// every output format.
func TestAuditFile(t *testing.T) {
	dir := t.TempDir()
	start := time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)
	evs := chainedEvents(t, "portcullis-f1", 200, start, time.Second)
	file := filepath.Join(dir, "audit.jsonl")
	writeJSONL(t, file, evs)

	t.Run("query filters", func(t *testing.T) {
		tests := []struct {
			name  string
			args  []string
			f     audit.Filter
			limit int
		}{
			{"all", nil, audit.Filter{}, 0},
			{"user by email, any case", []string{"--user", "carol@example.org"}, audit.Filter{User: "carol@example.org"}, 0},
			{"user by sub", []string{"--user", "bob"}, audit.Filter{User: "bob"}, 0},
			{"route and decision", []string{"--route", "app", "--decision", "deny"}, audit.Filter{Route: "app", Decision: "deny"}, 0},
			{"requests no route served", []string{"--route", ""}, audit.Filter{RouteSet: true}, 0},
			{"time range", []string{"--since", "2026-11-26T17:01:00Z", "--until", "2026-11-26T17:02:00Z"},
				audit.Filter{Since: start.Add(time.Minute), Until: start.Add(2 * time.Minute)}, 0},
			{"limit", []string{"--decision", "allow", "--limit", "7"}, audit.Filter{Decision: "allow"}, 7},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, stdout, stderr := runAuditT(t, append([]string{"query", "--file", file, "--output", "jsonl"}, tt.args...)...)
				if code != exitOK {
					t.Fatalf("exit %d: %s", code, stderr)
				}
				got, want := jsonlIDs(t, stdout), expectIDs(evs, tt.f, tt.limit)
				if !slices.Equal(got, want) {
					t.Errorf("query printed %d events %v, want %d %v", len(got), head(got), len(want), head(want))
				}
			})
		}
	})

	t.Run("json array", func(t *testing.T) {
		code, stdout, stderr := runAuditT(t, "query", "--file", file, "--output", "json", "--user", "alice")
		if code != exitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var got []audit.Event
		if err := json.Unmarshal([]byte(stdout), &got); err != nil {
			t.Fatalf("output is not a JSON array: %v\n%s", err, stdout)
		}
		if want := expectIDs(evs, audit.Filter{User: "alice"}, 0); len(got) != len(want) || got[0].ID != want[0] {
			t.Errorf("got %d events, want %d", len(got), len(want))
		}
		_, stdout, _ = runAuditT(t, "query", "--file", file, "--output", "json", "--user", "nobody")
		if strings.TrimSpace(stdout) != "[]" {
			t.Errorf("no match printed %q, want []", stdout)
		}
	})

	t.Run("table", func(t *testing.T) {
		code, stdout, stderr := runAuditT(t, "query", "--file", file, "--limit", "3")
		if code != exitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		if len(lines) != 4 {
			t.Fatalf("table has %d lines, want header + 3:\n%s", len(lines), stdout)
		}
		for _, col := range []string{"TIME", "DECISION", "STATUS", "USER", "REQUEST", "ROUTE", "REASON"} {
			if !strings.Contains(lines[0], col) {
				t.Errorf("header %q lacks %s", lines[0], col)
			}
		}
		// seq 1: bob, route app, deny.
		for _, cell := range []string{"2026-11-26T17:00:00.000Z", "deny", "bob@example.com", "GET app.example.com/items/1", "app", "policy said so"} {
			if !strings.Contains(lines[1], cell) {
				t.Errorf("row %q lacks %q", lines[1], cell)
			}
		}
	})

	t.Run("verify intact", func(t *testing.T) {
		code, stdout, stderr := runAuditT(t, "verify", "--file", file)
		if code != exitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		if !strings.Contains(stdout, "ok: 1 instances, 200 events") {
			t.Errorf("summary %q", stdout)
		}
	})

	broken := []struct {
		name   string
		change func([]*audit.Event) []*audit.Event
		want   string
	}{
		{"removed", func(e []*audit.Event) []*audit.Event { return slices.Delete(slices.Clone(e), 99, 100) },
			"instance portcullis-f1: missing link at seq 101 (event portcullis-f1-00000101)"},
		{"altered", func(e []*audit.Event) []*audit.Event {
			c := slices.Clone(e)
			ev := *c[41]
			ev.Decision = audit.DecisionAllow
			ev.Reason = "nothing to see"
			c[41] = &ev
			return c
		}, "instance portcullis-f1: altered link at seq 42 (event portcullis-f1-00000042)"},
		{"reordered", func(e []*audit.Event) []*audit.Event {
			c := slices.Clone(e)
			c[10], c[11] = c[11], c[10]
			return c
		}, "instance portcullis-f1: reordered link at seq 11 (event portcullis-f1-00000011): seq 11 comes after seq 12 (out of order)"},
	}
	for _, tt := range broken {
		t.Run("verify "+tt.name, func(t *testing.T) {
			f := filepath.Join(dir, tt.name+".jsonl")
			writeJSONL(t, f, tt.change(evs))
			code, _, stderr := runAuditT(t, "verify", "--file", f)
			if code != exitFail {
				t.Fatalf("exit %d, want %d", code, exitFail)
			}
			if !strings.Contains(stderr, tt.want) || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
				t.Errorf("stderr %q, want one line containing %q", stderr, tt.want)
			}
		})
	}
}

func head(s []string) []string {
	if len(s) > 5 {
		return s[:5]
	}
	return s
}

// TestAuditPulsar publishes 100,000 chained events of two instances to a
// fresh topic and checks query filters and verify against it, then verify
// against topics with a removed and an altered event.
func TestAuditPulsar(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 100,000 events")
	}
	brokerURL, adminURL := pulsartest.Require(t)
	topic := pulsartest.NewTopic(t, adminURL)
	// Event times end a little before publication (seek by publish time).
	start := time.Now().Add(-2 * time.Minute).UTC().Truncate(time.Second)
	a := chainedEvents(t, "portcullis-pa", 60000, start, time.Millisecond)
	b := chainedEvents(t, "portcullis-pb", 40000, start.Add(500*time.Microsecond), 1500*time.Microsecond)
	publishEvents(t, brokerURL, topic, a)
	publishEvents(t, brokerURL, topic, b)
	all := append(slices.Clone(a), b...)

	src := []string{"--pulsar", brokerURL, "--topic", topic}
	rfc := func(t time.Time) string { return t.Format(time.RFC3339Nano) }
	tests := []struct {
		name  string
		args  []string
		f     audit.Filter
		limit int
	}{
		{"time range", []string{"--since", rfc(a[10000].Time), "--until", rfc(a[30000].Time)},
			audit.Filter{Since: a[10000].Time, Until: a[30000].Time}, 0},
		{"user by email", []string{"--user", "alice@example.com"}, audit.Filter{User: "alice@example.com"}, 0},
		{"route and decision in a range", []string{"--route", "reports", "--decision", "error", "--since", rfc(b[5000].Time)},
			audit.Filter{Route: "reports", Decision: "error", Since: b[5000].Time}, 0},
		{"user with limit", []string{"--user", "bob", "--decision", "deny", "--limit", "250"},
			audit.Filter{User: "bob", Decision: "deny"}, 250},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append(append([]string{"query", "--output", "jsonl"}, src...), tt.args...)
			code, stdout, stderr := runAuditT(t, args...)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			got, want := jsonlIDs(t, stdout), expectIDs(all, tt.f, tt.limit)
			if len(want) == 0 {
				t.Fatal("test expects no events; pick another filter")
			}
			if !slices.Equal(got, want) {
				t.Errorf("query printed %d events %v, want %d %v", len(got), head(got), len(want), head(want))
			}
		})
	}

	t.Run("verify intact", func(t *testing.T) {
		code, stdout, stderr := runAuditT(t, append([]string{"verify"}, src...)...)
		if code != exitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		if !strings.Contains(stdout, "ok: 2 instances, 100000 events") {
			t.Errorf("summary %q", stdout)
		}
	})

	// A topic cannot lose a message, so the broken chains go to fresh topics.
	broken := []struct {
		name   string
		change func([]*audit.Event) []*audit.Event
		want   string
	}{
		{"removed", func(e []*audit.Event) []*audit.Event { return slices.Delete(slices.Clone(e), 1233, 1234) },
			"instance portcullis-pa: missing link at seq 1235 (event portcullis-pa-00001235)"},
		{"altered", func(e []*audit.Event) []*audit.Event {
			c := slices.Clone(e)
			ev := *c[776]
			ev.User = audit.User{Sub: "mallory", Groups: []string{}}
			c[776] = &ev
			return c
		}, "instance portcullis-pa: altered link at seq 777 (event portcullis-pa-00000777)"},
	}
	for _, tt := range broken {
		t.Run("verify "+tt.name, func(t *testing.T) {
			topic := pulsartest.NewTopic(t, adminURL)
			publishEvents(t, brokerURL, topic, tt.change(a[:2000]))
			code, _, stderr := runAuditT(t, "verify", "--pulsar", brokerURL, "--topic", topic)
			if code != exitFail {
				t.Fatalf("exit %d, want %d", code, exitFail)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tt.want)
			}
		})
	}
}

// publishEvents publishes evs through a PulsarSink of their instance.
func publishEvents(t testing.TB, brokerURL, topic string, evs []*audit.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := audit.NewPulsarSink(ctx, audit.PulsarConfig{URL: brokerURL, Topic: topic},
		audit.PulsarOptions{Instance: evs[0].Instance, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < len(evs); i += 10000 {
		if err := s.Publish(ctx, evs[i:min(i+10000, len(evs))]); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAuditTail checks that tail prints events recorded after it started
// (and not older ones), and stops after --limit events.
func TestAuditTail(t *testing.T) {
	type source struct {
		name    string
		args    func(t *testing.T) []string
		publish func(t *testing.T, evs []*audit.Event)
	}
	var file, brokerURL, topic string
	sources := []source{
		{"file", func(t *testing.T) []string {
			file = filepath.Join(t.TempDir(), "audit.jsonl")
			writeJSONL(t, file, nil)
			return []string{"--file", file}
		}, func(t *testing.T, evs []*audit.Event) {
			old, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			writeJSONL(t, file+".new", evs)
			add, _ := os.ReadFile(file + ".new")
			if err := os.WriteFile(file, append(old, add...), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"pulsar", func(t *testing.T) []string {
			var adminURL string
			brokerURL, adminURL = pulsartest.Require(t)
			topic = pulsartest.NewTopic(t, adminURL)
			return []string{"--pulsar", brokerURL, "--topic", topic}
		}, func(t *testing.T, evs []*audit.Event) { publishEvents(t, brokerURL, topic, evs) }},
	}
	for _, src := range sources {
		t.Run(src.name, func(t *testing.T) {
			args := src.args(t)
			evs := chainedEvents(t, "portcullis-t1", 6, time.Now().Add(-time.Hour), time.Millisecond)
			src.publish(t, evs[:2]) // old: before tail starts
			type result struct {
				code           int
				stdout, stderr string
			}
			done := make(chan result, 1)
			go func() {
				code, stdout, stderr := runAuditT(t, append(append([]string{"tail", "--output", "jsonl", "--limit", "3"}, args...), "--user", "alice")...)
				done <- result{code, stdout, stderr}
			}()
			time.Sleep(time.Second)
			// New events: alice is seq 4 and 8 (seq%4 == 0); all are "now".
			fresh := chainedEvents(t, "portcullis-t1", 12, time.Now(), time.Millisecond)
			src.publish(t, fresh)
			select {
			case r := <-done:
				if r.code != exitOK {
					t.Fatalf("exit %d: %s", r.code, r.stderr)
				}
				got := jsonlIDs(t, r.stdout)
				want := []string{"portcullis-t1-00000004", "portcullis-t1-00000008", "portcullis-t1-00000012"}
				if !slices.Equal(got, want) {
					t.Errorf("tail printed %v, want %v", got, want)
				}
			case <-time.After(time.Minute):
				t.Fatal("tail did not stop after --limit 3 events")
			}
		})
	}
}

// TestAuditVerifyTimeWindow: an event's time is its request's start and its
// seq the order of recording, so near a window's edge an event outside the
// window in time can sit between two inside it in the chain. Verifying the
// window must not call that a missing link; a link removed inside the
// window still fails.
func TestAuditVerifyTimeWindow(t *testing.T) {
	start := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	// Even seqs are slow requests: they started 40ms before their odd
	// predecessor, whose decision was recorded first.
	evs := chainedEvents(t, "portcullis-win", 60, start, 100*time.Millisecond)
	prev := ""
	for i, ev := range evs {
		if ev.Seq%2 == 0 {
			ev.Time = evs[i-1].Time.Add(-40 * time.Millisecond)
		}
		ev.PrevHash = prev
		h, err := audit.ComputeHash(ev)
		if err != nil {
			t.Fatal(err)
		}
		ev.Hash, prev = h, h
	}
	dir := t.TempDir()
	intact := filepath.Join(dir, "intact.jsonl")
	writeJSONL(t, intact, evs)
	// seq 11 is at 1.0s, seq 12 at 0.96s: a window from 0.98s holds 11 and
	// 13 but not 12, which lies between them in the chain.
	since := evs[10].Time.Add(-20 * time.Millisecond).Format(time.RFC3339Nano)
	until := evs[40].Time.Add(20 * time.Millisecond).Format(time.RFC3339Nano)
	if code, out, errOut := runAuditT(t, "verify", "--file", intact, "--since", since, "--until", until); code != exitOK {
		t.Fatalf("verify of an intact window: exit %d\n%s%s", code, out, errOut)
	}

	cut := filepath.Join(dir, "cut.jsonl")
	writeJSONL(t, cut, append(append([]*audit.Event{}, evs[:20]...), evs[21:]...)) // seq 21 removed
	code, _, errOut := runAuditT(t, "verify", "--file", cut, "--since", since, "--until", until)
	if code != exitFail || !strings.Contains(errOut, "seq 22") {
		t.Errorf("verify of a window missing seq 21: exit %d %q, want 1 naming the link at seq 22", code, errOut)
	}
}

// TestAuditForeignRecordsAreSkippedAndNamed: a record that is not an audit
// event (a stray line, JSON that is no event) is named and skipped by
// query, so that one cannot hide the rest of the trail; verify fails on it.
func TestAuditForeignRecordsAreSkippedAndNamed(t *testing.T) {
	evs := chainedEvents(t, "portcullis-fgn", 6, time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC), time.Second)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	writeJSONL(t, path, evs)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	tampered := strings.Join(lines[:3], "") + "garbage\n" + `{"hello":"world"}` + "\n" + strings.Join(lines[3:], "")
	if err := os.WriteFile(path, []byte(tampered), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runAuditT(t, "query", "--file", path, "--output", "jsonl")
	if code != exitOK || len(jsonlIDs(t, out)) != 6 || strings.Count(errOut, "not an audit event") != 2 {
		t.Errorf("query over two foreign lines: exit %d, %d events, stderr %q; want the 6 events and both lines named", code, len(jsonlIDs(t, out)), errOut)
	}
	code, _, errOut = runAuditT(t, "verify", "--file", path)
	if code != exitFail || !strings.Contains(errOut, "audit.jsonl:4:") || !strings.Contains(errOut, "not audit events") {
		t.Errorf("verify over foreign lines: exit %d %q, want 1 naming line 4", code, errOut)
	}
	// A last line without its newline (cut, torn or appended to) is named
	// too, not passed over.
	for name, content := range map[string]string{
		"newline removed":  strings.TrimSuffix(string(b), "\n"),
		"garbage appended": string(b) + `{"schema":1,"id":"x`,
	} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		code, _, errOut = runAuditT(t, "verify", "--file", path)
		if code != exitFail || !strings.Contains(errOut, "incomplete last line") {
			t.Errorf("verify, %s: exit %d %q, want 1 naming the incomplete last line", name, code, errOut)
		}
	}
}
