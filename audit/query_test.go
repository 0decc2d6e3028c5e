package audit

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// chain builds n sealed events of instance.
func chain(t *testing.T, instance string, n int) []*Event {
	t.Helper()
	var out []*Event
	prev := ""
	base := time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)
	for i := 1; i <= n; i++ {
		ev := newTestEvent(i)
		ev.Instance = instance
		ev.ID = fmt.Sprintf("%s-%d", instance, i)
		ev.Seq = uint64(i)
		ev.PrevHash = prev
		normalize(ev, base.Add(time.Duration(i)*time.Second))
		if _, err := seal(ev); err != nil {
			t.Fatal(err)
		}
		prev = ev.Hash
		out = append(out, ev)
	}
	return out
}

func TestVerifier(t *testing.T) {
	tests := []struct {
		name     string
		edit     func([]*Event) []*Event
		wantKind BreakKind
		wantSeq  uint64
	}{
		{"intact", func(e []*Event) []*Event { return e }, "", 0},
		{"starts mid-chain", func(e []*Event) []*Event { return e[4:] }, "", 0},
		{"removed", func(e []*Event) []*Event { return append(e[:3:3], e[4:]...) }, BreakMissing, 5},
		{"removed several", func(e []*Event) []*Event { return append(e[:2:2], e[6:]...) }, BreakMissing, 7},
		{"altered", func(e []*Event) []*Event { e[5].Decision = DecisionDeny; return e }, BreakAltered, 6},
		{"altered with rehash", func(e []*Event) []*Event {
			e[5].Decision = DecisionDeny
			e[5].Hash, _ = ComputeHash(e[5])
			return e
		}, BreakLink, 7},
		{"reordered", func(e []*Event) []*Event { e[3], e[4] = e[4], e[3]; return e }, BreakReordered, 4},
		{"moved ahead", func(e []*Event) []*Event {
			return []*Event{e[0], e[1], e[2], e[5], e[3], e[4], e[6]}
		}, BreakReordered, 4},
		{"moved ahead, then altered", func(e []*Event) []*Event {
			e[7].Decision = DecisionDeny
			return []*Event{e[0], e[1], e[2], e[5], e[6], e[7], e[3], e[4], e[8]}
		}, BreakReordered, 4},
		{"removed, then altered", func(e []*Event) []*Event {
			e[7].Decision = DecisionDeny
			return append(e[:3:3], e[4:]...)
		}, BreakMissing, 5},
		{"removed, then moved back", func(e []*Event) []*Event {
			return []*Event{e[0], e[1], e[3], e[4], e[0], e[5]}
		}, BreakMissing, 4},
		{"moved back", func(e []*Event) []*Event {
			return []*Event{e[0], e[1], e[2], e[3], e[4], e[2], e[5]}
		}, BreakReordered, 3},
		{"duplicated", func(e []*Event) []*Event {
			return []*Event{e[0], e[1], e[1], e[2]}
		}, BreakDuplicate, 2},
		{"first event with prev_hash", func(e []*Event) []*Event { e[0].PrevHash = "sha256:x"; e[0].Hash, _ = ComputeHash(e[0]); return e }, BreakLink, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := tt.edit(chain(t, "a", 10))
			b := chain(t, "b", 10)
			v := NewVerifier()
			// Interleave the instances, b first.
			for i := 0; i < max(len(a), len(b)); i++ {
				if i < len(b) {
					v.Add(b[i])
				}
				if i < len(a) {
					v.Add(a[i])
				}
			}
			err := v.Err()
			if tt.wantKind == "" {
				if err != nil {
					t.Fatalf("intact chains reported: %v", err)
				}
				return
			}
			var ce *ChainError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a *ChainError", err)
			}
			if first := v.First(); first != ce {
				t.Errorf("First() = %v, want the only break %v", first, ce)
			}
			if ce.Instance != "a" || ce.Kind != tt.wantKind || ce.Seq != tt.wantSeq {
				t.Errorf("got %s/%s at seq %d, want a/%s at seq %d (%v)", ce.Instance, ce.Kind, ce.Seq, tt.wantKind, tt.wantSeq, ce)
			}
			if ce.EventID == "" {
				t.Error("the error does not name the event")
			}
			reps := v.Reports()
			if len(reps) != 2 || reps[1].Err != nil || reps[1].Events != 10 {
				t.Errorf("instance b report %+v, want 10 intact events", reps)
			}
		})
	}
}

// First is the break that shows earliest in the events added, whichever
// instance it is in, also when the other is a forward jump only decided
// (missing) at the end.
func TestVerifierFirst(t *testing.T) {
	a, b := chain(t, "a", 6), chain(t, "b", 6)
	b[4].Decision = DecisionDeny
	v := NewVerifier()
	for _, ev := range []*Event{a[0], b[0], a[1], a[3], b[1], b[2], b[3], b[4], a[4], b[5]} {
		v.Add(ev)
	}
	if f := v.First(); f == nil || f.Instance != "a" || f.Kind != BreakMissing || f.Seq != 4 {
		t.Errorf("First() = %v, want a's missing seq 3, shown at seq 4", f)
	}
	// The late event shows that a's break is a reordering: Add reports it.
	if err := v.Add(a[2]); err == nil {
		t.Error("Add of the late event did not report the reordering")
	}
	if f := v.First(); f == nil || f.Instance != "a" || f.Kind != BreakReordered || f.Seq != 3 {
		t.Errorf("First() = %v, want a's reordering at seq 3", f)
	}
}

func TestFilterMatch(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)
	ev := &Event{Time: t0, Route: "admin", Decision: DecisionDeny, User: User{Sub: "u-1", Email: "Alice@Example.com"}}
	tests := []struct {
		name string
		f    Filter
		want bool
	}{
		{"empty", Filter{}, true},
		{"since equal", Filter{Since: t0}, true},
		{"since after", Filter{Since: t0.Add(time.Microsecond)}, false},
		{"until after", Filter{Until: t0.Add(time.Microsecond)}, true},
		{"until equal excludes", Filter{Until: t0}, false},
		{"user by sub", Filter{User: "u-1"}, true},
		{"user by email any case", Filter{User: "alice@example.com"}, true},
		{"other user", Filter{User: "bob"}, false},
		{"sub is case-sensitive", Filter{User: "U-1"}, false},
		{"route", Filter{Route: "admin"}, true},
		{"other route", Filter{Route: "app"}, false},
		{"no route only", Filter{RouteSet: true}, false},
		{"decision", Filter{Decision: DecisionDeny}, true},
		{"other decision", Filter{Decision: DecisionAllow}, false},
		{"all", Filter{Since: t0.Add(-time.Hour), Until: t0.Add(time.Hour), User: "u-1", Route: "admin", Decision: DecisionDeny}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.f.Match(ev); got != tt.want {
				t.Errorf("Match = %v, want %v", got, tt.want)
			}
		})
	}
}
