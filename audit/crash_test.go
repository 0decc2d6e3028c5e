package audit

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// TestHelperCrashWriter is the child process of TestPipelineSurvivesKill:
// it records events from several goroutines and prints the ID of every
// event whose Record returned nil, until it is killed.
func TestHelperCrashWriter(t *testing.T) {
	dir := os.Getenv("PORTCULLIS_CRASH_DIR")
	if dir == "" {
		t.Skip("helper process for TestPipelineSurvivesKill")
	}
	var cfg Config
	cfg.Instance = "crash-1"
	cfg.SetDefaults(dir)
	down := &memSink{}
	down.failing.Store(true) // nothing is acknowledged: everything stays spooled
	p, err := Open(context.Background(), cfg, dir, down, Options{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				ev := newTestEvent(i)
				if err := p.Record(context.Background(), ev); err != nil {
					continue
				}
				mu.Lock()
				fmt.Fprintln(out, ev.ID, ev.Seq)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestPipelineSurvivesKill kills a recording process with SIGKILL and
// checks that every event whose Record had returned is replayed after a
// restart, with an intact chain that goes on.
func TestPipelineSurvivesKill(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCrashWriter$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PORTCULLIS_CRASH_DIR="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	confirmed := map[string]uint64{}
	sc := bufio.NewScanner(stdout)
	deadline := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
	defer deadline.Stop()
	for sc.Scan() && len(confirmed) < 3000 {
		var id string
		var seq uint64
		if _, err := fmt.Sscan(sc.Text(), &id, &seq); err != nil {
			t.Fatalf("child said %q", sc.Text())
		}
		confirmed[id] = seq
	}
	cmd.Process.Kill() // SIGKILL, mid-write
	cmd.Wait()
	if len(confirmed) < 3000 {
		t.Fatalf("child confirmed only %d events before it ended", len(confirmed))
	}

	var cfg Config
	cfg.Instance = "crash-1"
	cfg.SetDefaults(dir)
	env := &testEnv{dataDir: dir, cfg: cfg, logs: &bytes.Buffer{}, logMu: &sync.Mutex{}, batch: 500}
	sink := &memSink{}
	p, stop := env.open(t, sink, true)
	last := p.Status().Seq
	next := record(t, p, 1, 1)[0]
	waitFor(t, "replay", func() bool { return p.Status().Backlog == 0 })
	stop()

	got := sink.decoded(t)
	verifyAll(t, got, int(last)+1)
	seen := map[string]bool{}
	for _, ev := range got {
		seen[ev.ID] = true
	}
	for id, seq := range confirmed {
		if !seen[id] {
			t.Errorf("event %s (seq %d) was confirmed by Record but is gone after the kill", id, seq)
		}
	}
	if next.Seq != last+1 {
		t.Errorf("after the restart the chain goes on at seq %d, want %d", next.Seq, last+1)
	}
	t.Logf("killed after %d confirmed events; %d in the spool; lost (torn) %v", len(confirmed), last, counterValue(t, p.m.lost))
}
