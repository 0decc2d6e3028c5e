package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrSpoolFull is returned by Spool.Append when the event does not fit
// under max_bytes. It wraps ErrUnavailable.
var ErrSpoolFull = fmt.Errorf("audit: spool full: %w", ErrUnavailable)

// errSpoolSeq means an Append did not continue the spool's sequence (the
// spool discarded unwritten records after a write failure); the caller
// resynchronises with Tail.
var errSpoolSeq = errors.New("audit: spool: sequence does not continue the spool")

// Spool is the write-ahead log of durable and fail-closed modes: an
// append-only sequence of segment files under one directory holding encoded
// events in Seq order, from the oldest event the sink has not acknowledged
// to the newest recorded one.
//
// Contract:
//
//   - Append and Sync are safe for concurrent use; Append must be called in
//     Seq order (the Pipeline calls it under its chain lock). Append buffers
//     the record and returns a Ticket; Sync(ctx, ticket) returns once that
//     record is written and fsync'd. The spool's committer goroutine writes
//     everything buffered with one write and one fsync (group commit), back
//     to back while records keep coming (see spool_commit.go).
//   - What Sync confirmed survives a crash of the process or the machine.
//     What was only appended may be lost; a record torn by a crash is found
//     by its length and CRC-32C and cut off when the spool is opened, and
//     the loss is reported in Recovery.
//   - ReadBatch, Ack and the reader position belong to one goroutine (the
//     shipper). ReadBatch only returns records confirmed by Sync. Recently
//     committed records are also kept in memory (up to spoolMemBytes of
//     event JSON), so that a shipper keeping up reads them without reading
//     the file back; a shipper behind (an outage, a restart) reads the
//     segments. Ack(seq) records that the sink holds every event up to
//     seq; segments entirely at or below it are deleted. The acknowledgement is written without
//     fsync: after a crash a few acknowledged events may be delivered
//     again, which sinks de-duplicate by Seq.
//   - Bytes counts every segment file plus what is buffered; an Append that
//     would take it past max_bytes fails with ErrSpoolFull.
//   - A failed write or fsync makes the spool refuse Appends (wrapping
//     ErrUnavailable) and discards what was buffered but not confirmed, so
//     that the chain can continue from Tail without a gap; after a second
//     the spool truncates the active segment to its confirmed size and
//     accepts again.
//   - One process at a time: Open takes an advisory lock on the directory.
//
// Record format (little endian): u32 body length, u32 CRC-32C of the body,
// body = u64 seq, i64 time (Unix microseconds), u16 id length, u32 key
// length, id, key, event JSON. Segment files are named <first seq>.seg
// (20 digits); the file "ack" holds the acknowledged seq and its CRC.
type Spool struct {
	dir      string
	maxBytes int64
	segBytes int64
	log      *slog.Logger
	table    *crc32.Table
	lock     *os.File
	ackFile  *os.File
	recovery Recovery
	// tailInstance is the instance of the last record found by Open.
	tailInstance string

	mu          sync.Mutex
	pending     []byte    // framed records waiting for the next commit
	pendRecs    []Encoded // the same records, for the reader
	spare       []byte
	spareRecs   []Encoded
	mem         []Encoded // committed records, contiguous, not yet read (see ReadBatch)
	memBytes    int
	memMax      int // spoolMemBytes; tests lower it
	pendFirst   uint64
	pendLast    uint64
	pendHash    string
	pendN       int
	pendGroup   *commitGroup // the outcome of the commit that will take the pending records
	committing  bool
	commitGroup *commitGroup  // the running commit's
	flushed     chan struct{} // closed after every commit attempt, then replaced
	kick        chan struct{} // wakes the committer (capacity 1)
	stopCommit  chan struct{}
	commitExit  chan struct{} // closed when the committer has returned
	err         error         // sticky write failure
	failedAt    time.Time
	retryWait   time.Duration
	appended    uint64 // last seq appended (buffered or durable)
	appendHash  string
	durable     uint64 // last seq written and fsync'd
	durableHash string
	acked       uint64
	bytes       int64
	segs        []*spoolSegment // oldest first; the last one is active
	cur         *os.File        // active segment, written only by the committer
	closed      bool
	commits     uint64
	records     uint64

	// Reader state: the shipper's goroutine only.
	rnext  uint64 // next seq to read
	rfirst uint64 // first seq of the segment rfile belongs to
	roff   int64  // offset in rfile of the record rseq
	rseq   uint64 // behind rnext after reads from memory
	rfile  *os.File
}

type spoolSegment struct {
	first uint64 // seq of the first record, from the file name
	last  uint64 // seq of the last confirmed record
	size  int64  // confirmed bytes
	path  string
}

// Recovery reports what Open found after an unclean stop.
type Recovery struct {
	// TornBytes were cut off the end of segments (a record torn by a crash,
	// or corruption).
	TornBytes int64
	// LostRecords estimates how many records those bytes held (at least one
	// per cut) plus sequence gaps between segments.
	LostRecords uint64
	// Unacked is how many events were waiting for the sink.
	Unacked uint64
}

// SpoolStats is a snapshot of the spool's counters.
type SpoolStats struct {
	Appended, Durable, Acked uint64
	Bytes                    int64
	Segments                 int
	// Commits counts group commits (write + fsync); Records the records
	// they wrote. Records/Commits is the group-commit factor.
	Commits, Records uint64
	Failed           bool
	// Err is the write failure while Failed; MaxBytes is audit.spool.max_bytes.
	Err      string
	MaxBytes int64
}

const (
	frameHeader    = 8             // length + CRC
	bodyHeader     = 8 + 8 + 2 + 4 // seq, time, id length, key length
	maxFrameBody   = 16 << 20      // larger lengths are corruption
	segSuffix      = ".seg"
	segNameFormat  = "%020d.seg"
	ackFileName    = "ack"
	maxAckRecord   = 8 + 1 + 255 + 1 + 255 + 4 // seq, hash, instance (length-prefixed), CRC
	spoolRetryWait = time.Second               // between a write failure and the next attempt
	minSegBytes    = 4 << 10
	maxSegBytes    = 64 << 20
	readChunk      = 1 << 20 // bytes read per step at most (a larger record is read whole)
	spoolMemBytes  = 8 << 20 // event JSON of committed records kept in memory for the reader
)

// SpoolOptions tunes a Spool.
type SpoolOptions struct {
	Logger *slog.Logger
	// SegmentBytes is the size at which a new segment file is started
	// (default max_bytes/16, between 4KiB and 64MiB). Space is freed a whole
	// segment at a time.
	SegmentBytes int64
	// RetryWait is how long the spool refuses Appends after a write
	// failure before it tries again (default 1s).
	RetryWait time.Duration
}

// Ticket identifies an appended record for Sync.
type Ticket struct {
	seq   uint64
	group *commitGroup // nil: nothing to wait for
}

// Seq is the record's seq.
func (t Ticket) Seq() uint64 { return t.seq }

// OpenSpool opens (creating if needed) the spool in dir, checks every
// record, cuts off a torn tail and positions the reader at the first
// unacknowledged event. See Recovery for what it found.
func OpenSpool(dir string, maxBytes int64, opts SpoolOptions) (*Spool, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	seg := opts.SegmentBytes
	if seg <= 0 {
		seg = min(max(maxBytes/16, minSegBytes), maxSegBytes)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: spool: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &Spool{
		dir: dir, maxBytes: maxBytes, segBytes: seg,
		log:       opts.Logger.With("component", "audit.spool", "dir", dir),
		table:     crc32.MakeTable(crc32.Castagnoli),
		lock:      lock,
		flushed:   make(chan struct{}),
		pendGroup: newCommitGroup(),
		kick:      make(chan struct{}, 1),
		memMax:    spoolMemBytes,
		retryWait: opts.RetryWait,
	}
	if s.retryWait <= 0 {
		s.retryWait = spoolRetryWait
	}
	if err := s.load(); err != nil {
		s.closeFiles()
		return nil, err
	}
	s.stopCommit, s.commitExit = make(chan struct{}), make(chan struct{})
	go s.commitLoop()
	return s, nil
}

// load scans the directory: segments, the acknowledgement, the tail.
func (s *Spool) load() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("audit: spool: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, segSuffix) {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 10, 64)
		if err != nil || first == 0 {
			s.log.Warn("audit: ignoring a file that is not a spool segment", "file", name)
			continue
		}
		s.segs = append(s.segs, &spoolSegment{first: first, last: first - 1, path: filepath.Join(s.dir, name)})
	}
	slices.SortFunc(s.segs, func(a, b *spoolSegment) int { return cmpU64(a.first, b.first) })

	s.ackFile, err = os.OpenFile(filepath.Join(s.dir, ackFileName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit: spool: %w", err)
	}
	var ab [maxAckRecord]byte
	n, _ := s.ackFile.ReadAt(ab[:], 0)
	ackSeq, ackHash, ackInstance, ackOK := s.parseAck(ab[:n])
	if ackOK {
		s.acked = ackSeq
	}

	var lastData []byte
	kept := s.segs[:0]
	for i, sg := range s.segs {
		isLast := i == len(s.segs)-1
		if len(kept) > 0 {
			prev := kept[len(kept)-1]
			if sg.first != prev.last+1 {
				gap := sg.first - (prev.last + 1)
				if sg.first < prev.last+1 {
					return fmt.Errorf("audit: spool: segment %s overlaps the previous one; move the spool aside", sg.path)
				}
				s.recovery.LostRecords += gap
				s.log.Error("audit: spool: events missing between segments", "after_seq", prev.last, "next_seq", sg.first, "lost", gap)
			}
		}
		data, err := s.scanSegment(sg, isLast)
		if err != nil {
			return err
		}
		if sg.size == 0 {
			if err := os.Remove(sg.path); err != nil {
				return fmt.Errorf("audit: spool: %w", err)
			}
			continue
		}
		if data != nil {
			lastData = data
		}
		kept = append(kept, sg)
	}
	s.segs = kept

	if len(s.segs) == 0 && ackOK && ackSeq > 0 {
		// Everything was acknowledged and deleted (or the only records
		// left were torn): the acknowledgement is the tail.
		s.appended, s.durable = ackSeq, ackSeq
		s.appendHash, s.durableHash, s.tailInstance = ackHash, ackHash, ackInstance
	}
	if len(s.segs) > 0 {
		if first := s.segs[0].first; s.acked < first-1 {
			s.acked = first - 1
		}
		tail := s.segs[len(s.segs)-1]
		s.appended, s.durable = tail.last, tail.last
		s.tailInstance, s.appendHash = eventHead(lastData)
		s.durableHash = s.appendHash
		if s.acked > tail.last {
			s.acked = tail.last
		}
		s.recovery.Unacked = tail.last - s.acked
	}
	for _, sg := range s.segs {
		s.bytes += sg.size
	}
	// Delete what is acknowledged (keeping the active segment), then open
	// the active segment for appending.
	s.deleteAcked()
	if len(s.segs) > 0 {
		tail := s.segs[len(s.segs)-1]
		f, err := os.OpenFile(tail.path, os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("audit: spool: %w", err)
		}
		if _, err := f.Seek(tail.size, io.SeekStart); err != nil {
			f.Close()
			return fmt.Errorf("audit: spool: %w", err)
		}
		s.cur = f
	}
	s.rnext = s.acked + 1
	return nil
}

// scanSegment validates sg's records, sets its last seq and size, cuts off
// anything invalid, and returns the last record's event JSON. It also
// positions the reader when the first unacknowledged record is in sg.
func (s *Spool) scanSegment(sg *spoolSegment, isLast bool) ([]byte, error) {
	b, err := os.ReadFile(sg.path)
	if err != nil {
		return nil, fmt.Errorf("audit: spool: %w", err)
	}
	var off int64
	var lastData []byte
	next := sg.first
	for off < int64(len(b)) {
		rec, n, ok := s.parseFrame(b[off:])
		if !ok || rec.Seq != next {
			break
		}
		lastData = rec.Data
		off += int64(n)
		next++
	}
	sg.last = next - 1
	sg.size = off
	if cut := int64(len(b)) - off; cut > 0 {
		s.recovery.TornBytes += cut
		s.recovery.LostRecords++
		if isLast {
			s.log.Warn("audit: spool: cutting off a record torn by an unclean stop", "segment", sg.path, "offset", off, "bytes", cut, "last_intact_seq", sg.last)
		} else {
			s.log.Error("audit: spool: segment is corrupt; cutting it short", "segment", sg.path, "offset", off, "bytes", cut, "last_intact_seq", sg.last)
		}
		if err := os.Truncate(sg.path, off); err != nil {
			return nil, fmt.Errorf("audit: spool: truncate torn segment: %w", err)
		}
	}
	return lastData, nil
}

// parseFrame decodes one record at the start of b. ok is false when b does
// not start with a whole valid record.
func (s *Spool) parseFrame(b []byte) (rec Encoded, n int, ok bool) {
	if len(b) < frameHeader+bodyHeader {
		return rec, 0, false
	}
	ln := binary.LittleEndian.Uint32(b[0:4])
	if ln < bodyHeader || ln > maxFrameBody || int(ln) > len(b)-frameHeader {
		return rec, 0, false
	}
	body := b[frameHeader : frameHeader+int(ln)]
	if crc32.Checksum(body, s.table) != binary.LittleEndian.Uint32(b[4:8]) {
		return rec, 0, false
	}
	idLen := int(binary.LittleEndian.Uint16(body[16:18]))
	keyLen := int(binary.LittleEndian.Uint32(body[18:22]))
	if bodyHeader+idLen+keyLen > len(body) {
		return rec, 0, false
	}
	p := body[bodyHeader:]
	rec.Seq = binary.LittleEndian.Uint64(body[0:8])
	rec.Time = time.UnixMicro(int64(binary.LittleEndian.Uint64(body[8:16]))).UTC()
	rec.ID = string(p[:idLen])
	rec.Key = string(p[idLen : idLen+keyLen])
	rec.Data = p[idLen+keyLen:]
	return rec, frameHeader + int(ln), true
}

// frameSize is the spool bytes e takes.
func frameSize(e *Encoded) int {
	return frameHeader + bodyHeader + len(e.ID) + len(e.Key) + len(e.Data)
}

// appendFrame frames e onto b.
func (s *Spool) appendFrame(b []byte, e *Encoded) []byte {
	start := len(b)
	ln := bodyHeader + len(e.ID) + len(e.Key) + len(e.Data)
	b = binary.LittleEndian.AppendUint32(b, uint32(ln))
	b = binary.LittleEndian.AppendUint32(b, 0) // CRC, filled below
	b = binary.LittleEndian.AppendUint64(b, e.Seq)
	b = binary.LittleEndian.AppendUint64(b, uint64(e.Time.UnixMicro()))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(e.ID)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Key)))
	b = append(b, e.ID...)
	b = append(b, e.Key...)
	b = append(b, e.Data...)
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(b[start+frameHeader:], s.table))
	return b
}

// Recovery reports what Open found.
func (s *Spool) Recovery() Recovery { return s.recovery }

// TailInstance is the instance of the newest record Open found ("" when
// the spool was empty).
func (s *Spool) TailInstance() string { return s.tailInstance }

// Tail returns the Seq and Hash of the last appended record (0, "" when
// the spool has never held one).
func (s *Spool) Tail() (uint64, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appended, s.appendHash
}

// continueFrom makes an empty spool continue the chain after seq: its first
// record will be seq+1, and everything up to seq counts as acknowledged.
// It does nothing when the spool holds records.
func (s *Spool) continueFrom(seq uint64, hash string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.segs) > 0 || s.pendN > 0 || s.appended >= seq {
		return
	}
	s.appended, s.durable, s.acked = seq, seq, seq
	s.appendHash, s.durableHash = hash, hash
	s.rnext = seq + 1
}

// resetIfDrained empties a spool whose every record is acknowledged and
// makes it continue after seq. It reports false, changing nothing, when
// unacknowledged records remain.
func (s *Spool) resetIfDrained(seq uint64, hash, instance string) (bool, error) {
	s.mu.Lock()
	if s.acked < s.appended || s.pendN > 0 || s.committing {
		s.mu.Unlock()
		return false, nil
	}
	doomed := s.segs
	s.segs = nil
	s.bytes = 0
	if s.cur != nil {
		s.cur.Close()
		s.cur = nil
	}
	if s.rfile != nil {
		s.rfile.Close()
		s.rfile = nil
	}
	s.appended, s.durable, s.acked = 0, 0, 0
	s.mu.Unlock()
	for _, sg := range doomed {
		if err := os.Remove(sg.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("audit: spool: %w", err)
		}
	}
	// The acknowledgement record goes too: left as it was, it would
	// count the new chain's first events as acknowledged (a new instance
	// starts again at seq 1) and have them deleted undelivered.
	if seq == 0 {
		if err := s.ackFile.Truncate(0); err != nil {
			return false, fmt.Errorf("audit: spool: reset ack: %w", err)
		}
		if err := s.ackFile.Sync(); err != nil {
			return false, fmt.Errorf("audit: spool: reset ack: %w", err)
		}
	} else if err := s.Ack(seq, hash, instance); err != nil {
		return false, err
	}
	s.mu.Lock()
	s.appended, s.durable, s.acked = seq, seq, seq
	s.appendHash, s.durableHash, s.tailInstance = hash, hash, instance
	s.rnext, s.rseq = seq+1, seq
	s.mu.Unlock()
	return true, nil
}

// Append buffers e (whose Seq must follow the last appended one) for the
// next group commit, which the committer starts at once unless one is
// running, and returns the Ticket to Sync on. The spool keeps e.Data for
// the reader: the caller must not modify it. hash is the event's
// Hash, kept for Tail. It fails with ErrSpoolFull, with an error wrapping
// ErrUnavailable while the spool is failing, or with ErrClosed.
func (s *Spool) Append(e Encoded, hash string) (Ticket, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Ticket{}, fmt.Errorf("audit: spool: %w", ErrClosed)
	}
	if s.err != nil {
		if time.Since(s.failedAt) < s.retryWait || !s.recoverLocked() {
			return Ticket{}, fmt.Errorf("audit: spool failing (%v): %w", s.err, ErrUnavailable)
		}
	}
	if e.Seq != s.appended+1 && !(s.appended == 0 && len(s.segs) == 0 && s.pendN == 0) {
		return Ticket{}, errSpoolSeq
	}
	n := int64(frameSize(&e))
	if n-frameHeader > maxFrameBody {
		return Ticket{}, fmt.Errorf("audit: spool: event of %d bytes is too large: %w", n, ErrUnavailable)
	}
	if s.bytes+n > s.maxBytes {
		return Ticket{}, ErrSpoolFull
	}
	if s.pendN == 0 {
		s.pendFirst = e.Seq
	}
	s.pending = s.appendFrame(s.pending, &e)
	s.pendRecs = append(s.pendRecs, e)
	s.pendN++
	s.pendLast, s.pendHash = e.Seq, hash
	s.appended, s.appendHash = e.Seq, hash
	s.bytes += n
	if s.pendN == 1 {
		select {
		case s.kick <- struct{}{}:
		default: // the committer is already kicked
		}
	}
	return Ticket{seq: e.Seq, group: s.pendGroup}, nil
}

// Accepting reports whether an Append of a typical event would be taken
// now: not failing, and not within acceptMargin of max_bytes. While the
// spool is failing it answers yes only once a probe (acceptMargin bytes
// written and fsync'd beside the segments, then removed) succeeds, at most
// once per retry wait: fail-closed forwards a request on this answer and
// records its event after, so the answer must not be a guess (a request
// let through to see whether the disk had room again was forwarded and
// then could not be audited).
func (s *Spool) Accepting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.bytes+s.acceptMargin() > s.maxBytes {
		return false
	}
	if s.err == nil {
		return true
	}
	if time.Since(s.failedAt) < s.retryWait {
		return false
	}
	if err := s.probe(); err != nil {
		s.failedAt = time.Now()
		return false
	}
	return true
}

// probe writes and fsyncs acceptMargin bytes into a file beside the
// segments and removes it.
func (s *Spool) probe() error {
	p := filepath.Join(s.dir, ".probe")
	defer os.Remove(p)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(make([]byte, s.acceptMargin()))
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// acceptMargin is the room Accepting wants left under max_bytes: 64KiB
// (dozens of typical events), or an eighth of max_bytes for a small spool,
// which would otherwise refuse events from its first one (a 64KiB spool
// has no room beyond 64KiB).
func (s *Spool) acceptMargin() int64 { return min(64<<10, s.maxBytes/8) }

// Stats returns a snapshot of the spool's counters.
func (s *Spool) Stats() SpoolStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SpoolStats{
		Appended: s.appended, Durable: s.durable, Acked: s.acked,
		Bytes: s.bytes, Segments: len(s.segs),
		Commits: s.commits, Records: s.records,
		Failed: s.err != nil, MaxBytes: s.maxBytes,
	}
	if s.err != nil {
		st.Err = s.err.Error()
	}
	return st
}

// Close commits nothing more (call Flush first): it waits for a running
// commit, stops the committer, releases the files and the directory lock.
// Appends and Syncs of records never committed fail with ErrClosed
// afterwards.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stopCommit)
	<-s.commitExit
	s.mu.Lock()
	s.pendGroup.end(fmt.Errorf("audit: spool: %w", ErrClosed)) // records never committed
	s.pendGroup = newCommitGroup()
	s.mu.Unlock()
	return s.closeFiles()
}

func (s *Spool) closeFiles() error {
	var errs []error
	for _, f := range []*os.File{s.cur, s.rfile, s.ackFile, s.lock} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	s.cur, s.rfile, s.ackFile, s.lock = nil, nil, nil, nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("audit: spool close: %w", err)
	}
	return nil
}

// eventHead extracts the instance and hash of an event's JSON ("" when
// absent or unreadable).
func eventHead(data []byte) (instance, hash string) {
	if data == nil {
		return "", ""
	}
	// Events sealed here start with schema, id, time, instance, seq,
	// prev_hash and hash, none of them escaped (sealBody refuses values
	// that would need it): read the two fields in place. Anything else
	// (an event encoded elsewhere) is decoded.
	if inst, h, ok := sealedHead(data); ok {
		return inst, h
	}
	var h struct {
		Instance string `json:"instance"`
		Hash     string `json:"hash"`
	}
	if err := json.Unmarshal(data, &h); err != nil {
		return "", ""
	}
	return h.Instance, h.Hash
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// sealedHead reads instance and hash from an event laid out as sealBody
// writes it: {"schema":N,"id":"…","time":"…","instance":"…","seq":N,
// "prev_hash":"…","hash":"…", with no escapes in those values. Anything
// else is not ok, and is decoded instead.
func sealedHead(b []byte) (instance, hash string, ok bool) {
	lit := func(s string) bool {
		if !bytes.HasPrefix(b, []byte(s)) {
			return false
		}
		b = b[len(s):]
		return true
	}
	digits := func() bool {
		n := 0
		for n < len(b) && b[n] >= '0' && b[n] <= '9' {
			n++
		}
		b = b[n:]
		return n > 0
	}
	str := func() (string, bool) {
		for i, c := range b {
			switch c {
			case '\\':
				return "", false
			case '"':
				v := string(b[:i])
				b = b[i:]
				return v, true
			}
		}
		return "", false
	}
	if !lit(`{"schema":`) || !digits() || !lit(`,"id":"`) {
		return "", "", false
	}
	if _, ok := str(); !ok || !lit(`","time":"`) {
		return "", "", false
	}
	if _, ok := str(); !ok || !lit(`","instance":"`) {
		return "", "", false
	}
	if instance, ok = str(); !ok || !lit(`","seq":`) || !digits() || !lit(`,"prev_hash":"`) {
		return "", "", false
	}
	if _, ok := str(); !ok || !lit(`","hash":"`) {
		return "", "", false
	}
	if hash, ok = str(); !ok {
		return "", "", false
	}
	return instance, hash, true
}
