package audit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/apache/pulsar-client-go/pulsar"
)

// PulsarSource reads audit events back from a Pulsar topic with
// non-durable readers (nothing is left on the broker after a read). It
// implements Source; like every Source it is not safe for concurrent use.
//
// Events come in topic order, which is Seq order per instance. With
// Filter.Since a read starts at the first message published at or after
// opts.SeekMargin before it, found with SeekByTime: an event is never
// published before it happened, so nothing at or after Since is skipped
// (unless the broker's clock runs behind the proxy's by more than the
// margin), and events published late (after an outage) are still found.
// Filter.Until cannot end a read early for the same reason.
//
// The seek is made by a throwaway reader with a receive queue of one that
// starts at the end of the topic, and the read itself starts at the message
// id it found. pulsar-client-go (v0.19) loses messages when a reader seeks
// by time while messages it fetched before the seek are still arriving: its
// start position becomes the one before the first of them and everything up
// to there is discarded ("receive N messages, all filtered"). A reader at
// the end has fetched nothing, so nothing is discarded, and the real read
// never seeks.
type PulsarSource struct {
	opts    PulsarOptions
	topic   string
	client  pulsar.Client
	foreign func(where string, err error)
}

// ReportForeign makes Read and Follow skip messages that are not audit
// events, calling fn for each, instead of failing on the first (see
// ForeignReporter).
func (s *PulsarSource) ReportForeign(fn func(where string, err error)) { s.foreign = fn }

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
	defer func() { r.Close() }() // r is replaced after a seek

	// The end of a Read is the last message stored when it starts.
	var last pulsar.MessageID
	if !follow {
		last, err = r.GetLastMessageID()
		if err != nil {
			return fmt.Errorf("audit: pulsar: last message id of %s: %w", s.topic, err)
		}
		if last.EntryID() < 0 {
			return fmt.Errorf("audit: pulsar: topic %s holds no messages at all (is the topic name right? the broker creates a topic it does not know when it is read): %w", s.topic, ErrNoEvents)
		}
	}
	if !f.Since.IsZero() {
		seekTo := f.Since.Add(-s.opts.SeekMargin)
		if !follow {
			// Seeking past the last message would leave Next waiting
			// forever: look at the last message's publish time first.
			pub, err := s.publishTime(ctx, last)
			if err != nil {
				return err
			}
			if pub.Before(seekTo) {
				return nil // nothing published since
			}
		}
		start, err := s.firstPublishedAt(ctx, seekTo)
		if err != nil {
			if follow && ctx.Err() != nil {
				return nil
			}
			return err
		}
		at, err := s.createReaderAt(ctx, start, true)
		if err != nil {
			return err
		}
		r.Close()
		r = at
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
		if err := decodeEvent(msg.Payload(), ev); err != nil {
			where := fmt.Sprintf("message %s of %s", id, s.topic)
			if s.foreign == nil {
				return fmt.Errorf("audit: pulsar: %s is not an audit event: %w", where, err)
			}
			s.foreign(where, err)
		} else if inTimeRange(ev.Time, f) {
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

// publishTime returns the publish time of the message id.
func (s *PulsarSource) publishTime(ctx context.Context, id pulsar.MessageID) (time.Time, error) {
	r, err := s.createReaderAt(ctx, id, true)
	if err != nil {
		return time.Time{}, err
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(ctx, s.opts.OperationTimeout)
	defer cancel()
	msg, err := r.Next(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("audit: pulsar: read the last message of %s: %w", s.topic, err)
	}
	return msg.PublishTime(), nil
}

// firstPublishedAt returns the id of the first message published at or
// after t, waiting for one when there is none yet. See PulsarSource for why
// a separate reader with a queue of one seeks.
//
// A seek makes the broker disconnect the reader, which then reconnects; on
// a loaded machine that reconnect was seen to leave the reader waiting for
// good (CI: "Consumer with ID not found while closing consumer", then
// nothing). So each attempt gets seekAttempt and is then made again with a
// new reader: a message that exists is found by the next one, and while
// following, a wait for the first new message simply goes on.
func (s *PulsarSource) firstPublishedAt(ctx context.Context, t time.Time) (pulsar.MessageID, error) {
	attempt := max(4*s.opts.OperationTimeout, 20*time.Second)
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		id, err := s.seekOnce(actx, t)
		cancel()
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return id, err
		}
	}
}

func (s *PulsarSource) seekOnce(ctx context.Context, t time.Time) (pulsar.MessageID, error) {
	// The reader starts at the end of the topic, so that nothing is in its
	// queue when it seeks: the only messages Next returns are those the
	// broker sends after the reconnect the seek causes. A message fetched
	// before (from the earliest position) and dequeued while the client
	// reconnects races, in pulsar-client-go v0.19, with the reconnect's
	// look at the last dequeued message (seen by the race detector in CI).
	r, err := s.newReader(ctx, pulsar.LatestMessageID(), false, 1)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if err := r.SeekByTime(t); err != nil {
		return nil, fmt.Errorf("audit: pulsar: seek %s: %w", s.topic, err)
	}
	for {
		msg, err := r.Next(ctx)
		if err != nil {
			return nil, fmt.Errorf("audit: pulsar: seek %s: %w", s.topic, err)
		}
		// A message published while the reader was being created may still
		// arrive before the seek's.
		if !msg.PublishTime().Before(t) {
			return msg.ID(), nil
		}
	}
}

func (s *PulsarSource) createReader(ctx context.Context) (pulsar.Reader, error) {
	return s.createReaderAt(ctx, pulsar.EarliestMessageID(), false)
}

// createReaderAt retries reader creation until ctx is done: a reader created
// right after a broker restart can fail while the topic is loading.
func (s *PulsarSource) createReaderAt(ctx context.Context, start pulsar.MessageID, inclusive bool) (pulsar.Reader, error) {
	return s.newReader(ctx, start, inclusive, s.opts.ReceiverQueueSize)
}

func (s *PulsarSource) newReader(ctx context.Context, start pulsar.MessageID, inclusive bool, queue int) (pulsar.Reader, error) {
	bo := newCappedBackoff(s.opts.RetryMax)
	deadline := s.opts.Now().Add(s.opts.OperationTimeout)
	for {
		r, err := s.client.CreateReader(pulsar.ReaderOptions{
			Topic:                   s.topic,
			StartMessageID:          start,
			StartMessageIDInclusive: inclusive,
			ReceiverQueueSize:       queue,
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
