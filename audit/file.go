package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// FileSink writes events as JSON Lines (one event per line, exactly the
// spool's encoding) to cfg.Path, fsyncs after every batch, and rotates the
// file when the next batch would pass cfg.MaxBytes: Path becomes Path.1,
// Path.1 becomes Path.2, ..., and files beyond cfg.MaxFiles are deleted.
//
// Re-delivery is suppressed: the sink remembers the instance and seq of
// the last line it holds (read back from the file when it opens) and skips
// events of that instance at or below it. A line torn by a crash (no final
// newline) is cut off when the sink opens; the spool delivers it again.
//
// Publish and PublishEncoded are called from one goroutine; Status and
// Close are safe to call concurrently with them.
type FileSink struct {
	path     string
	maxBytes int64
	maxFiles int
	log      *slog.Logger

	mu       sync.Mutex
	f        *os.File
	size     int64
	lastInst string
	lastSeq  uint64
	// replayChecked: the first re-delivered event since the file was
	// opened matched the file's (see PublishEncoded).
	replayChecked bool
	err           error
	closed        bool
	buf           []byte
}

var _ EncodedSink = (*FileSink)(nil)

// FileSinkOptions tunes a FileSink.
type FileSinkOptions struct {
	Logger *slog.Logger
}

// NewFileSink opens (creating) the live file of cfg (after SetDefaults).
func NewFileSink(cfg FileConfig, opts FileSinkOptions) (*FileSink, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Path == "" {
		return nil, errors.New("audit: file sink: no path")
	}
	s := &FileSink{
		path: cfg.Path, maxBytes: int64(cfg.MaxBytes), maxFiles: max(cfg.MaxFiles, 1),
		log: opts.Logger.With("component", "audit.file", "path", cfg.Path),
	}
	if s.maxBytes <= 0 {
		s.maxBytes = DefaultFileMaxBytes
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		return nil, fmt.Errorf("audit: file sink: %w", err)
	}
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

// open opens the live file for appending, cutting off a torn last line and
// remembering the last event it holds.
func (s *FileSink) open() error {
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit: file sink: %w", err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return fmt.Errorf("audit: file sink: %w", err)
	}
	size, last, err := lastLine(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: file sink: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: file sink: %w", err)
	}
	if cut := fi.Size() - size; cut > 0 {
		var tailBytes []byte
		var ev Event
		if cut <= maxFrameBody {
			tailBytes = make([]byte, cut)
			if _, err := f.ReadAt(tailBytes, size); err != nil {
				tailBytes = nil
			}
		}
		if tailBytes != nil && decodeEvent(tailBytes, &ev) == nil {
			// A whole event that only lacks its newline (cut by hand,
			// or a crash between the two): end the line, keep the event.
			s.log.Warn("audit: the last line is a whole event without its newline; ending the line", "seq", ev.Seq)
			if _, err := f.WriteAt([]byte{'\n'}, fi.Size()); err != nil {
				f.Close()
				return fmt.Errorf("audit: file sink: %w", err)
			}
			size, last = fi.Size()+1, tailBytes
		} else {
			s.log.Warn("audit: cutting off a torn last line (the spool delivers it again)", "bytes", cut)
			if err := f.Truncate(size); err != nil {
				f.Close()
				return fmt.Errorf("audit: file sink: %w", err)
			}
		}
	}
	if _, err := f.Seek(size, io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("audit: file sink: %w", err)
	}
	if last == nil {
		// Just rotated: the newest event is at the end of Path.1.
		if prev, err := os.Open(s.path + ".1"); err == nil {
			_, last, _ = lastLine(prev)
			prev.Close()
		}
	}
	if last != nil {
		var h struct {
			Instance string `json:"instance"`
			Seq      uint64 `json:"seq"`
		}
		if json.Unmarshal(last, &h) == nil {
			s.lastInst, s.lastSeq = h.Instance, h.Seq
		}
	}
	s.f, s.size = f, size
	return nil
}

// lastLine returns the length of f up to and including its last newline,
// and the last complete line (without newline; nil when there is none).
func lastLine(f *os.File) (int64, []byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, nil, err
	}
	end := fi.Size()
	const chunk = 64 << 10
	var tail []byte
	for off := end; off > 0; {
		n := min(int64(chunk), off)
		off -= n
		b := make([]byte, n)
		if _, err := f.ReadAt(b, off); err != nil {
			return 0, nil, err
		}
		tail = append(b, tail...)
		// Find the last newline, then the one before it.
		i := bytes.LastIndexByte(tail, '\n')
		if i < 0 {
			continue
		}
		complete := off + int64(i) + 1
		j := bytes.LastIndexByte(tail[:i], '\n')
		if j < 0 && off > 0 {
			continue
		}
		return complete, tail[j+1 : i], nil
	}
	return 0, nil, nil
}

// Publish encodes events and writes them (see PublishEncoded).
func (s *FileSink) Publish(ctx context.Context, batch []*Event) error {
	enc := make([]Encoded, len(batch))
	for i, ev := range batch {
		data, err := json.Marshal(ev)
		if err != nil {
			return fmt.Errorf("audit: file sink: encode event %s: %w", ev.ID, err)
		}
		enc[i] = Encoded{Seq: ev.Seq, ID: ev.ID, Time: ev.Time, Key: ev.Key(), Data: data}
	}
	return s.PublishEncoded(ctx, enc)
}

// PublishEncoded appends one line per event not yet in the file and
// fsyncs; it returns nil once every line is on disk.
func (s *FileSink) PublishEncoded(ctx context.Context, batch []Encoded) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("audit: file sink: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("audit: file sink: %w", ErrClosed)
	}
	if len(batch) == 0 {
		return nil
	}
	if err := s.reopenIfGone(); err != nil {
		return s.fail(err)
	}
	if s.lastSeq > 0 && batch[0].Seq <= s.lastSeq {
		if inst, hash := eventHead(batch[0].Data); inst == s.lastInst {
			// Events the file already holds come again after a crash
			// (the spool resends what it had not seen acknowledged): the
			// first such event must be the one the file holds, or the
			// proxy's chain is not the file's (a data_dir restored from a
			// backup): skipping would throw away different events.
			if !s.replayChecked {
				held, err := s.hashAt(inst, batch[0].Seq)
				if err != nil {
					return s.fail(err)
				}
				if held != "" && held != hash {
					return s.fail(fmt.Errorf("%w: %s already holds a different event at seq %d of instance %s "+
						"(was data_dir restored from a backup? give this proxy a new audit.instance)", ErrChainConflict, s.path, batch[0].Seq, inst))
				}
				s.replayChecked = true
			}
			i := 0
			for i < len(batch) && batch[i].Seq <= s.lastSeq {
				i++
			}
			s.log.Info("audit: events the file already holds were delivered again (after a restart)", "skipped", i,
				"instance", inst, "through_seq", batch[i-1].Seq)
			batch = batch[i:]
		}
	}
	for len(batch) > 0 {
		s.buf = s.buf[:0]
		n := 0
		for n < len(batch) && (n == 0 || s.size+int64(len(s.buf)+len(batch[n].Data)+1) <= s.maxBytes) {
			s.buf = append(s.buf, batch[n].Data...)
			s.buf = append(s.buf, '\n')
			n++
		}
		if s.size > 0 && s.size+int64(len(s.buf)) > s.maxBytes {
			if err := s.rotate(); err != nil {
				return s.fail(err)
			}
			continue // refill for the fresh file
		}
		if _, err := s.f.Write(s.buf); err != nil {
			// Cut the partial write so that the retry starts clean.
			s.f.Truncate(s.size)
			s.f.Seek(s.size, io.SeekStart)
			return s.fail(err)
		}
		if err := s.f.Sync(); err != nil {
			return s.fail(err)
		}
		s.size += int64(len(s.buf))
		last := batch[n-1]
		s.lastSeq = last.Seq
		s.lastInst, _ = eventHead(last.Data)
		batch = batch[n:]
	}
	s.err = nil
	return nil
}

// ErrChainConflict: the sink already holds a different event under an
// event's instance and seq.
var ErrChainConflict = errors.New("audit: chain conflict")

// reopenIfGone reopens the live file when Path no longer names the file
// being written (deleted, or its directory; or replaced): writes into a
// deleted file would be acknowledged and lost.
func (s *FileSink) reopenIfGone() error {
	if s.f == nil {
		return nil
	}
	cur, err := s.f.Stat()
	if err != nil {
		return err
	}
	now, err := os.Stat(s.path)
	if err == nil && os.SameFile(cur, now) {
		return nil
	}
	s.log.Warn("audit: the audit file was removed or replaced while open; writing to a new one at its path", "err", err)
	s.f.Close()
	s.f = nil
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return err
	}
	s.replayChecked = false
	return s.open()
}

// hashAt returns the hash of the event of instance inst and seq held in
// the live file, or "" when the live file does not hold it.
func (s *FileSink) hashAt(inst string, seq uint64) (string, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxFrameBody+1024)
	for sc.Scan() {
		var h struct {
			Instance string `json:"instance"`
			Seq      uint64 `json:"seq"`
			Hash     string `json:"hash"`
		}
		if json.Unmarshal(sc.Bytes(), &h) == nil && h.Instance == inst && h.Seq == seq {
			return h.Hash, nil
		}
	}
	return "", sc.Err()
}

// rotate shifts Path.N to Path.N+1 (deleting what passes MaxFiles) and
// starts an empty live file.
func (s *FileSink) rotate() error {
	if err := s.f.Close(); err != nil {
		return err
	}
	s.f = nil
	for n := s.maxFiles - 1; n >= 1; n-- {
		from := s.path
		if n > 1 {
			from = s.path + "." + strconv.Itoa(n-1)
		}
		to := s.path + "." + strconv.Itoa(n)
		if err := os.Rename(from, to); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	// The oldest file (or, with MaxFiles 1, the live one) is replaced.
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return err
	}
	if err := syncDir(filepath.Dir(s.path)); err != nil {
		f.Close()
		return err
	}
	s.f, s.size = f, 0
	s.log.Info("audit: rotated the audit file", "keep", s.maxFiles)
	return nil
}

func (s *FileSink) fail(err error) error {
	s.err = err
	if s.f == nil {
		// A failed rotation: reopen whatever is live now.
		if oerr := s.open(); oerr != nil {
			s.log.Error("audit: file sink: reopening the audit file", "err", oerr)
		}
	}
	return fmt.Errorf("audit: file sink: %w", err)
}

// Status is not live after a failed write, until the next one succeeds.
func (s *FileSink) Status() SinkStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return SinkStatus{Detail: "closed"}
	}
	if s.err != nil {
		return SinkStatus{Detail: "audit file " + s.path + ": " + s.err.Error()}
	}
	return SinkStatus{Live: true}
}

// Close closes the file.
func (s *FileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.f == nil {
		return nil
	}
	if err := s.f.Close(); err != nil {
		return fmt.Errorf("audit: file sink: %w", err)
	}
	return nil
}

// FileSource reads a FileSink's files back: the rotated ones oldest first
// (Path.N ... Path.1), then the live one. Follow polls the live file and
// follows it across rotations.
//
// Events come in file order, which is Seq order per instance. A line not
// yet complete (being written) is not read until its newline arrives.
type FileSource struct {
	path    string
	poll    time.Duration
	foreign func(where string, err error)
}

// ReportForeign makes Read and Follow skip lines that are not audit
// events, calling fn for each, instead of failing on the first (see
// ForeignReporter).
func (s *FileSource) ReportForeign(fn func(where string, err error)) { s.foreign = fn }

var _ Source = (*FileSource)(nil)

// FileSourceOptions tunes a FileSource.
type FileSourceOptions struct {
	// Poll is how often Follow looks for new lines (default 200ms).
	Poll time.Duration
}

// NewFileSource reads the audit files at path (the live file's path).
func NewFileSource(path string, opts FileSourceOptions) *FileSource {
	if opts.Poll <= 0 {
		opts.Poll = 200 * time.Millisecond
	}
	return &FileSource{path: path, poll: opts.Poll}
}

// Read calls fn for every event with Time in [f.Since, f.Until) in the
// files as they are when Read reaches them. When neither the live file nor
// a rotated one exists, Read fails with an error naming the path that
// wraps fs.ErrNotExist: a mistyped path is not an empty audit trail. A
// directory at the path is an error too.
func (s *FileSource) Read(ctx context.Context, f Filter, fn func(*Event) (bool, error)) error {
	return s.read(ctx, f, fn, false)
}

// Follow is Read that then waits for new events until ctx is done. A live
// file that does not exist yet is waited for (a sink creates it when it
// opens), so Follow does not fail for a missing file.
func (s *FileSource) Follow(ctx context.Context, f Filter, fn func(*Event) (bool, error)) error {
	return s.read(ctx, f, fn, true)
}

// Close releases nothing: files are opened per call.
func (s *FileSource) Close() error { return nil }

// rotated lists Path.N files, oldest (highest N) first.
func (s *FileSource) rotated() ([]string, error) {
	matches, err := filepath.Glob(s.path + ".*")
	if err != nil {
		return nil, fmt.Errorf("audit: file source: %w", err)
	}
	type numbered struct {
		n    int
		path string
	}
	var files []numbered
	for _, m := range matches {
		n, err := strconv.Atoi(strings.TrimPrefix(m, s.path+"."))
		if err == nil && n > 0 {
			files = append(files, numbered{n, m})
		}
	}
	slices.SortFunc(files, func(a, b numbered) int { return b.n - a.n })
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = f.path
	}
	return out, nil
}

func (s *FileSource) read(ctx context.Context, f Filter, fn func(*Event) (bool, error), follow bool) error {
	files, err := s.rotated()
	if err != nil {
		return err
	}
	deliver := func(line []byte, where string) (bool, error) {
		var ev Event
		if err := decodeEvent(line, &ev); err != nil {
			if s.foreign == nil {
				return false, fmt.Errorf("audit: file source: %s: not an event: %w", where, err)
			}
			s.foreign(where, err)
			return true, nil
		}
		if !f.Since.IsZero() && ev.Time.Before(f.Since) || !f.Until.IsZero() && !ev.Time.Before(f.Until) {
			return true, nil
		}
		return fn(&ev)
	}
	var done os.FileInfo // the last rotated file read
	for _, path := range files {
		t, err := openTail(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue // rotated away meanwhile
		}
		if err != nil {
			return err
		}
		more, err := t.drain(ctx, deliver)
		t.close()
		if err == nil && more {
			more, err = s.incomplete(t)
		}
		if err != nil || !more {
			return err
		}
		done = t.info
	}
	t, err := openTail(s.path)
	if errors.Is(err, fs.ErrNotExist) && follow {
		t = &tail{path: s.path}
	} else if errors.Is(err, fs.ErrNotExist) {
		if len(files) > 0 {
			return nil // between a rotation's rename and the new live file
		}
		return noFileError{s.path}
	} else if err != nil {
		return err
	}
	defer func() { t.close() }() // t moves on to each new live file
	if t.f != nil {
		// Files rotated between the listing and this open.
		if more, err := s.readRotatedBetween(ctx, done, t.info, deliver); err != nil || !more {
			return err
		}
	}
	for {
		more, err := t.drain(ctx, deliver)
		if err == nil && more && !follow {
			_, err = s.incomplete(t)
		}
		if err != nil || !more || !follow {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.poll):
		}
		// Rotated (a new file at path) or truncated: finish the old file
		// (drained above, and a rename keeps it readable), then start over
		// on the new one.
		fi, err := os.Stat(s.path)
		if err != nil {
			continue
		}
		if t.f == nil || !os.SameFile(fi, t.info) || fi.Size() < t.off {
			if t.f != nil {
				if more, err := t.drain(ctx, deliver); err != nil || !more {
					return err
				}
			}
			nt, err := openTail(s.path)
			if err != nil {
				continue // the old file stays open; the next poll tries again
			}
			if t.f != nil {
				finished := t.info
				t.close()
				// Several rotations since the last poll, or one more
				// between the stat above and this open: read the files
				// rotated after the one just finished and before the new
				// live one, oldest first.
				if more, err := s.readRotatedBetween(ctx, finished, nt.info, deliver); err != nil || !more {
					nt.close()
					return err
				}
			}
			t = nt
		}
	}
}

// readRotatedBetween reads the rotated files newer than done (a file
// already read; nil: every rotated file is new) and older than next (the
// live file about to be read), oldest first. When done is no longer among
// them nothing is read.
func (s *FileSource) readRotatedBetween(ctx context.Context, done, next os.FileInfo, deliver func([]byte, string) (bool, error)) (bool, error) {
	files, err := s.rotated()
	if err != nil {
		return false, err
	}
	start := 0
	if done != nil {
		start = -1
		for i, path := range files {
			if fi, err := os.Stat(path); err == nil && os.SameFile(fi, done) {
				start = i + 1
			}
		}
		if start < 0 {
			return true, nil
		}
	}
	for _, path := range files[start:] {
		t, err := openTail(path)
		if err != nil {
			continue
		}
		if os.SameFile(t.info, next) {
			// next itself was rotated meanwhile: the caller reads it.
			t.close()
			break
		}
		more, err := t.drain(ctx, deliver)
		t.close()
		if err != nil || !more {
			return false, err
		}
	}
	return true, nil
}

// incomplete reports a file's last line that has no newline (a write in
// progress, a line torn by a crash, or a cut): it is no event, and a
// verification that ignored it would pass a trail whose end was damaged.
// Follow leaves the live file's to its writer.
func (s *FileSource) incomplete(t *tail) (bool, error) {
	if len(bytes.TrimSpace(t.carry)) == 0 {
		return true, nil
	}
	err := fmt.Errorf("incomplete last line (%d bytes without a newline): a write in progress, or torn by a crash (the proxy cuts it and writes the event again when it starts)", len(t.carry))
	where := t.path + ":" + strconv.Itoa(t.line+1)
	if s.foreign == nil {
		return false, fmt.Errorf("audit: file source: %s: %w", where, err)
	}
	s.foreign(where, err)
	return true, nil
}

// noFileError is a FileSource path with neither a live nor a rotated file.
type noFileError struct{ path string }

func (e noFileError) Error() string {
	return fmt.Sprintf("audit: file source: no audit file at %s (nor a rotated %s.N)", e.path, e.path)
}

func (e noFileError) Is(target error) bool { return target == fs.ErrNotExist }

// tail reads complete lines of one file, remembering where it stopped.
type tail struct {
	path  string
	f     *os.File
	info  os.FileInfo
	r     *bufio.Reader
	off   int64 // bytes consumed as complete lines
	carry []byte
	line  int
}

func openTail(path string) (*tail, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit: file source: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: file source: %w", err)
	}
	if fi.IsDir() {
		f.Close()
		return nil, fmt.Errorf("audit: file source: %s is a directory, not an audit file", path)
	}
	return &tail{path: path, f: f, info: fi, r: bufio.NewReaderSize(f, 256<<10)}, nil
}

// drain delivers every complete line now in the file. more is false when
// fn asked to stop.
func (t *tail) drain(ctx context.Context, fn func([]byte, string) (bool, error)) (more bool, err error) {
	if t.f == nil {
		return true, nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return false, nil
		}
		chunk, err := t.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			t.carry = append(t.carry, chunk...)
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				t.carry = append(t.carry, chunk...) // an incomplete line waits for its end
				return true, nil
			}
			return false, fmt.Errorf("audit: file source: %s: %w", t.path, err)
		}
		line := chunk
		if len(t.carry) > 0 {
			t.carry = append(t.carry, chunk...)
			line = t.carry
		}
		t.off += int64(len(line))
		t.line++
		body := bytes.TrimSpace(line)
		t.carry = t.carry[:0]
		if len(body) == 0 {
			continue
		}
		more, err := fn(body, t.path+":"+strconv.Itoa(t.line))
		if err != nil || !more {
			return false, err
		}
	}
}

func (t *tail) close() {
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
}
