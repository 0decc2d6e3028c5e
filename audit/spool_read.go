package audit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
)

// The spool's read side: the shipper reads confirmed records in Seq order
// and acknowledges what the sink stored.

// Waiter returns the last confirmed seq and a channel closed at the next
// commit, for a reader that found nothing new.
func (s *Spool) Waiter() (uint64, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.durable, s.flushed
}

// ReadBatch returns the next confirmed records after the reader position,
// at most maxN of them and about maxBytes of event JSON (at least one
// record when any is available), in Seq order, and advances the position.
// It returns an empty batch when nothing new is confirmed. The records come
// from memory when the reader is close behind the commits, else from the
// segment files; either way Data is never modified and stays valid.
func (s *Spool) ReadBatch(maxN, maxBytes int) ([]Encoded, error) {
	if out := s.readMem(maxN, maxBytes); out != nil {
		return out, nil
	}
	var out []Encoded
	for len(out) < maxN {
		s.mu.Lock()
		if s.rnext > s.durable {
			s.mu.Unlock()
			break
		}
		var sg *spoolSegment
		for _, g := range s.segs {
			if g.first <= s.rnext && s.rnext <= g.last {
				sg = g
				break
			}
		}
		if sg == nil {
			err := fmt.Errorf("audit: spool: seq %d to read is in no segment", s.rnext)
			s.mu.Unlock()
			return out, err
		}
		first, path, size := sg.first, sg.path, sg.size
		s.mu.Unlock()

		if s.rfile == nil || s.rfirst != first {
			if s.rfile != nil {
				s.rfile.Close()
				s.rfile = nil
			}
			f, err := os.Open(path)
			if err != nil {
				return out, fmt.Errorf("audit: spool: %w", err)
			}
			s.rfile, s.rfirst, s.roff, s.rseq = f, first, 0, first
		}
		if s.rseq != s.rnext {
			// Opened mid-segment, or the records since came from memory.
			if err := s.skipTo(s.rnext, size); err != nil {
				return out, err
			}
		}
		want := min(size-s.roff, int64(max(maxBytes, 0)+(maxN-len(out))*(frameHeader+bodyHeader+64)))
		want = min(want, readChunk)
		buf := make([]byte, want)
		if _, err := s.rfile.ReadAt(buf, s.roff); err != nil {
			return out, fmt.Errorf("audit: spool: read: %w", err)
		}
		rec, n, ok := s.parseFrame(buf)
		if !ok {
			// One record larger than the chunk: read it whole.
			if len(buf) >= 4 {
				ln := int64(binary.LittleEndian.Uint32(buf[0:4])) + frameHeader
				if ln <= size-s.roff && ln > int64(len(buf)) {
					buf = make([]byte, ln)
					if _, err := s.rfile.ReadAt(buf, s.roff); err != nil {
						return out, fmt.Errorf("audit: spool: read: %w", err)
					}
					rec, n, ok = s.parseFrame(buf)
				}
			}
			if !ok {
				return out, fmt.Errorf("audit: spool: corrupt record at %s offset %d", path, s.roff)
			}
		}
		used := 0
		for ok && len(out) < maxN && rec.Seq == s.rnext {
			out = append(out, rec)
			used += n
			s.rnext++
			maxBytes -= len(rec.Data)
			if maxBytes <= 0 {
				break
			}
			rec, n, ok = s.parseFrame(buf[used:])
		}
		if used == 0 {
			return out, fmt.Errorf("audit: spool: record at %s offset %d has seq %d, want %d", path, s.roff, rec.Seq, s.rnext)
		}
		s.roff += int64(used)
		s.rseq = s.rnext
		if maxBytes <= 0 {
			break
		}
	}
	return out, nil
}

// readMem is ReadBatch from the records kept in memory: nil when the
// next record to read is not there.
func (s *Spool) readMem(maxN, maxBytes int) []Encoded {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.mem) == 0 {
		return nil
	}
	if first := s.mem[0].Seq; first < s.rnext {
		// Read from the file meanwhile.
		s.dropMemLocked(int(min(s.rnext-first, uint64(len(s.mem)))))
	}
	if len(s.mem) == 0 || s.mem[0].Seq != s.rnext || maxN <= 0 {
		return nil
	}
	n, size := 0, 0
	for n < len(s.mem) && n < maxN && (n == 0 || size+len(s.mem[n].Data) <= maxBytes) {
		size += len(s.mem[n].Data)
		n++
	}
	out := s.mem[:n:n] // the reader's now; memory goes on after it
	s.mem = s.mem[n:]
	s.memBytes -= size
	s.rnext += uint64(n)
	return out
}

// skipTo advances the reader within its segment, from the record rseq at
// roff, to the record seq.
func (s *Spool) skipTo(seq uint64, size int64) error {
	b := make([]byte, size-s.roff)
	if _, err := s.rfile.ReadAt(b, s.roff); err != nil {
		return fmt.Errorf("audit: spool: read: %w", err)
	}
	off := 0
	for s.rseq < seq {
		_, n, ok := s.parseFrame(b[off:])
		if !ok {
			return fmt.Errorf("audit: spool: corrupt record at %s offset %d", s.rfile.Name(), s.roff+int64(off))
		}
		off += n
		s.rseq++
	}
	s.roff += int64(off)
	return nil
}

// Ack records that the sink holds every event up to seq (whose event has
// the given hash and instance): the reader never goes back before it, and
// segments entirely at or below it are deleted. The acknowledgement is
// fsync'd only before segments are deleted, so that the chain's tail is
// never lost with them.
func (s *Spool) Ack(seq uint64, hash, instance string) error {
	s.mu.Lock()
	if seq <= s.acked {
		s.mu.Unlock()
		return nil
	}
	s.acked = seq
	doomed := s.deleteAcked()
	s.mu.Unlock()

	if len(hash) > 255 || len(instance) > 255 {
		return errors.New("audit: spool: ack: hash or instance too long")
	}
	b := make([]byte, 0, maxAckRecord)
	b = binary.LittleEndian.AppendUint64(b, seq)
	b = append(b, byte(len(hash)))
	b = append(b, hash...)
	b = append(b, byte(len(instance)))
	b = append(b, instance...)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, s.table))
	if _, err := s.ackFile.WriteAt(b, 0); err != nil {
		return fmt.Errorf("audit: spool: write ack: %w", err)
	}
	if len(doomed) > 0 {
		if err := s.ackFile.Sync(); err != nil {
			return fmt.Errorf("audit: spool: sync ack: %w", err)
		}
	}
	var errs []error
	for _, sg := range doomed {
		if s.rfile != nil && s.rfirst == sg.first {
			s.rfile.Close()
			s.rfile = nil
		}
		if err := os.Remove(sg.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("audit: spool: delete acknowledged segments: %w", err)
	}
	return nil
}

// parseAck decodes the acknowledgement record; ok is false when b holds
// none (a new spool) or a damaged one.
func (s *Spool) parseAck(b []byte) (seq uint64, hash, instance string, ok bool) {
	if len(b) < 8+1 {
		return 0, "", "", false
	}
	p := 8
	hl := int(b[p])
	p++
	if len(b) < p+hl+1 {
		return 0, "", "", false
	}
	hash = string(b[p : p+hl])
	p += hl
	il := int(b[p])
	p++
	if len(b) < p+il+4 {
		return 0, "", "", false
	}
	instance = string(b[p : p+il])
	p += il
	if crc32.Checksum(b[:p], s.table) != binary.LittleEndian.Uint32(b[p:p+4]) {
		return 0, "", "", false
	}
	return binary.LittleEndian.Uint64(b[:8]), hash, instance, true
}

// deleteAcked drops every segment but the active one whose records are all
// acknowledged from the list and the byte count, and returns them for
// deletion. Called with s.mu held.
func (s *Spool) deleteAcked() []*spoolSegment {
	var doomed []*spoolSegment
	for len(s.segs) > 1 && s.segs[0].last <= s.acked {
		doomed = append(doomed, s.segs[0])
		s.bytes -= s.segs[0].size
		s.segs = s.segs[1:]
	}
	return doomed
}
