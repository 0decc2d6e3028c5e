package audit

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Match reports whether ev passes every set field of f: Time in
// [Since, Until), User equal to the subject or (case-insensitively) the
// email, Route (when set, or RouteSet) and Decision equal.
func (f Filter) Match(ev *Event) bool {
	if !f.Since.IsZero() && ev.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !ev.Time.Before(f.Until) {
		return false
	}
	if f.User != "" && ev.User.Sub != f.User && !strings.EqualFold(ev.User.Email, f.User) {
		return false
	}
	if (f.Route != "" || f.RouteSet) && ev.Route != f.Route {
		return false
	}
	if f.Decision != "" && ev.Decision != f.Decision {
		return false
	}
	return true
}

// BreakKind says how a chain is broken.
type BreakKind string

// Ways a chain breaks.
const (
	// BreakAltered: the event's Hash does not match its content.
	BreakAltered BreakKind = "altered"
	// BreakMissing: Seq jumps forward; events in between are missing.
	BreakMissing BreakKind = "missing"
	// BreakReordered: Seq goes back (an event out of order, or replayed
	// with different content).
	BreakReordered BreakKind = "reordered"
	// BreakDuplicate: the same event (same Seq and Hash) appears twice.
	BreakDuplicate BreakKind = "duplicate"
	// BreakLink: Seq follows on, but PrevHash is not the previous event's
	// Hash (the previous event was replaced).
	BreakLink BreakKind = "prev_hash"
)

// ChainError is the first broken link Verifier found in one instance's
// chain. Callers inspect it with errors.As.
type ChainError struct {
	Instance string
	Kind     BreakKind
	// Seq and EventID name the event at which the break shows.
	Seq     uint64
	EventID string
	// PrevSeq is the Seq of the last good event before it (0 when none).
	PrevSeq uint64
	// Detail explains the mismatch.
	Detail string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit: chain of instance %s broken at seq %d (event %s): %s: %s", e.Instance, e.Seq, e.EventID, e.Kind, e.Detail)
}

// ChainReport is what Verifier saw of one instance.
type ChainReport struct {
	Instance string
	// First and Last are the lowest and highest Seq seen; Events how many
	// events were checked.
	First, Last uint64
	Events      uint64
	// Legacy counts events whose hash is over the event with an empty
	// "hash" member, as Portcullis wrote them before 2026-11-27, rather
	// than without the member (SPEC §6): accepted, and counted so that a
	// trail's age shows.
	Legacy uint64
	// Err is the first break, nil when the chain is intact.
	Err *ChainError
}

// Verifier checks hash chains. Feed it events with Add in the order a
// Source returns them (Seq order per instance; instances may interleave in
// any way). Each instance's check starts at the first event seen for it, so
// a time-range query that starts mid-chain verifies from there; an event
// missing after the last one seen cannot be detected. Verifier is not safe
// for concurrent use.
//
// A forward jump in Seq is the chain's break either way, but whether the
// skipped events are missing or only out of order shows when (if) they
// turn up later: until then Reports, Err and First count the jump as
// missing.
type Verifier struct {
	chains map[string]*chainCursor
	added  uint64 // events added so far: orders breaks across instances
}

type chainCursor struct {
	report ChainReport
	seq    uint64
	hash   string
	// gap is a forward jump, the chain's first break, not yet known to be
	// a reordering: missing unless an event in gapFrom..gapTo turns up.
	gap            *ChainError
	gapFrom, gapTo uint64
	errAt          uint64 // when the first break showed (Verifier.added)
}

// NewVerifier returns an empty Verifier.
func NewVerifier() *Verifier {
	return &Verifier{chains: map[string]*chainCursor{}}
}

// Add checks ev against its instance's chain. It returns the *ChainError
// when ev reveals that instance's first break (nil otherwise, also for
// later breaks of an already broken chain). A forward jump in Seq is not
// returned: Reports, Err and First report it as missing, or, once an event
// it skipped arrives, Add returns a BreakReordered at that event. Checking
// continues from ev.
func (v *Verifier) Add(ev *Event) error {
	v.added++
	c, seen := v.chains[ev.Instance]
	if !seen {
		c = &chainCursor{report: ChainReport{Instance: ev.Instance, First: ev.Seq}}
		v.chains[ev.Instance] = c
	}
	c.report.Events++
	c.report.First = min(c.report.First, ev.Seq)
	c.report.Last = max(c.report.Last, ev.Seq)

	brk := func(kind BreakKind, format string, args ...any) *ChainError {
		return &ChainError{Instance: ev.Instance, Kind: kind, Seq: ev.Seq, EventID: ev.ID, PrevSeq: c.seq, Detail: fmt.Sprintf(format, args...)}
	}
	if c.gap != nil && c.report.Err == nil && ev.Seq >= c.gapFrom && ev.Seq <= c.gapTo {
		// An event the jump skipped: the chain's first break is a
		// reordering (named at this event; First orders it at the jump).
		c.report.Err = brk(BreakReordered, "seq %d comes after seq %d (out of order)", ev.Seq, c.gap.Seq)
		c.report.Err.PrevSeq = c.gap.PrevSeq
		c.gap = nil
		c.seq, c.hash = ev.Seq, ev.Hash
		return c.report.Err
	}
	var found *ChainError
	hash, err := ComputeHash(ev)
	if err == nil && hash != ev.Hash && legacyHash(ev) == ev.Hash {
		c.report.Legacy++
	}
	switch {
	case err != nil:
		found = brk(BreakAltered, "cannot encode: %v", err)
	case hash != ev.Hash && legacyHash(ev) != ev.Hash:
		found = brk(BreakAltered, "hash is %s but the content hashes to %s", ev.Hash, hash)
	case !seen:
		if ev.Seq == 1 && ev.PrevHash != "" {
			found = brk(BreakLink, "the first event has prev_hash %s, want empty", ev.PrevHash)
		}
	case ev.Seq == c.seq && ev.Hash == c.hash:
		found = brk(BreakDuplicate, "seq %d appears twice", ev.Seq)
	case ev.Seq <= c.seq:
		found = brk(BreakReordered, "seq %d comes after seq %d", ev.Seq, c.seq)
	case ev.Seq > c.seq+1:
		if ev.Seq == c.seq+2 {
			found = brk(BreakMissing, "seq %d is missing", c.seq+1)
		} else {
			found = brk(BreakMissing, "seq %d to %d are missing (%d events)", c.seq+1, ev.Seq-1, ev.Seq-c.seq-1)
		}
	case ev.PrevHash != c.hash:
		found = brk(BreakLink, "prev_hash is %s but seq %d has hash %s", ev.PrevHash, c.seq, c.hash)
	}
	if found != nil && found.Kind == BreakMissing && c.report.Err == nil && c.gap == nil {
		c.gap, c.gapFrom, c.gapTo, c.errAt = found, c.seq+1, ev.Seq-1, v.added
		found = nil
	}
	if found == nil || found.Kind != BreakDuplicate {
		c.seq, c.hash = ev.Seq, ev.Hash
	}
	if found != nil && c.report.Err == nil && c.gap == nil {
		c.report.Err, c.errAt = found, v.added
		return found
	}
	return nil
}

// current is what was seen of one instance, a pending jump counted as
// missing.
func (c *chainCursor) current() ChainReport {
	r := c.report
	if r.Err == nil && c.gap != nil {
		r.Err = c.gap
	}
	return r
}

// First returns the break that showed earliest among the events added, in
// any instance (nil when every chain is intact).
func (v *Verifier) First() *ChainError {
	var first *ChainError
	var at uint64
	for _, c := range v.chains {
		if err := c.current().Err; err != nil && (first == nil || c.errAt < at) {
			first, at = err, c.errAt
		}
	}
	return first
}

// Reports returns what was seen per instance, sorted by instance.
func (v *Verifier) Reports() []ChainReport {
	out := make([]ChainReport, 0, len(v.chains))
	for _, c := range v.chains {
		out = append(out, c.current())
	}
	slices.SortFunc(out, func(a, b ChainReport) int { return strings.Compare(a.Instance, b.Instance) })
	return out
}

// Err joins the first break of every broken chain (nil when all are
// intact). Each joined error is a *ChainError.
func (v *Verifier) Err() error {
	var errs []error
	for _, r := range v.Reports() {
		if r.Err != nil {
			errs = append(errs, r.Err)
		}
	}
	return errors.Join(errs...)
}
