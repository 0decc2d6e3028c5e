package audit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// streamSink is a StreamingSink that stores like a de-duplicating broker
// (an event is kept only when its seq is above every seq kept) and fails
// chosen Waits: the logic of the shipper's streaming, without a broker.
type streamSink struct {
	mu        sync.Mutex
	stored    []uint64    // seqs kept, in order
	starts    [][2]uint64 // first and last seq of each StartEncoded
	publishes [][2]uint64 // the same for each PublishEncoded
	open      int         // started, not yet waited for
	maxOpen   int
	failWait  map[int]bool // the nth StartEncoded's Wait fails (once)
}

func (s *streamSink) keep(batch []Encoded) {
	for _, e := range batch {
		if len(s.stored) == 0 || e.Seq > s.stored[len(s.stored)-1] {
			s.stored = append(s.stored, e.Seq)
		}
	}
}

func (s *streamSink) StartEncoded(_ context.Context, batch []Encoded) (Pending, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.starts = append(s.starts, [2]uint64{batch[0].Seq, batch[len(batch)-1].Seq})
	s.open++
	s.maxOpen = max(s.maxOpen, s.open)
	return &streamPending{s: s, n: len(s.starts), batch: batch}, nil
}

type streamPending struct {
	s     *streamSink
	n     int
	batch []Encoded
}

func (pd *streamPending) Wait(context.Context) error {
	s := pd.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failWait[pd.n] {
		delete(s.failWait, pd.n)
		s.open = 0 // the connection is gone with everything on it
		return errors.New("connection lost")
	}
	s.open--
	s.keep(pd.batch)
	return nil
}

func (s *streamSink) PublishEncoded(_ context.Context, batch []Encoded) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.publishes = append(s.publishes, [2]uint64{batch[0].Seq, batch[len(batch)-1].Seq})
	s.keep(batch)
	return nil
}

func (s *streamSink) Publish(context.Context, []*Event) error {
	panic("the pipeline must use StartEncoded and PublishEncoded")
}
func (s *streamSink) Status() SinkStatus { return SinkStatus{Live: true} }
func (s *streamSink) Close() error       { return nil }

// TestPipelineStreamsBatchesInOrder checks the shipper's streaming: at
// most maxInFlight batches on their way, and after a failed confirmation
// every unconfirmed batch is published again in order, so that the
// destination ends up with every event exactly once.
func TestPipelineStreamsBatchesInOrder(t *testing.T) {
	env := newEnv(t, ModeDurable)
	env.batch = 10
	sink := &streamSink{failWait: map[int]bool{3: true, 7: true}}
	p, stop := env.open(t, sink, false)
	record(t, p, 1, 200) // a backlog, as after an outage: the shipper streams
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()) }()
	waitFor(t, "every event acknowledged", func() bool { return p.Status().Acked == 200 })
	stop()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}

	sink.mu.Lock()
	defer sink.mu.Unlock()
	want := make([]uint64, 200)
	for i := range want {
		want[i] = uint64(i + 1)
	}
	if !slices.Equal(sink.stored, want) {
		t.Fatalf("the sink holds seqs %v, want 1..200 once each", sink.stored)
	}
	if sink.maxOpen != maxInFlight {
		t.Errorf("at most %d batches were in flight, want %d", sink.maxOpen, maxInFlight)
	}
	if len(sink.publishes) == 0 {
		t.Fatal("no batch was published again after the failed confirmations")
	}
	// The first batch published again is the one whose confirmation
	// failed, and every batch is published again in seq order.
	if first := sink.publishes[0]; first != sink.starts[2] {
		t.Errorf("first republished batch is seq %d..%d, want the failed one %d..%d", first[0], first[1], sink.starts[2][0], sink.starts[2][1])
	}
	for i := 1; i < len(sink.publishes); i++ {
		if sink.publishes[i][0] <= sink.publishes[i-1][1] {
			t.Errorf("batches published again out of order: %v", sink.publishes)
		}
	}
	if got := counterValue(t, p.m.acked); got != 200 {
		t.Errorf("portcullis_audit_events_acknowledged_total = %v, want 200", got)
	}
}

// TestPulsarSinkStreams checks StartEncoded against the broker: batches
// sent while earlier ones await their acknowledgement (full last chunks
// left open and cut by the next batch, or flushed by Wait) are stored once
// each, in order, in chunks of BatchMessages; a new sink replaying part of
// them stores nothing twice.
func TestPulsarSinkStreams(t *testing.T) {
	const instance = "portcullis-st1"
	brokerURL, topic, s := newBatchSink(t, instance)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var all []Encoded
	for _, ev := range pulsarTestEvents(instance, 1, 1050, time.Now().Add(-time.Hour), time.Millisecond) {
		data, err := seal(ev)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, Encoded{Seq: ev.Seq, ID: ev.ID, Time: ev.Time, Key: ev.Key(), Data: data})
	}
	// 5 unbatched (the session's first publish), then 200, 300, 200 with
	// two in flight, 245 (100, 100, 45), and 100 waited for alone.
	cuts := []int{0, 5, 205, 505, 705, 950, 1050}
	var pending []Pending
	for i := 1; i < len(cuts); i++ {
		pd, err := s.StartEncoded(ctx, all[cuts[i-1]:cuts[i]])
		if err != nil {
			t.Fatalf("start seq %d..%d: %v", cuts[i-1]+1, cuts[i], err)
		}
		pending = append(pending, pd)
		if len(pending) == 2 || i == len(cuts)-1 {
			for _, pd := range pending {
				if err := pd.Wait(ctx); err != nil {
					t.Fatalf("wait: %v", err)
				}
			}
			pending = pending[:0]
		}
	}
	s.Close()

	msgs := readTopic(t, brokerURL, topic)
	checkExactlyOnce(t, msgs, instance, 1, 1050)
	got := entrySizes(msgs)
	want := "[1 1 1 1 1 100 100 100 100 100 100 100 100 100 45 100]"
	if fmt.Sprint(got) != want {
		t.Errorf("broker entries hold %v messages, want %s", got, want)
	}

	// A restarted proxy replays from seq 600 in streamed batches.
	opts := pulsarTestOptions(t, instance)
	opts.BatchMessages = 100
	s = newTestPulsarSink(t, PulsarConfig{URL: brokerURL, Topic: topic}, opts) // same topic, a new sink
	defer s.Close()
	pd1, err := s.StartEncoded(ctx, all[599:800])
	if err != nil {
		t.Fatal(err)
	}
	if err := pd1.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	pd2, err := s.StartEncoded(ctx, all[800:1000])
	if err != nil {
		t.Fatal(err)
	}
	pd3, err := s.StartEncoded(ctx, all[1000:])
	if err != nil {
		t.Fatal(err)
	}
	for _, pd := range []Pending{pd2, pd3} {
		if err := pd.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	checkExactlyOnce(t, readTopic(t, brokerURL, topic), instance, 1, 1050)
}
