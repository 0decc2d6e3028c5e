package policy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// metricValue reads a counter or gauge (summed over labels) from reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

const (
	demoAliceOnly = `package t.route

default allow := false

allow if input.user.sub == "alice"

reason := "alice only"
`
	demoBobOnly = `package t.route

default allow := false

allow if input.user.sub == "bob"

reason := "bob only"
`
)

// TestHotReload edits the policy under a running engine: decisions change
// within 2 s, concurrent decisions never fail, a syntax error keeps the old
// decisions and shows in the metrics and the log with file:line, and a new
// subdirectory is watched too.
func TestHotReload(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"route.rego": demoAliceOnly})
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	e, err := NewEngine(Config{Dir: dir, DecisionTimeout: testTimeout}, Options{
		Logger:     slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.SetPackages([]string{"t.route"}); err != nil {
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- e.Run(ctx) }()
	// Run adds its watches asynchronously; a change made before they exist
	// would be missed, so give it a moment and then prove it is watching.
	waitWatching(t, e, dir)

	// Concurrent deciders: every decision must be a clean allow or deny.
	var stop atomic.Bool
	var bad atomic.Value
	var decisions atomic.Int64
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			who := alice
			if i%2 == 1 {
				who = bob
			}
			in := input(who, "GET", "/")
			for !stop.Load() {
				d := e.Eval(context.Background(), "t.route", in)
				decisions.Add(1)
				if d.Outcome == OutcomeError || d.Err != nil {
					bad.Store(d)
				}
			}
		}()
	}
	defer func() {
		stop.Store(true)
		wg.Wait()
		if d := bad.Load(); d != nil {
			t.Errorf("a concurrent decision failed during reloads: %+v", d)
		}
		if decisions.Load() == 0 {
			t.Error("no concurrent decisions ran")
		}
	}()

	rev1 := e.Current().Revision()
	writeFiles(t, dir, map[string]string{"route.rego": demoBobOnly})
	waitFor(t, 2*time.Second, "the edit to take effect", func() bool {
		return e.Eval(ctx, "t.route", input(bob, "GET", "/")).Allow && !e.Eval(ctx, "t.route", input(alice, "GET", "/")).Allow
	})
	rev2 := e.Current().Revision()
	if rev2 == rev1 {
		t.Errorf("revision unchanged after an edit: %s", rev2)
	}
	if got := e.Eval(ctx, "t.route", input(bob, "GET", "/")).Revision; got != rev2 {
		t.Errorf("decision revision %s, want %s", got, rev2)
	}

	// A syntax error: the previous decisions stay, the error is counted and
	// logged with its file and line.
	errorsBefore := metricValue(t, reg, "portcullis_policy_reload_errors_total")
	writeFiles(t, dir, map[string]string{"route.rego": "package t.route\n\nallow if {\n\tinput.user.sub ==\n"})
	waitFor(t, 2*time.Second, "the syntax error to be counted", func() bool {
		return metricValue(t, reg, "portcullis_policy_reload_errors_total") > errorsBefore
	})
	if e.Current().Revision() != rev2 {
		t.Errorf("a broken edit replaced the serving set")
	}
	if d := e.Eval(ctx, "t.route", input(bob, "GET", "/")); !d.Allow || d.Reason != "bob only" {
		t.Errorf("after a syntax error: got %+v, want bob still allowed", d)
	}
	if !strings.Contains(logs.String(), "route.rego:5") || !strings.Contains(logs.String(), "line=5") {
		t.Errorf("log does not name route.rego with its line:\n%s", logs.String())
	}
	if got := metricValue(t, reg, "portcullis_policy_last_reload_success"); got != 0 {
		t.Errorf("portcullis_policy_last_reload_success = %v after a failed reload, want 0", got)
	}

	// Undoing the broken edit brings back the serving files: the reload
	// succeeds again, though nothing is swapped.
	writeFiles(t, dir, map[string]string{"route.rego": demoBobOnly})
	waitFor(t, 2*time.Second, "the undone edit to count as a successful reload", func() bool {
		return metricValue(t, reg, "portcullis_policy_last_reload_success") == 1
	})
	if e.Current().Revision() != rev2 {
		t.Errorf("revision %s after undoing a broken edit, want %s", e.Current().Revision(), rev2)
	}

	// An editor's save: write a temporary file, then rename it over the
	// original, in a new subdirectory created after Run started.
	if err := os.Remove(filepath.Join(dir, "route.rego")); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "routes", "nested")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the watcher add the new directories
	tmp := filepath.Join(sub, ".route.rego.swp")
	if err := os.WriteFile(tmp, []byte(strings.Replace(demoAliceOnly, "alice only", "alice again", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(sub, "route.rego")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "the renamed file in a new directory to take effect", func() bool {
		d := e.Eval(ctx, "t.route", input(alice, "GET", "/"))
		return d.Allow && d.Reason == "alice again"
	})
	if got := metricValue(t, reg, "portcullis_policy_last_reload_success"); got != 1 {
		t.Errorf("portcullis_policy_last_reload_success = %v, want 1", got)
	}

	// Removing a package a route needs is refused like a compile error.
	errorsBefore = metricValue(t, reg, "portcullis_policy_reload_errors_total")
	revBefore := e.Current().Revision()
	writeFiles(t, dir, map[string]string{"routes/nested/route.rego": "package t.renamed\n\nallow := true\n"})
	waitFor(t, 2*time.Second, "the missing package to be refused", func() bool {
		return metricValue(t, reg, "portcullis_policy_reload_errors_total") > errorsBefore
	})
	if e.Current().Revision() != revBefore {
		t.Error("an edit removing a route's package replaced the serving set")
	}
	if !strings.Contains(logs.String(), "t.route not found") {
		t.Errorf("log does not name the missing package:\n%s", logs.String())
	}

	cancel()
	select {
	case err := <-runDone:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Run did not return after cancel")
	}
	if metricValue(t, reg, "portcullis_policy_decisions_total") == 0 || metricValue(t, reg, "portcullis_policy_eval_duration_seconds") == 0 {
		t.Error("decision metrics were not recorded")
	}
}

// waitWatching touches an unrelated file until the engine reloads (seen as a
// debug line), proving the watcher is running.
func waitWatching(t *testing.T, e *Engine, dir string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		// A data file with new content changes the revision; then remove it.
		writeFiles(t, dir, map[string]string{"probe/data.json": fmt.Sprintf(`{"n": %d}`, i)})
		time.Sleep(300 * time.Millisecond)
		if s := e.Current(); s != nil && slices.Contains(s.Files(), "probe/data.json") {
			if err := os.RemoveAll(filepath.Join(dir, "probe")); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 2*time.Second, "the probe removal to be seen", func() bool {
				return !slices.Contains(e.Current().Files(), "probe/data.json")
			})
			return
		}
	}
	t.Fatal("the watcher never picked up a change")
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("waited %s for %s", limit, what)
}

func TestReloadKeepsPreviousOnError(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.rego": allowAll})
	reg := prometheus.NewRegistry()
	e, err := NewEngine(Config{Dir: dir, DecisionTimeout: testTimeout}, Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	rev := e.Current().Revision()
	if err := e.Reload(ctx); err != nil || metricValue(t, reg, "portcullis_policy_reloads_total") != 1 {
		t.Errorf("reloading unchanged files: err %v, reloads %v; want nil and 1", err, metricValue(t, reg, "portcullis_policy_reloads_total"))
	}
	writeFiles(t, dir, map[string]string{"a.rego": "package t.a\n\nallow := true if {\n"})
	err = e.Reload(ctx)
	var ce *CompileError
	if !errors.As(err, &ce) || ce.Problems[0].File != filepath.Join(dir, "a.rego") || ce.Problems[0].Line == 0 {
		t.Fatalf("got %v, want a CompileError located in a.rego", err)
	}
	if e.Current().Revision() != rev {
		t.Error("failed reload replaced the current set")
	}
	if d := e.Eval(ctx, "t.a", input(anon, "GET", "/")); !d.Allow {
		t.Errorf("after failed reload: %+v, want the old policy to allow", d)
	}
	if got := metricValue(t, reg, "portcullis_policy_reload_errors_total"); got != 1 {
		t.Errorf("reload errors = %v, want 1", got)
	}
	if err := e.SetPackages([]string{"t.a", "t.gone"}); !errors.Is(err, ErrPackageNotFound) {
		t.Errorf("SetPackages with a missing package: got %v, want ErrPackageNotFound", err)
	}
	if _, err := NewEngine(Config{Dir: dir}, Options{Registerer: reg}); err == nil {
		t.Error("registering the metrics twice on one registry succeeded")
	}
}
