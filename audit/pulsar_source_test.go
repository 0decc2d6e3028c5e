package audit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/portcullis/portcullis/internal/pulsartest"
)

// TestPulsarSourceRead publishes 100,000 events of two instances in two
// phases a few seconds apart (so that seeking by publish time has something
// to skip) and reads time ranges back.
func TestPulsarSourceRead(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 100,000 events")
	}
	brokerURL, adminURL := pulsartest.Require(t)
	topic := pulsartest.NewTopic(t, adminURL)
	cfg := PulsarConfig{URL: brokerURL, Topic: topic}

	sa := newTestPulsarSink(t, cfg, pulsarTestOptions(t, "portcullis-qa"))
	defer sa.Close()
	sb := newTestPulsarSink(t, cfg, pulsarTestOptions(t, "portcullis-qb"))
	defer sb.Close()

	// Event times lie just before their publication: a phase's events span
	// 0.5s ending 100ms before the phase starts publishing.
	phase := func(s *PulsarSink, instance string, from, to uint64) []*Event {
		n := to - from + 1
		step := 500 * time.Millisecond / time.Duration(n)
		start := time.Now().Add(-600 * time.Millisecond)
		evs := make([]*Event, 0, n)
		for seq := from; seq <= to; seq++ {
			evs = append(evs, pulsarTestEvent(instance, seq, start.Add(time.Duration(seq-from)*step)))
		}
		for i := 0; i < len(evs); i += 5000 {
			publishAll(t, s, evs[i:min(i+5000, len(evs))])
		}
		return evs
	}
	var all []*Event
	all = append(all, phase(sa, "portcullis-qa", 1, 40000)...)
	all = append(all, phase(sb, "portcullis-qb", 1, 10000)...)
	time.Sleep(3 * time.Second)
	mid := time.Now()
	all = append(all, phase(sa, "portcullis-qa", 40001, 70000)...)
	all = append(all, phase(sb, "portcullis-qb", 10001, 30000)...)
	if len(all) != 100000 {
		t.Fatalf("generated %d events", len(all))
	}
	first, last := all[0].Time, all[len(all)-1].Time

	opts := pulsarTestOptions(t, "")
	opts.SeekMargin = time.Second
	src, err := NewPulsarSource(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	tests := []struct {
		name string
		f    Filter
	}{
		{"everything", Filter{}},
		{"since before all", Filter{Since: first.Add(-time.Hour)}},
		{"second phase (seek skips the first)", Filter{Since: mid.Add(-700 * time.Millisecond)}},
		{"until inside first phase", Filter{Until: all[20000].Time}},
		{"window across instances", Filter{Since: all[30000].Time, Until: all[75000].Time}},
		{"single instant", Filter{Since: all[12345].Time, Until: all[12345].Time.Add(time.Microsecond)}},
		{"after the last", Filter{Since: last.Add(time.Millisecond)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := make(map[string]bool)
			for _, ev := range all {
				if inTimeRange(ev.Time, tt.f) {
					want[ev.ID] = true
				}
			}
			got := make(map[string]int)
			lastSeq := map[string]uint64{}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			start := time.Now()
			err := src.Read(ctx, tt.f, func(ev *Event) (bool, error) {
				got[ev.ID]++
				if ev.Seq <= lastSeq[ev.Instance] {
					return false, fmt.Errorf("instance %s: seq %d after %d", ev.Instance, ev.Seq, lastSeq[ev.Instance])
				}
				lastSeq[ev.Instance] = ev.Seq
				return true, nil
			})
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			t.Logf("read %d events in %v", len(got), time.Since(start).Round(time.Millisecond))
			var extra, dup, missing int
			for id, n := range got {
				if !want[id] {
					extra++
				}
				if n > 1 {
					dup++
				}
			}
			for id := range want {
				if got[id] == 0 {
					missing++
				}
			}
			if extra+dup+missing > 0 {
				t.Errorf("Read returned %d events, want %d: %d not in range, %d duplicated, %d missing", len(got), len(want), extra, dup, missing)
			}
		})
	}

	t.Run("stop early", func(t *testing.T) {
		n := 0
		err := src.Read(context.Background(), Filter{}, func(*Event) (bool, error) { n++; return n < 10, nil })
		if err != nil || n != 10 {
			t.Errorf("Read stopped after %d events (err %v), want 10", n, err)
		}
	})
}

// TestPulsarSourceFollow checks that Follow delivers events published after
// it started and returns nil when its context ends.
func TestPulsarSourceFollow(t *testing.T) {
	brokerURL, adminURL := pulsartest.Require(t)
	topic := pulsartest.NewTopic(t, adminURL)
	cfg := PulsarConfig{URL: brokerURL, Topic: topic}
	s := newTestPulsarSink(t, cfg, pulsarTestOptions(t, "portcullis-f1"))
	defer s.Close()
	old := pulsarTestEvents("portcullis-f1", 1, 5, time.Now().Add(-time.Hour), time.Millisecond)
	publishAll(t, s, old)

	src, err := NewPulsarSource(cfg, pulsarTestOptions(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	since := time.Now()
	got := make(chan *Event, 100)
	done := make(chan error, 1)
	go func() {
		done <- src.Follow(ctx, Filter{Since: since}, func(ev *Event) (bool, error) {
			got <- ev
			return true, nil
		})
	}()
	time.Sleep(500 * time.Millisecond)
	fresh := pulsarTestEvents("portcullis-f1", 6, 8, time.Now(), time.Millisecond)
	publishAll(t, s, fresh)
	for _, want := range fresh {
		select {
		case ev := <-got:
			if ev.ID != want.ID {
				t.Errorf("Follow delivered %s, want %s", ev.ID, want.ID)
			}
		case <-ctx.Done():
			t.Fatalf("Follow did not deliver %s", want.ID)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Follow after cancel = %v, want nil", err)
	}
	select {
	case ev := <-got:
		t.Errorf("Follow delivered %s from before Since", ev.ID)
	default:
	}
}

func TestPulsarSourceEmptyTopic(t *testing.T) {
	brokerURL, adminURL := pulsartest.Require(t)
	topic := pulsartest.NewTopic(t, adminURL)
	src, err := NewPulsarSource(PulsarConfig{URL: brokerURL, Topic: topic}, pulsarTestOptions(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for _, f := range []Filter{{}, {Since: time.Now().Add(-time.Hour)}} {
		n := 0
		// Empty, or misnamed (the broker creates a topic it does not know
		// when it is read): an error saying so, not an empty trail.
		err := src.Read(context.Background(), f, func(*Event) (bool, error) { n++; return true, nil })
		if !errors.Is(err, ErrNoEvents) || !strings.Contains(err.Error(), topic) || n != 0 {
			t.Errorf("Read(%+v) of an empty topic: %d events, err %v; want ErrNoEvents naming the topic", f, n, err)
		}
	}
}
