package audit

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// The spool's group commit.
//
// One goroutine, the committer, writes and fsyncs: whenever records are
// pending it takes all of them, writes them with one write and one fsync,
// and then wakes exactly the Sync calls waiting for those records. Records
// appended while a commit runs wait for the next one, which starts as soon
// as the running one ends (after letting appends in progress finish). So
// commits follow each other back to back under load, each covering
// everything appended meanwhile; a lone record is written at once when the
// spool is idle; and every Record is woken once, by the commit that made
// it durable.

// commitGroup is the outcome of one commit attempt, shared by the Sync
// calls of the records it takes: they wait for done and read err without
// taking the spool's lock.
type commitGroup struct {
	done chan struct{} // closed when the attempt has ended
	err  error         // the outcome; written before done is closed
}

func newCommitGroup() *commitGroup { return &commitGroup{done: make(chan struct{})} }

func (g *commitGroup) end(err error) {
	g.err = err
	close(g.done)
}

// Sync returns once the ticket's record is written and fsync'd, or with
// an error wrapping ErrUnavailable when the write failed (the record is
// discarded), or wrapping ErrClosed when the spool was closed before the
// record was written, or with ctx's error (the record may then still be
// written).
func (s *Spool) Sync(ctx context.Context, t Ticket) error {
	if t.group == nil {
		return nil
	}
	select {
	case <-t.group.done:
		if err := t.group.err; err != nil {
			return fmt.Errorf("audit: spool: record %d not written: %w", t.seq, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("audit: waiting for the spool: %w", ctx.Err())
	}
}

// Flush returns once everything appended so far is written and fsync'd
// (see Sync).
func (s *Spool) Flush(ctx context.Context) error {
	s.mu.Lock()
	t := Ticket{seq: s.appended}
	switch {
	case s.pendN > 0:
		t.group = s.pendGroup
	case s.committing:
		t.group = s.commitGroup
	}
	s.mu.Unlock()
	return s.Sync(ctx, t)
}

// commitLoop is the committer: it commits pending records until the spool
// is closed.
func (s *Spool) commitLoop() {
	defer close(s.commitExit)
	for {
		select {
		case <-s.kick:
		case <-s.stopCommit:
			return
		}
		s.mu.Lock()
		for s.pendN > 0 && !s.closed {
			s.commitLocked()
		}
		s.mu.Unlock()
	}
}

// commitLocked writes and fsyncs everything pending, releasing s.mu while
// it does so (other goroutines keep appending), and wakes the records'
// waiters. Only the committer calls it.
func (s *Spool) commitLocked() {
	s.committing = true
	// Let goroutines about to append do so first (typically those the
	// previous commit woke), so that this fsync covers them too: yield while
	// the pending batch keeps growing. Fewer, larger commits leave the CPU
	// to the requests when it is short; when it is not, the yields cost
	// next to nothing.
	for range 8 {
		n := s.pendN
		s.mu.Unlock()
		runtime.Gosched()
		s.mu.Lock()
		if s.pendN == n {
			break
		}
	}
	buf, first, last, hash, n := s.pending, s.pendFirst, s.pendLast, s.pendHash, s.pendN
	recs := s.pendRecs
	group := s.pendGroup
	s.commitGroup = group
	s.pendGroup = newCommitGroup()
	s.pending, s.spare = s.spare[:0], nil
	s.pendRecs, s.spareRecs = s.spareRecs[:0], nil
	s.pendN = 0
	cur := s.cur
	var active *spoolSegment
	if len(s.segs) > 0 {
		active = s.segs[len(s.segs)-1]
	}
	rotate := cur == nil || active.size >= s.segBytes
	s.mu.Unlock()

	var newSeg *spoolSegment
	var newFile *os.File
	err := func() error {
		f := cur
		if rotate {
			path := filepath.Join(s.dir, fmt.Sprintf(segNameFormat, first))
			nf, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			newFile, newSeg = nf, &spoolSegment{first: first, last: first - 1, path: path}
			if err := syncDir(s.dir); err != nil {
				return err
			}
			f = nf
		}
		if _, err := f.Write(buf); err != nil {
			return err
		}
		return f.Sync()
	}()

	s.mu.Lock()
	s.committing = false
	s.commitGroup = nil
	s.commits++
	if err == nil {
		if newSeg != nil {
			if cur != nil {
				cur.Close()
			}
			s.cur = newFile
			s.segs = append(s.segs, newSeg)
			active = newSeg
		}
		active.size += int64(len(buf))
		active.last = last
		s.durable, s.durableHash = last, hash
		s.records += uint64(n)
		s.spare = buf
		s.keepLocked(recs)
		group.end(nil)
	} else {
		s.failLocked(err, int64(len(buf)), newFile, newSeg)
		group.end(fmt.Errorf("audit: spool write failed: %v: %w", err, ErrUnavailable))
	}
	clear(recs)
	s.spareRecs = recs[:0]
	close(s.flushed)
	s.flushed = make(chan struct{})
}

// keepLocked adds committed records to the reader's memory, dropping the
// oldest beyond memMax bytes of event JSON (the reader then reads them
// from the file).
func (s *Spool) keepLocked(recs []Encoded) {
	if len(recs) == 0 {
		return
	}
	if len(s.mem) > 0 && s.mem[len(s.mem)-1].Seq+1 != recs[0].Seq {
		s.dropMemLocked(len(s.mem)) // not contiguous (cannot happen): start afresh
	}
	s.mem = append(s.mem, recs...)
	for _, r := range recs {
		s.memBytes += len(r.Data)
	}
	n, over := 0, s.memBytes-s.memMax
	for over > 0 && n < len(s.mem)-1 {
		over -= len(s.mem[n].Data)
		n++
	}
	if n > 0 {
		s.dropMemLocked(n)
	}
}

// dropMemLocked forgets the first n records of the reader's memory.
func (s *Spool) dropMemLocked(n int) {
	for _, r := range s.mem[:n] {
		s.memBytes -= len(r.Data)
	}
	clear(s.mem[:n]) // let the event buffers go
	s.mem = s.mem[n:]
	if len(s.mem) == 0 {
		s.mem, s.memBytes = s.mem[:0:0], 0
	}
}

// failLocked handles a failed commit of failedBytes: the spool stops
// accepting, everything not confirmed is discarded (the Pipeline
// continues the chain from Tail) and its waiters are woken, and the active
// segment is cut back to its confirmed size.
func (s *Spool) failLocked(err error, failedBytes int64, newFile *os.File, newSeg *spoolSegment) {
	s.err, s.failedAt = err, time.Now()
	s.log.Error("audit: spool write failed; refusing events until it recovers", "err", err)
	if newFile != nil {
		newFile.Close()
		os.Remove(newSeg.path)
	}
	s.bytes -= failedBytes + int64(len(s.pending))
	s.pending = s.pending[:0]
	clear(s.pendRecs)
	s.pendRecs = s.pendRecs[:0]
	s.pendN = 0
	s.pendGroup.end(fmt.Errorf("audit: spool write failed before the record was written: %v: %w", err, ErrUnavailable))
	s.pendGroup = newCommitGroup()
	s.appended, s.appendHash = s.durable, s.durableHash
	s.recoverLocked()
	// Stay failed until the retry wait has passed, even if the cut worked:
	// a failing disk tends to fail again.
}

// recoverLocked reopens the active segment cut back to its confirmed size
// and clears the failure when that works and the retry wait has passed.
func (s *Spool) recoverLocked() bool {
	if s.cur != nil && len(s.segs) > 0 {
		active := s.segs[len(s.segs)-1]
		s.cur.Close()
		s.cur = nil
		f, err := os.OpenFile(active.path, os.O_WRONLY, 0o600)
		if err != nil {
			s.log.Error("audit: spool: cannot reopen the active segment", "err", err)
			return false
		}
		s.cur = f
		if err := f.Truncate(active.size); err != nil {
			s.log.Error("audit: spool: cannot cut the active segment back", "err", err)
			return false
		}
		if _, err := f.Seek(active.size, io.SeekStart); err != nil {
			return false
		}
	}
	if time.Since(s.failedAt) < s.retryWait {
		return false
	}
	s.log.Info("audit: spool accepting events again", "after", s.err)
	s.err = nil
	return true
}
