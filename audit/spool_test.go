package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

func testRecord(seq uint64) Encoded {
	return Encoded{
		Seq:  seq,
		ID:   fmt.Sprintf("01JD%022d", seq),
		Time: time.UnixMicro(1_700_000_000_000_000 + int64(seq)).UTC(),
		Key:  "alice",
		Data: []byte(fmt.Sprintf(`{"seq":%d,"instance":"t","hash":"sha256:%d"}`, seq, seq)),
	}
}

func appendSync(t *testing.T, s *Spool, from, to uint64) {
	t.Helper()
	var last Ticket
	for seq := from; seq <= to; seq++ {
		var err error
		if last, err = s.Append(testRecord(seq), fmt.Sprintf("sha256:%d", seq)); err != nil {
			t.Fatalf("append %d: %v", seq, err)
		}
	}
	if err := s.Sync(context.Background(), last); err != nil {
		t.Fatalf("sync %d: %v", to, err)
	}
}

func readAll(t *testing.T, s *Spool) []uint64 {
	t.Helper()
	var seqs []uint64
	for {
		b, err := s.ReadBatch(3, 1<<20)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if len(b) == 0 {
			return seqs
		}
		for _, r := range b {
			want := testRecord(r.Seq)
			if r.ID != want.ID || r.Key != want.Key || !r.Time.Equal(want.Time) || string(r.Data) != string(want.Data) {
				t.Fatalf("record %d read back as %+v, want %+v", r.Seq, r, want)
			}
			seqs = append(seqs, r.Seq)
		}
	}
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func equalSeqs(a, b []uint64) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func TestSpoolReplaysUnacknowledged(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(dir, 1<<20, SpoolOptions{SegmentBytes: 300})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]uint64{{1, 3}, {4, 6}, {7, 9}, {10, 10}} {
		appendSync(t, s, r[0], r[1]) // one commit each; a segment is cut after ~300 bytes
	}
	if got := readAll(t, s); !equalSeqs(got, seqRange(1, 10)) {
		t.Fatalf("read %v, want 1..10", got)
	}
	if err := s.Ack(6, "sha256:6", "t"); err != nil {
		t.Fatal(err)
	}
	before := s.Stats()
	if before.Segments < 2 {
		t.Fatalf("want several segments with SegmentBytes 300, got %d", before.Segments)
	}
	s.Close()

	s, err = OpenSpool(dir, 1<<20, SpoolOptions{SegmentBytes: 300})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := readAll(t, s); !equalSeqs(got, seqRange(7, 10)) {
		t.Errorf("after reopen read %v, want 7..10", got)
	}
	if rec := s.Recovery(); rec.Unacked != 4 || rec.LostRecords != 0 {
		t.Errorf("recovery %+v, want 4 unacked, nothing lost", rec)
	}
	if seq, hash := s.Tail(); seq != 10 || hash != "sha256:10" {
		t.Errorf("tail = %d %q, want 10 sha256:10", seq, hash)
	}
	appendSync(t, s, 11, 12)
	if got := readAll(t, s); !equalSeqs(got, seqRange(11, 12)) {
		t.Errorf("read %v, want 11..12", got)
	}
}

func TestSpoolDeletesAcknowledgedSegments(t *testing.T) {
	s, err := OpenSpool(t.TempDir(), 1<<20, SpoolOptions{SegmentBytes: 200})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendSync(t, s, 1, 3)
	appendSync(t, s, 4, 6)
	appendSync(t, s, 7, 9)
	readAll(t, s)
	full := s.Stats()
	if err := s.Ack(9, "sha256:9", "t"); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Segments != 1 || st.Bytes >= full.Bytes {
		t.Errorf("after acking everything: %d segments, %d bytes (was %d, %d); want only the active segment", st.Segments, st.Bytes, full.Segments, full.Bytes)
	}
	files, _ := filepath.Glob(filepath.Join(s.dir, "*.seg"))
	if len(files) != 1 {
		t.Errorf("segment files on disk: %v, want 1", files)
	}
}

func TestSpoolCutsTornTail(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, path string, size int64)
	}{
		{"truncated mid-record", func(t *testing.T, path string, size int64) {
			if err := os.Truncate(path, size-7); err != nil {
				t.Fatal(err)
			}
		}},
		{"flipped byte in the last record", func(t *testing.T, path string, size int64) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b := []byte{0}
			f.ReadAt(b, size-3)
			b[0] ^= 0xff
			f.WriteAt(b, size-3)
		}},
		{"garbage appended", func(t *testing.T, path string, size int64) {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			f.Write([]byte{0x30, 0, 0, 0, 1, 2, 3})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := OpenSpool(dir, 1<<20, SpoolOptions{})
			if err != nil {
				t.Fatal(err)
			}
			appendSync(t, s, 1, 5)
			s.Close()
			path := filepath.Join(dir, fmt.Sprintf(segNameFormat, 1))
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			tt.damage(t, path, fi.Size())

			s, err = OpenSpool(dir, 1<<20, SpoolOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			wantLast := uint64(4)
			if tt.name == "garbage appended" {
				wantLast = 5
			}
			if seq, _ := s.Tail(); seq != wantLast {
				t.Errorf("tail seq = %d, want %d", seq, wantLast)
			}
			if rec := s.Recovery(); rec.LostRecords != 1 || rec.TornBytes == 0 {
				t.Errorf("recovery = %+v, want 1 lost record and torn bytes", rec)
			}
			appendSync(t, s, wantLast+1, wantLast+2)
			if got := readAll(t, s); !equalSeqs(got, seqRange(1, wantLast+2)) {
				t.Errorf("read %v, want 1..%d", got, wantLast+2)
			}
		})
	}
}

func TestSpoolFull(t *testing.T) {
	rec := testRecord(1)
	size := int64(frameSize(&rec))
	s, err := OpenSpool(t.TempDir(), 3*size, SpoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendSync(t, s, 1, 3)
	_, err = s.Append(testRecord(4), "")
	if !errors.Is(err, ErrSpoolFull) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("append past max_bytes: %v, want ErrSpoolFull wrapping ErrUnavailable", err)
	}
	if s.Accepting() {
		t.Error("full spool says it is accepting")
	}
	if seq, _ := s.Tail(); seq != 3 {
		t.Errorf("tail = %d after refused append, want 3", seq)
	}
}

func TestSpoolGroupCommit(t *testing.T) {
	s, err := OpenSpool(t.TempDir(), 1<<30, SpoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const writers, each = 16, 50
	var mu sync.Mutex
	var next uint64
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				mu.Lock()
				next++
				seq := next
				ticket, err := s.Append(testRecord(seq), "")
				mu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
				if err := s.Sync(context.Background(), ticket); err != nil {
					t.Error(err)
					return
				}
				if d := s.Stats().Durable; d < seq {
					t.Errorf("Sync(%d) returned with durable = %d", seq, d)
				}
			}
		}()
	}
	wg.Wait()
	st := s.Stats()
	if st.Records != writers*each {
		t.Errorf("records written = %d, want %d", st.Records, writers*each)
	}
	t.Logf("group commit: %d records in %d commits (%.1f per fsync)", st.Records, st.Commits, float64(st.Records)/float64(st.Commits))
	got := readAll(t, s)
	sorted := sort.SliceIsSorted(got, func(i, j int) bool { return got[i] < got[j] })
	if len(got) != writers*each || !sorted {
		t.Errorf("read %d records (sorted %v), want %d in order", len(got), sorted, writers*each)
	}
}

func TestSpoolSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(dir, 1<<20, SpoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := OpenSpool(dir, 1<<20, SpoolOptions{}); err == nil {
		s2.Close()
		t.Error("a second OpenSpool of the same directory succeeded")
	}
}

func TestSpoolTailSurvivesDeletedSegments(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(dir, 1<<20, SpoolOptions{SegmentBytes: 200})
	if err != nil {
		t.Fatal(err)
	}
	appendSync(t, s, 1, 3)
	appendSync(t, s, 4, 4) // starts a new segment
	readAll(t, s)
	if err := s.Ack(3, "sha256:3", "t"); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Segments != 1 {
		t.Fatalf("%d segments after ack, want 1", st.Segments)
	}
	s.Close()
	// The crash tore the only record left.
	if err := os.Truncate(filepath.Join(dir, fmt.Sprintf(segNameFormat, 4)), 5); err != nil {
		t.Fatal(err)
	}
	s, err = OpenSpool(dir, 1<<20, SpoolOptions{SegmentBytes: 200})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if seq, hash := s.Tail(); seq != 3 || hash != "sha256:3" || s.TailInstance() != "t" {
		t.Errorf("tail = %d %q %q, want the acknowledged seq 3 sha256:3 of t", seq, hash, s.TailInstance())
	}
	appendSync(t, s, 4, 5)
	if got := readAll(t, s); !equalSeqs(got, seqRange(4, 5)) {
		t.Errorf("read %v, want 4..5", got)
	}
}

func TestSpoolReaderFallsBackToFileBehindMemory(t *testing.T) {
	s, err := OpenSpool(t.TempDir(), 1<<30, SpoolOptions{SegmentBytes: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rec := testRecord(1)
	s.memMax = 10 * len(rec.Data) // about ten records stay in memory
	appendSync(t, s, 1, 3)
	if got := readAll(t, s); !equalSeqs(got, seqRange(1, 3)) {
		t.Fatalf("read %v, want 1..3", got)
	}
	// The reader falls behind by more than memory holds (an outage): the
	// oldest records come from the segments, the newest from memory.
	for from := uint64(4); from <= 200; from += 7 {
		appendSync(t, s, from, min(from+6, 200))
	}
	s.mu.Lock()
	memFirst, memLen := s.mem[0].Seq, len(s.mem)
	s.mu.Unlock()
	if memFirst <= 4 || memLen > 12 {
		t.Fatalf("memory holds %d records from seq %d; want only the newest", memLen, memFirst)
	}
	if got := readAll(t, s); !equalSeqs(got, seqRange(4, 200)) {
		t.Errorf("read %v, want 4..200", got)
	}
	s.mu.Lock()
	if len(s.mem) != 0 || s.memBytes != 0 {
		t.Errorf("after reading everything memory holds %d records, %d bytes", len(s.mem), s.memBytes)
	}
	s.mu.Unlock()
	appendSync(t, s, 201, 205)
	if got := readAll(t, s); !equalSeqs(got, seqRange(201, 205)) {
		t.Errorf("read %v, want 201..205", got)
	}
}

func TestSpoolReaderSwitchesBetweenFileAndMemory(t *testing.T) {
	s, err := OpenSpool(t.TempDir(), 1<<30, SpoolOptions{SegmentBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rec := testRecord(1)
	s.memMax = 10 * len(rec.Data)
	next := uint64(1)
	// Alternate: fall behind (file), catch up (memory), again and again,
	// all within one segment.
	for round := 0; round < 5; round++ {
		from := next
		for i := 0; i < 6; i++ {
			appendSync(t, s, next, next+4)
			next += 5
		}
		b, err := s.ReadBatch(7, 1<<20) // from the file: memory lost the oldest
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		got := []uint64{}
		for _, r := range b {
			got = append(got, r.Seq)
		}
		rest := readAll(t, s)
		got = append(got, rest...)
		if !equalSeqs(got, seqRange(from, next-1)) {
			t.Fatalf("round %d: read %v, want %d..%d", round, got, from, next-1)
		}
		appendSync(t, s, next, next+1) // from memory
		next += 2
		if got := readAll(t, s); !equalSeqs(got, seqRange(next-2, next-1)) {
			t.Fatalf("round %d: read %v from memory, want %d..%d", round, got, next-2, next-1)
		}
	}
}

// TestEventHead: the in-place read of instance and hash agrees with
// decoding the JSON, for sealed events and for anything else.
func TestEventHead(t *testing.T) {
	decode := func(data []byte) (string, string) {
		var h struct{ Instance, Hash string }
		if json.Unmarshal(data, &h) != nil {
			return "", ""
		}
		return h.Instance, h.Hash
	}
	ev := newTestEvent(7)
	ev.Instance, ev.Seq, ev.ID = "proxy-a.example", 7, "01J0000000000000000000000A"
	ev.Time = time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	ev.PrevHash = "sha256:" + strings.Repeat("ab", 32)
	sealed, err := seal(ev)
	if err != nil {
		t.Fatal(err)
	}
	inputs := [][]byte{
		sealed,
		[]byte(`{"schema":1,"instance":"x\"y","hash":"h"}`),
		[]byte(`{"schema":1,"instance":"a\\u0041","seq":1,"hash":"h"}`),
		[]byte(`{"hash":"first","schema":1,"instance":"i"}`),
		[]byte(`{"schema":1,"instance":"i","seq":2,"prev_hash":"p","hash":"h2","reason":"x,\"hash\":\"fake\""}`),
		[]byte(`{"schema":1,"instance":"i"`),
		[]byte(`not json`),
		[]byte(`{"schema":1,"id":"a","time":"t","instance":"i","nested":{"a":1,"hash":"fake"},"hash":"real"}`),
		[]byte(`{"schema":1,"id":"a","time":"t","instance":"i","seq":3,"prev_hash":"","hash":"h3","x":1}`),
		[]byte(`{"schema":1,"id":"a","time":"t","instance":"i","seq":3,"prev_hash":"p\"q","hash":"h3"}`),
	}
	for _, in := range inputs {
		gi, gh := eventHead(in)
		wi, wh := decode(in)
		if gi != wi || gh != wh {
			t.Errorf("eventHead(%s) = %q, %q; decoding gives %q, %q", in, gi, gh, wi, wh)
		}
	}
	if inst, h, ok := sealedHead(sealed); !ok || inst != "proxy-a.example" || h != ev.Hash || h == "" {
		t.Errorf("sealed event head = %q, %q; want proxy-a.example, %q", inst, h, ev.Hash)
	}
}

// TestSmallSpoolAcceptsUntilNearlyFull: the smallest spool (64KiB) keeps
// accepting until an eighth of it is left, rather than refusing (and a
// fail-closed proxy answering 503) from its second event.
func TestSmallSpoolAcceptsUntilNearlyFull(t *testing.T) {
	const maxBytes = 64 << 10
	s, err := OpenSpool(t.TempDir(), maxBytes, SpoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	size := int64(frameSize(new(testRecord(1))))
	for seq := uint64(1); ; seq++ {
		accepting := s.Accepting()
		bytes := s.Stats().Bytes
		if want := bytes+maxBytes/8 <= maxBytes; accepting != want {
			t.Fatalf("with %d of %d bytes used, Accepting() = %v, want %v", bytes, maxBytes, accepting, want)
		}
		if !accepting {
			if bytes < maxBytes-maxBytes/8-size {
				t.Fatalf("stopped accepting with %d of %d bytes used", bytes, maxBytes)
			}
			return
		}
		appendSync(t, s, seq, seq)
	}
}

// TestFailingSpoolAcceptsOnlyAfterAProbe: a failing spool says it accepts
// again only when a probe write succeeds, not merely because its retry
// wait has passed (fail-closed forwards on that answer).
func TestFailingSpoolAcceptsOnlyAfterAProbe(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(dir, 1<<20, SpoolOptions{RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.mu.Lock()
	s.err, s.failedAt = errors.New("no space left on device"), time.Now().Add(-time.Second)
	s.mu.Unlock()
	// The probe cannot be written: a directory is in its way.
	if err := os.MkdirAll(filepath.Join(dir, ".probe", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if s.Accepting() {
		t.Fatal("a failing spool whose probe fails says it accepts")
	}
	os.RemoveAll(filepath.Join(dir, ".probe"))
	time.Sleep(5 * time.Millisecond)
	if !s.Accepting() {
		t.Fatal("a failing spool whose probe succeeds does not accept")
	}
	if _, err := os.Stat(filepath.Join(dir, ".probe")); !os.IsNotExist(err) {
		t.Errorf("probe file left behind: %v", err)
	}
}
