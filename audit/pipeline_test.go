package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// memSink stores what it is given; failing makes Publish fail.
type memSink struct {
	mu      sync.Mutex
	events  []Encoded
	failing atomic.Bool
	calls   atomic.Int64
}

var _ EncodedSink = (*memSink)(nil)

func (s *memSink) PublishEncoded(ctx context.Context, batch []Encoded) error {
	s.calls.Add(1)
	if s.failing.Load() {
		return errors.New("sink down")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, batch...)
	return nil
}

func (s *memSink) Publish(ctx context.Context, batch []*Event) error {
	panic("the pipeline must use PublishEncoded")
}

func (s *memSink) Status() SinkStatus {
	if s.failing.Load() {
		return SinkStatus{Detail: "down"}
	}
	return SinkStatus{Live: true}
}
func (s *memSink) Close() error { return nil }

func (s *memSink) decoded(t *testing.T) []*Event {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Event, len(s.events))
	for i := range s.events {
		ev, err := s.events[i].Decode()
		if err != nil {
			t.Fatal(err)
		}
		out[i] = ev
	}
	return out
}

func (s *memSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

type testEnv struct {
	dataDir string
	cfg     Config
	logs    *bytes.Buffer
	logMu   *sync.Mutex
	batch   int // Options.BatchEvents
}

func newEnv(t *testing.T, mode string) *testEnv {
	dir := t.TempDir()
	var cfg Config
	cfg.Mode = mode
	cfg.Instance = "test-1"
	cfg.SetDefaults(dir)
	return &testEnv{dataDir: dir, cfg: cfg, logs: &bytes.Buffer{}, logMu: &sync.Mutex{}, batch: 7}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (e *testEnv) logText() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.logs.String()
}

// open opens a pipeline and starts Run; the returned stop closes it.
func (e *testEnv) open(t *testing.T, sink Sink, run bool) (*Pipeline, func()) {
	t.Helper()
	p, err := Open(context.Background(), e.cfg, e.dataDir, sink, Options{
		Logger:     slog.New(slog.NewTextHandler(lockedWriter{e.logMu, e.logs}, nil)),
		Registerer: prometheus.NewRegistry(),
		RetryMin:   5 * time.Millisecond, RetryMax: 20 * time.Millisecond,
		BatchEvents: e.batch,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	if run {
		go func() { done <- p.Run(context.Background()) }()
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := p.Close(ctx); err != nil {
				t.Errorf("close: %v", err)
			}
			if run {
				if err := <-done; err != nil {
					t.Errorf("run: %v", err)
				}
			}
		})
	}
	t.Cleanup(stop)
	return p, stop
}

func newTestEvent(i int) *Event {
	return &Event{
		RequestID: fmt.Sprintf("req-%d", i),
		Decision:  DecisionAllow,
		Reason:    "ok",
		Route:     "app",
		User:      User{Sub: fmt.Sprintf("user-%d", i%3), Email: fmt.Sprintf("u%d@example.com", i%3), Groups: []string{"engineering"}},
		Request:   Request{Method: "GET", Host: "app.example.com", Path: "/x", RemoteAddr: "127.0.0.1"},
		Response:  Response{Status: 200},
	}
}

func record(t *testing.T, p *Pipeline, from, to int) []*Event {
	t.Helper()
	var evs []*Event
	for i := from; i <= to; i++ {
		ev := newTestEvent(i)
		if err := p.Record(context.Background(), ev); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func verifyAll(t *testing.T, evs []*Event, wantSeqs int) {
	t.Helper()
	v := NewVerifier()
	for _, ev := range evs {
		v.Add(ev)
	}
	if err := v.Err(); err != nil {
		t.Errorf("chain does not verify: %v", err)
	}
	if len(evs) != wantSeqs {
		t.Errorf("got %d events, want %d", len(evs), wantSeqs)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Errorf("event %d has seq %d, want %d", i, ev.Seq, i+1)
			break
		}
	}
}

func TestPipelineChainContinuesAcrossRestart(t *testing.T) {
	for _, mode := range []string{ModeDurable, ModeBestEffort, ModeFailClosed} {
		t.Run(mode, func(t *testing.T) {
			env := newEnv(t, mode)
			sink := &memSink{}
			p, stop := env.open(t, sink, true)
			first := record(t, p, 1, 10)
			waitFor(t, "10 events delivered", func() bool { return sink.count() == 10 })
			stop()

			p, stop = env.open(t, sink, true)
			second := record(t, p, 11, 15)
			waitFor(t, "15 events delivered", func() bool { return sink.count() == 15 })
			stop()

			if second[0].Seq != 11 || second[0].PrevHash != first[9].Hash {
				t.Errorf("after restart: seq %d prev_hash %s, want seq 11 prev_hash %s", second[0].Seq, second[0].PrevHash, first[9].Hash)
			}
			got := sink.decoded(t)
			verifyAll(t, got, 15)
			for i, ev := range append(first, second...) {
				if got[i].ID != ev.ID || got[i].Hash != ev.Hash || got[i].Instance != "test-1" {
					t.Errorf("delivered event %d = %s/%s, want %s/%s", i, got[i].ID, got[i].Hash, ev.ID, ev.Hash)
				}
			}
		})
	}
}

func TestPipelineCrashCutsTornRecordAndContinues(t *testing.T) {
	env := newEnv(t, ModeDurable)
	sink := &memSink{}
	p, _ := env.open(t, sink, false)
	evs := record(t, p, 1, 5)
	// Crash: no Close, no chain state saved; only the files let go.
	p.spool.Close()
	seg := filepath.Join(env.cfg.Spool.Dir, fmt.Sprintf(segNameFormat, 1))
	fi, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(seg, fi.Size()-10); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(env.dataDir, chainStateFile)); err == nil {
		t.Fatal("chain state file exists before Close; the crash test needs the spool to be the only source")
	}

	p2, stop := env.open(t, sink, true)
	if got := counterValue(t, p2.m.lost); got != 1 {
		t.Errorf("lost events counted = %v, want 1", got)
	}
	if !bytes.Contains([]byte(env.logText()), []byte("torn")) {
		t.Errorf("the torn record was not logged:\n%s", env.logText())
	}
	next := record(t, p2, 6, 6)[0]
	if next.Seq != 5 || next.PrevHash != evs[3].Hash {
		t.Errorf("after the crash: seq %d prev_hash %s, want seq 5 after %s", next.Seq, next.PrevHash, evs[3].Hash)
	}
	waitFor(t, "5 events delivered", func() bool { return sink.count() == 5 })
	stop()
	verifyAll(t, sink.decoded(t), 5)
}

func TestPipelineDurableRecordWaitsForFsync(t *testing.T) {
	env := newEnv(t, ModeDurable)
	sink := &memSink{}
	p, stop := env.open(t, sink, true)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				ev := newTestEvent(i)
				if err := p.Record(context.Background(), ev); err != nil {
					t.Error(err)
					return
				}
				if d := p.Spool().Stats().Durable; d < ev.Seq {
					t.Errorf("Record(seq %d) returned before fsync (durable = %d)", ev.Seq, d)
				}
			}
		}()
	}
	wg.Wait()
	st := p.Spool().Stats()
	if st.Records != 200 || st.Commits == 0 {
		t.Errorf("spool wrote %d records in %d commits, want 200", st.Records, st.Commits)
	}
	if got := counterValue(t, p.m.recorded); got != 200 {
		t.Errorf("recorded metric = %v, want 200", got)
	}
	stop()
	verifyAll(t, sink.decoded(t), 200)
	if got := counterValue(t, p.m.acked); got != 200 {
		t.Errorf("acknowledged metric = %v, want 200", got)
	}
}

func TestPipelineBestEffortOverflowIsCounted(t *testing.T) {
	env := newEnv(t, ModeBestEffort)
	env.cfg.Buffer = 3
	sink := &memSink{}
	p, stop := env.open(t, sink, false) // no Run: nothing drains the queue
	var dropped int
	for i := 1; i <= 8; i++ {
		ev := newTestEvent(i)
		start := time.Now()
		err := p.Record(context.Background(), ev)
		if time.Since(start) > time.Second {
			t.Errorf("best-effort Record blocked")
		}
		if err != nil {
			if !errors.Is(err, ErrUnavailable) {
				t.Errorf("record %d: %v, want ErrUnavailable", i, err)
			}
			if ev.Seq != 0 {
				t.Errorf("dropped event got seq %d; drops must not use up seqs", ev.Seq)
			}
			dropped++
		}
	}
	if dropped != 5 {
		t.Errorf("dropped %d, want 5", dropped)
	}
	if got := counterValue(t, p.m.dropped.WithLabelValues(dropBufferFull)); got != 5 {
		t.Errorf("dropped metric = %v, want 5", got)
	}
	if n := bytes.Count([]byte(env.logText()), []byte("event dropped")); n != 5 {
		t.Errorf("%d drop log lines, want 5", n)
	}
	stop() // Close without Run: the 3 queued events are lost, counted and logged
	if got := counterValue(t, p.m.lost); got != 3 {
		t.Errorf("lost metric = %v, want 3", got)
	}
}

func TestPipelineFailClosedWhenSpoolFull(t *testing.T) {
	env := newEnv(t, ModeFailClosed)
	env.cfg.Spool.MaxBytes = 96 << 10
	sink := &memSink{}
	sink.failing.Store(true)
	p, _ := env.open(t, sink, true)
	if !p.Accepting() || p.Ready() != nil {
		t.Fatal("an empty spool is not accepting")
	}
	var err error
	var n int
	for n = 1; n < 10000 && err == nil; n++ {
		err = p.Record(context.Background(), newTestEvent(n))
	}
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrSpoolFull) {
		t.Fatalf("record into a full spool: %v, want ErrSpoolFull/ErrUnavailable", err)
	}
	if p.Accepting() {
		t.Error("Accepting() = true with a full spool")
	}
	if err := p.Ready(); err == nil {
		t.Error("Ready() = nil with a full spool in fail-closed mode")
	}
	st := p.Status()
	if !st.Spooling || st.Backlog == 0 || st.Sink.Live {
		t.Errorf("status %+v, want spooling with a backlog", st)
	}
	if got := counterValue(t, p.m.dropped.WithLabelValues(dropSpoolFull)); got != 1 {
		t.Errorf("spool_full drops = %v, want 1", got)
	}
	// The sink comes back: the spool drains and accepts again.
	sink.failing.Store(false)
	waitFor(t, "spool drained", func() bool { return p.Status().Backlog == 0 })
	if !p.Accepting() {
		t.Error("not accepting after the spool drained")
	}
	if err := p.Record(context.Background(), newTestEvent(0)); err != nil {
		t.Errorf("record after draining: %v", err)
	}
	waitFor(t, "all delivered", func() bool { return sink.count() == n-1 })
	verifyAll(t, sink.decoded(t), n-1)
}

func TestPipelineReplaysAfterReopenWhenSinkFailed(t *testing.T) {
	env := newEnv(t, ModeDurable)
	down := &memSink{}
	down.failing.Store(true)
	p, stop := env.open(t, down, true)
	evs := record(t, p, 1, 20)
	waitFor(t, "a failed publish", func() bool { return down.calls.Load() > 1 })
	stop() // gives up after its deadline; the events stay in the spool
	if got := counterValue(t, p.m.acked); got != 0 {
		t.Fatalf("acknowledged %v events with a failing sink", got)
	}

	up := &memSink{}
	up.failing.Store(true) // until the backlog is checked
	p, stop = env.open(t, up, true)
	if b := p.Status().Backlog; b != 20 {
		t.Errorf("backlog after reopen = %d, want 20", b)
	}
	up.failing.Store(false)
	waitFor(t, "replay", func() bool { return up.count() == 20 })
	more := record(t, p, 21, 22)
	waitFor(t, "new events", func() bool { return up.count() == 22 })
	stop()
	got := up.decoded(t)
	verifyAll(t, got, 22)
	for i, ev := range append(evs, more...) {
		if got[i].ID != ev.ID {
			t.Fatalf("event %d is %s, want %s", i, got[i].ID, ev.ID)
		}
	}
}

func TestPipelineFileSinkEndToEnd(t *testing.T) {
	env := newEnv(t, ModeDurable)
	env.cfg.File.MaxBytes = 4 << 10 // rotate every few events
	env.cfg.File.MaxFiles = 100
	sink, err := NewSink(context.Background(), env.cfg, SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, stop := env.open(t, sink, true)
	evs := record(t, p, 1, 60)
	stop()

	rotated, _ := filepath.Glob(env.cfg.File.Path + ".*")
	if len(rotated) < 2 {
		t.Errorf("want several rotated files with max_bytes 4KiB, got %v", rotated)
	}
	src := NewFileSource(env.cfg.File.Path, FileSourceOptions{})
	var got []*Event
	err = src.Read(context.Background(), Filter{}, func(ev *Event) (bool, error) {
		got = append(got, ev)
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	verifyAll(t, got, 60)
	for i := range evs {
		if got[i].ID != evs[i].ID || got[i].Hash != evs[i].Hash || got[i].RequestID != evs[i].RequestID {
			t.Fatalf("event %d read back as %+v, want %+v", i, got[i], evs[i])
		}
	}
}

// counterValue reads a counter's current value.
func counterValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	if err := (<-ch).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestPipelineSpoolWriteFailureLeavesNoGap(t *testing.T) {
	env := newEnv(t, ModeFailClosed)
	sink := &memSink{}
	p, stop := env.open(t, sink, true)
	p.spool.retryWait = 50 * time.Millisecond
	good := record(t, p, 1, 3)

	// The disk fails: the next write hits a closed file.
	p.spool.mu.Lock()
	p.spool.cur.Close()
	p.spool.mu.Unlock()
	for i := 4; i <= 5; i++ {
		ev := newTestEvent(i)
		if err := p.Record(context.Background(), ev); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("record %d on a failing spool: %v, want ErrUnavailable", i, err)
		}
	}
	if p.Accepting() {
		t.Error("Accepting() = true right after a write failure")
	}
	if got := counterValue(t, p.m.dropped.WithLabelValues(dropSpoolError)); got != 2 {
		t.Errorf("spool_error drops = %v, want 2", got)
	}
	time.Sleep(60 * time.Millisecond)
	if !p.Accepting() {
		t.Error("not accepting after the retry wait")
	}
	next := record(t, p, 6, 6)[0]
	if next.Seq != 4 || next.PrevHash != good[2].Hash {
		t.Errorf("after the failure: seq %d prev_hash %s, want seq 4 after %s", next.Seq, next.PrevHash, good[2].Hash)
	}
	waitFor(t, "4 events delivered", func() bool { return sink.count() == 4 })
	stop()
	verifyAll(t, sink.decoded(t), 4)
}

func TestPipelineMetricNames(t *testing.T) {
	env := newEnv(t, ModeDurable)
	reg := prometheus.NewRegistry()
	p, err := Open(context.Background(), env.cfg, env.dataDir, &memSink{}, Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	record(t, p, 1, 1)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, name := range []string{
		"portcullis_audit_events_recorded_total",
		"portcullis_audit_events_acknowledged_total",
		"portcullis_audit_events_dropped_total",
		"portcullis_audit_events_lost_total",
		"portcullis_audit_spool_bytes",
		"portcullis_audit_publish_seconds",
		"portcullis_audit_sink_live",
		"portcullis_audit_backlog_events",
		"portcullis_audit_spool_commits_total",
	} {
		if !got[name] {
			t.Errorf("metric %s is not registered", name)
		}
	}
}

// offerSink fails every publish and remembers the highest seq offered.
type offerSink struct {
	memSink
	offered atomic.Uint64
}

func (s *offerSink) PublishEncoded(ctx context.Context, batch []Encoded) error {
	if last := batch[len(batch)-1].Seq; last > s.offered.Load() {
		s.offered.Store(last)
	}
	return s.memSink.PublishEncoded(ctx, batch)
}

func TestPipelineBestEffortCrashNeverReusesOfferedSeq(t *testing.T) {
	env := newEnv(t, ModeBestEffort)
	sink := &offerSink{}
	sink.failing.Store(true)
	p, stop := env.open(t, sink, true)
	defer stop()
	defer sink.failing.Store(false)
	record(t, p, 1, 30)
	waitFor(t, "a batch offered to the sink", func() bool { return sink.offered.Load() > 0 })
	offered := sink.offered.Load()

	// The process dies here with its queue in memory (no Close); the next
	// one starts from the data directory. The broker may hold what was
	// offered, and de-duplicates by seq: the chain must go on above it.
	p2, stop2 := env.open(t, &memSink{}, false)
	defer stop2()
	next := record(t, p2, 31, 31)[0]
	if next.Seq <= offered {
		t.Errorf("after the crash the chain goes on at seq %d, but seq %d was offered to the sink", next.Seq, offered)
	}
}

// TestNewInstanceAfterTheOldOnesEventsAreDelivered: a proxy given a new
// audit.instance (after a data_dir restored from a backup) starts its
// chain once the spool's events of the old instance are all delivered,
// and is refused while one is not.
func TestNewInstanceAfterTheOldOnesEventsAreDelivered(t *testing.T) {
	env := newEnv(t, ModeDurable)
	sink := &memSink{}
	p, stop := env.open(t, sink, true)
	record(t, p, 1, 3)
	waitFor(t, "3 events delivered", func() bool { return p.Status().Acked == 3 })
	stop()

	env.cfg.Instance = "test-2"
	p, stop = env.open(t, sink, true)
	record(t, p, 1, 2)
	if st := p.Status(); st.Instance != "test-2" || st.Seq != 2 {
		t.Errorf("new instance: %+v, want test-2 at seq 2", st)
	}
	// Delivered, not taken for the old instance's acknowledged events.
	waitFor(t, "test-2's events delivered", func() bool {
		n := 0
		for _, ev := range sink.decoded(t) {
			if ev.Instance == "test-2" {
				n++
			}
		}
		return n == 2
	})
	sink.failing.Store(true) // test-2's next events stay in the spool
	record(t, p, 3, 3)
	stop()

	env.cfg.Instance = "test-3"
	_, err := Open(context.Background(), env.cfg, env.dataDir, sink, Options{Registerer: prometheus.NewRegistry()})
	if err == nil || !strings.Contains(err.Error(), `holds undelivered events of instance "test-2"`) {
		t.Fatalf("new instance over an undelivered spool: %v, want refused", err)
	}
}
