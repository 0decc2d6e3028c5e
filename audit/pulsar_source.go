package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/apache/pulsar-client-go/pulsar"
)

// PulsarSource reads audit events back from a Pulsar topic with
// non-durable readers (nothing is left on the broker after a read). It
// implements Source; like every Source it is not safe for concurrent use.
//
// Events come in topic order, which is Seq order per instance. A read
// starts at the earliest message and filters by event time: events
// published late (after an outage) are found wherever they sit, and
// Filter.Until cannot end a read early for the same reason.
//
// It does not seek by publish time. pulsar-client-go (v0.19) loses messages
// after Reader.SeekByTime when messages fetched before the seek arrive
// while the seek reconnects: the reader's start position becomes the one
// before the first of them and everything up to it is discarded ("receive N
// messages, all filtered"), so a query near the start of a topic silently
// missed events. A complete answer is worth the longer read.
type PulsarSource struct {
	opts   PulsarOptions
	topic  string
	client pulsar.Client
}

var _ Source = (*PulsarSource)(nil)

// NewPulsarSource creates the client for cfg. It does not contact the broker;
// Read and Follow do, and fail when it is unreachable.
func NewPulsarSource(cfg PulsarConfig, opts PulsarOptions) (*PulsarSource, error) {
	opts = opts.withDefaults()
	client, err := newPulsarClient(cfg, opts)
	if err != nil {
		return nil, err
	}
	return &PulsarSource{opts: opts, topic: cfg.Topic, client: client}, nil
}

// Read calls fn for every event with Time in [f.Since, f.Until) among the
// messages in the topic when Read starts (later messages are not read).
func (s *PulsarSource) Read(ctx context.Context, f Filter, fn func(*Event) (bool, error)) error {
	return s.read(ctx, f, fn, false)
}

// Follow is Read that keeps waiting for new messages until ctx is done, then
// returns nil.
func (s *PulsarSource) Follow(ctx context.Context, f Filter, fn func(*Event) (bool, error)) error {
	return s.read(ctx, f, fn, true)
}

// Close releases the client.
func (s *PulsarSource) Close() error {
	s.client.Close()
	return nil
}

func (s *PulsarSource) read(ctx context.Context, f Filter, fn func(*Event) (bool, error), follow bool) error {
	r, err := s.createReader(ctx)
	if err != nil {
		return err
	}
	defer r.Close()

	// The end of a Read is the last message stored when it starts.
	var last pulsar.MessageID
	if !follow {
		last, err = r.GetLastMessageID()
		if err != nil {
			return fmt.Errorf("audit: pulsar: last message id of %s: %w", s.topic, err)
		}
		if last.EntryID() < 0 {
			return nil // empty topic
		}
	}
	for {
		msg, err := r.Next(ctx)
		if err != nil {
			if follow && ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("audit: pulsar: read %s: %w", s.topic, err)
		}
		id := msg.ID()
		if last != nil && pulsarIDAfter(id, last) {
			return nil
		}
		ev := new(Event)
		if err := json.Unmarshal(msg.Payload(), ev); err != nil {
			return fmt.Errorf("audit: pulsar: message %s of %s is not an audit event: %w", id, s.topic, err)
		}
		if inTimeRange(ev.Time, f) {
			more, err := fn(ev)
			if err != nil {
				return err
			}
			if !more {
				return nil
			}
		}
		if last != nil && pulsarIDAtEnd(id, last) {
			return nil
		}
	}
}

func (s *PulsarSource) createReader(ctx context.Context) (pulsar.Reader, error) {
	return s.createReaderAt(ctx, pulsar.EarliestMessageID(), false)
}

// createReaderAt retries reader creation until ctx is done: a reader created
// right after a broker restart can fail while the topic is loading.
func (s *PulsarSource) createReaderAt(ctx context.Context, start pulsar.MessageID, inclusive bool) (pulsar.Reader, error) {
	bo := newCappedBackoff(s.opts.RetryMax)
	deadline := s.opts.Now().Add(s.opts.OperationTimeout)
	for {
		r, err := s.client.CreateReader(pulsar.ReaderOptions{
			Topic:                   s.topic,
			StartMessageID:          start,
			StartMessageIDInclusive: inclusive,
			ReceiverQueueSize:       s.opts.ReceiverQueueSize,
		})
		if err == nil {
			return r, nil
		}
		if s.opts.Now().After(deadline) {
			return nil, fmt.Errorf("audit: pulsar: reader for %s: %w", s.topic, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("audit: pulsar: reader for %s: %w", s.topic, errors.Join(err, ctx.Err()))
		case <-time.After(bo.Next()):
		}
	}
}

func inTimeRange(t time.Time, f Filter) bool {
	if !f.Since.IsZero() && t.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !t.Before(f.Until) {
		return false
	}
	return true
}

// pulsarIDAfter reports whether id lies beyond last (the last message id
// when the read started). A last id without a batch index covers its whole
// entry.
func pulsarIDAfter(id, last pulsar.MessageID) bool {
	if c := compareLedgerEntry(id, last); c != 0 {
		return c > 0
	}
	return last.BatchIdx() >= 0 && id.BatchIdx() > last.BatchIdx()
}

// pulsarIDAtEnd reports whether id is the last message to read.
func pulsarIDAtEnd(id, last pulsar.MessageID) bool {
	if c := compareLedgerEntry(id, last); c != 0 {
		return c > 0
	}
	if last.BatchIdx() >= 0 {
		return id.BatchIdx() >= last.BatchIdx()
	}
	// The whole entry: done after its last message.
	return id.BatchSize() <= 1 || id.BatchIdx() >= id.BatchSize()-1
}

func compareLedgerEntry(a, b pulsar.MessageID) int {
	switch {
	case a.LedgerID() < b.LedgerID():
		return -1
	case a.LedgerID() > b.LedgerID():
		return 1
	case a.EntryID() < b.EntryID():
		return -1
	case a.EntryID() > b.EntryID():
		return 1
	}
	return 0
}
