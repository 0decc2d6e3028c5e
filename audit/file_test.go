package audit

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func encodedChain(t *testing.T, instance string, n int) []Encoded {
	t.Helper()
	var out []Encoded
	for _, ev := range chain(t, instance, n) {
		data, err := seal(ev)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, Encoded{Seq: ev.Seq, ID: ev.ID, Time: ev.Time, Key: ev.Key(), Data: data})
	}
	return out
}

func readSource(t *testing.T, src Source, f Filter) []*Event {
	t.Helper()
	var got []*Event
	if err := src.Read(context.Background(), f, func(ev *Event) (bool, error) {
		got = append(got, ev)
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestFileSinkRotationKeepsMaxFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	evs := encodedChain(t, "a", 40)
	s, err := NewFileSink(FileConfig{Path: path, MaxBytes: 2000, MaxFiles: 3}, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(evs); i += 4 {
		if err := s.PublishEncoded(context.Background(), evs[i:i+4]); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	for _, name := range []string{"audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if fi.Size() > 2000 {
			t.Errorf("%s is %d bytes, over max_bytes 2000", name, fi.Size())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "audit.jsonl.3")); err == nil {
		t.Error("audit.jsonl.3 exists with max_files 3")
	}
	got := readSource(t, NewFileSource(path, FileSourceOptions{}), Filter{})
	if len(got) == 0 || got[len(got)-1].Seq != 40 {
		t.Fatalf("read %d events, want the newest ending at seq 40", len(got))
	}
	first := got[0].Seq
	for i, ev := range got {
		if ev.Seq != first+uint64(i) {
			t.Fatalf("event %d has seq %d, want %d: files read out of order", i, ev.Seq, first+uint64(i))
		}
	}
}

func TestFileSinkSuppressesRedeliveryAndCutsTornLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	cfg := FileConfig{Path: path, MaxBytes: 1 << 20, MaxFiles: 2}
	evs := encodedChain(t, "a", 10)
	s, err := NewFileSink(cfg, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PublishEncoded(context.Background(), evs[:6]); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// A crash in the middle of the next write leaves half a line.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.Write(evs[6].Data[:20])
	f.Close()

	s, err = NewFileSink(cfg, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The spool replays from its acknowledgement: 4..10.
	if err := s.PublishEncoded(context.Background(), evs[3:]); err != nil {
		t.Fatal(err)
	}
	s.Close()
	got := readSource(t, NewFileSource(path, FileSourceOptions{}), Filter{})
	verifyAll(t, got, 10)
}

func TestFileSourceTimeRange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	evs := encodedChain(t, "a", 10)
	s, err := NewFileSink(FileConfig{Path: path, MaxBytes: 1 << 20, MaxFiles: 1}, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.PublishEncoded(context.Background(), evs)
	s.Close()
	since, until := evs[2].Time, evs[5].Time
	got := readSource(t, NewFileSource(path, FileSourceOptions{}), Filter{Since: since, Until: until})
	if len(got) != 3 || got[0].Seq != 3 || got[2].Seq != 5 {
		t.Errorf("read %d events, want seq 3..5", len(got))
	}
}

func TestFileSourceFollowsAcrossRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	evs := encodedChain(t, "a", 30)
	s, err := NewFileSink(FileConfig{Path: path, MaxBytes: 3000, MaxFiles: 10}, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.PublishEncoded(context.Background(), evs[:5]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	var got []*Event
	done := make(chan error, 1)
	src := NewFileSource(path, FileSourceOptions{Poll: 5 * time.Millisecond})
	go func() {
		done <- src.Follow(ctx, Filter{}, func(ev *Event) (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, ev)
			return len(got) < 30, nil
		})
	}()
	for i := 5; i < 30; i += 5 {
		time.Sleep(20 * time.Millisecond)
		// Half a line first: Follow must wait for the rest.
		if err := s.PublishEncoded(context.Background(), evs[i:i+5]); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	rotated, _ := filepath.Glob(path + ".*")
	if len(rotated) == 0 {
		t.Error("the test wrote no rotated file; raise the event count")
	}
	verifyAll(t, got, 30)
}

func TestMultiSinkRetriesWithoutDuplicates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	fs, err := NewFileSink(FileConfig{Path: path, MaxBytes: 1 << 20, MaxFiles: 1}, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	flaky := &memSink{}
	m := NewMultiSink(fs, flaky)
	evs := encodedChain(t, "a", 6)
	if err := m.PublishEncoded(context.Background(), evs[:3]); err != nil {
		t.Fatal(err)
	}
	flaky.failing.Store(true)
	if err := m.PublishEncoded(context.Background(), evs[3:]); err == nil {
		t.Fatal("publish succeeded with a failing sink")
	}
	if m.Status().Live {
		t.Error("status live with a failing sink")
	}
	flaky.failing.Store(false)
	if err := m.PublishEncoded(context.Background(), evs[3:]); err != nil {
		t.Fatal(err)
	}
	m.Close()
	verifyAll(t, readSource(t, NewFileSource(path, FileSourceOptions{}), Filter{}), 6)
	if flaky.count() != 6 {
		t.Errorf("second sink holds %d events, want 6", flaky.count())
	}
}

func TestFileSinkSuppressesRedeliveryAfterRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	cfg := FileConfig{Path: path, MaxBytes: 2000, MaxFiles: 5}
	evs := encodedChain(t, "a", 5)
	s, err := NewFileSink(cfg, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PublishEncoded(context.Background(), evs[:3]); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// The live file was rotated away and nothing written since.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	s, err = NewFileSink(cfg, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PublishEncoded(context.Background(), evs[1:]); err != nil {
		t.Fatal(err)
	}
	s.Close()
	verifyAll(t, readSource(t, NewFileSource(path, FileSourceOptions{}), Filter{}), 5)
}

// A rotation between Follow's look at the live file and its opening of the
// new one leaves a file that was never live for Follow: readRotatedBetween
// reads exactly the files after the one finished and before the new live
// one.
func TestFileSourceReadsFilesRotatedBetween(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	evs := encodedChain(t, "a", 3)
	for i, name := range []string{path + ".2", path + ".1", path} {
		if err := os.WriteFile(name, append(append([]byte(nil), evs[i].Data...), '\n'), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	info := func(p string) os.FileInfo {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	src := NewFileSource(path, FileSourceOptions{})
	var got []uint64
	deliver := func(line []byte, _ string) (bool, error) {
		var ev Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return false, err
		}
		got = append(got, ev.Seq)
		return true, nil
	}
	ctx := context.Background()
	if _, err := src.readRotatedBetween(ctx, info(path+".2"), info(path), deliver); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != 2 {
		t.Errorf("between .2 and live: read seqs %v, want [2]", got)
	}
	// Nothing read yet (done nil), and the file about to be read was
	// itself rotated to .1 meanwhile: only the older .2 is read.
	got = nil
	if _, err := src.readRotatedBetween(ctx, nil, info(path+".1"), deliver); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != 1 {
		t.Errorf("before .1: read seqs %v, want [1]", got)
	}
}

// Reading a path that holds no audit file is an error naming the path,
// not an empty trail; a directory is not an audit file either.
func TestFileSourceMissingOrDirectory(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.jsonl")
	noop := func(*Event) (bool, error) { return true, nil }
	err := NewFileSource(missing, FileSourceOptions{}).Read(context.Background(), Filter{}, noop)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Read of a missing file: err = %v, want fs.ErrNotExist naming %s", err, missing)
	}
	for _, follow := range []bool{false, true} {
		src := NewFileSource(dir, FileSourceOptions{Poll: time.Millisecond})
		read := src.Read
		if follow {
			read = src.Follow
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := read(ctx, Filter{}, noop)
		cancel()
		if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "directory") {
			t.Errorf("follow %v of a directory: err = %v, want one naming %s as a directory", follow, err, dir)
		}
	}

	// Between a rotation's rename and the new live file, only rotated
	// files exist: they are read, and that is no error.
	path := filepath.Join(dir, "audit.jsonl")
	evs := encodedChain(t, "a", 1)
	if err := os.WriteFile(path+".1", append(evs[0].Data, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := readSource(t, NewFileSource(path, FileSourceOptions{}), Filter{}); len(got) != 1 {
		t.Errorf("read %d events from the rotated file alone, want 1", len(got))
	}

	// Follow waits for a file that does not exist yet.
	late := filepath.Join(dir, "late.jsonl")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan uint64, 1)
	done := make(chan error, 1)
	go func() {
		done <- NewFileSource(late, FileSourceOptions{Poll: time.Millisecond}).Follow(ctx, Filter{}, func(ev *Event) (bool, error) {
			got <- ev.Seq
			return false, nil
		})
	}()
	time.Sleep(20 * time.Millisecond)
	if err := os.WriteFile(late, append(evs[0].Data, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case seq := <-got:
		if seq != 1 {
			t.Errorf("followed seq %d, want 1", seq)
		}
	case err := <-done:
		t.Fatalf("Follow of a file not yet there returned %v before it appeared", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Follow did not pick up the file once it appeared")
	}
	if err := <-done; err != nil {
		t.Errorf("Follow: %v", err)
	}
}

// TestFileSinkRefusesAnotherChainAtHeldSeqs: after a data_dir restored from
// a backup, the proxy's chain restarts below what the file holds; its
// events are different ones and are refused (kept in the spool, the sink
// not live), never skipped as re-deliveries.
func TestFileSinkRefusesAnotherChainAtHeldSeqs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	cfg := FileConfig{Path: path, MaxBytes: 1 << 20, MaxFiles: 2}
	s, err := NewFileSink(cfg, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PublishEncoded(context.Background(), encodedChain(t, "a", 8)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Same instance and seqs, other events: the restored proxy's.
	var other []Encoded
	prev := ""
	for _, ev := range chain(t, "a", 8) {
		ev.Reason, ev.PrevHash = "after the restore", prev
		data, err := seal(ev)
		if err != nil {
			t.Fatal(err)
		}
		prev = ev.Hash
		other = append(other, Encoded{Seq: ev.Seq, ID: ev.ID, Time: ev.Time, Key: ev.Key(), Data: data})
	}
	s, err = NewFileSink(cfg, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.PublishEncoded(context.Background(), other[4:]); !errors.Is(err, ErrChainConflict) {
		t.Fatalf("publishing another chain's seq 5..8: %v, want ErrChainConflict", err)
	}
	if st := s.Status(); st.Live || !strings.Contains(st.Detail, "new audit.instance") {
		t.Errorf("Status = %+v, want not live, saying what to do", st)
	}
}

// TestFileSinkReopensARemovedFile: events are not written into a file
// (or a directory) removed while open, where they would be lost.
func TestFileSinkReopensARemovedFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "trail")
	path := filepath.Join(dir, "audit.jsonl")
	s, err := NewFileSink(FileConfig{Path: path, MaxBytes: 1 << 20, MaxFiles: 2}, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	evs := encodedChain(t, "a", 6)
	if err := s.PublishEncoded(context.Background(), evs[:3]); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(dir)
	if err := s.PublishEncoded(context.Background(), evs[3:]); err != nil {
		t.Fatal(err)
	}
	got := readSource(t, NewFileSource(path, FileSourceOptions{}), Filter{})
	if len(got) != 3 || got[0].Seq != 4 {
		t.Fatalf("after the directory was removed, the path holds %d events, want seq 4..6", len(got))
	}
}

// TestFileSinkIsOneProcesssFile: a second sink on the same file (another
// proxy with the same audit.file.path) is refused: each would write over
// the other's lines.
func TestFileSinkIsOneProcesssFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	cfg := FileConfig{Path: path, MaxBytes: 1 << 20, MaxFiles: 2}
	s, err := NewFileSink(cfg, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := NewFileSink(cfg, FileSinkOptions{}); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		if s2 != nil {
			s2.Close()
		}
		t.Fatalf("second sink on one file: %v, want refused", err)
	}
}

// TestFileSinkKeepsAWholeLastEventWithoutNewline: a last line that is a
// whole event and only lacks its newline is ended, not cut off (cutting
// would delete an event the spool may no longer hold).
func TestFileSinkKeepsAWholeLastEventWithoutNewline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	cfg := FileConfig{Path: path, MaxBytes: 1 << 20, MaxFiles: 2}
	evs := encodedChain(t, "a", 6)
	s, err := NewFileSink(cfg, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PublishEncoded(context.Background(), evs[:4]); err != nil {
		t.Fatal(err)
	}
	s.Close()
	b, _ := os.ReadFile(path)
	os.WriteFile(path, b[:len(b)-1], 0o600)
	s, err = NewFileSink(cfg, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PublishEncoded(context.Background(), evs[4:]); err != nil {
		t.Fatal(err)
	}
	s.Close()
	verifyAll(t, readSource(t, NewFileSource(path, FileSourceOptions{}), Filter{}), 6)
}
