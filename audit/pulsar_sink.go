package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apache/pulsar-client-go/pulsar"
	"github.com/apache/pulsar-client-go/pulsar/backoff"
	"github.com/prometheus/client_golang/prometheus"
)

// Pulsar sink design.
//
// Broker-side de-duplication remembers, per producer name, the highest
// sequence id it has persisted, and drops a message (or a whole batch) whose
// sequence id is not above it. Two facts of pulsar-client-go v0.19.0 shape
// this sink:
//
//   - A batch carries the sequence id of its FIRST message and no
//     highest_sequence_id, so with the client's ordinary batching the
//     broker's watermark is the lowest id of the last batch, and a replay of
//     the rest of that batch is stored twice (pulsar-client-go #1395, #1407).
//   - Producer.LastSequenceID() is -1 until the producer's first
//     acknowledgement: the broker's watermark sent on connect is not exposed.
//
// So the sink never needs to know the watermark in advance:
//
//   - every event is one message (key = subject, event time = event time,
//     payload = the event JSON, sequence id = Seq);
//   - a new producer session starts UNBATCHED: the first Publish after a
//     (re)connect sends each event as its own message, and the broker drops
//     exactly those at or below its watermark, one by one;
//   - once that Publish is acknowledged, every event up to its last Seq is
//     known to be stored, the sink switches to a batching producer (same
//     name) and skips events at or below that Seq from then on;
//   - batches are shaped by the sink: at most BatchMessages events, and the
//     first message of a batch carries the batch's HIGHEST Seq, so that the
//     broker's batch id, its de-duplication check and its watermark cover the
//     whole batch. Batch boundaries are exactly the client's: the producer's
//     BatchingMaxMessages equals the batch size (the client cuts a batch when
//     the next message does not fit), the batching timer is effectively off,
//     byte budgets stay far below BatchingMaxSize, and a batch cut short (end
//     of a Publish, byte budget) is flushed explicitly. The client's own
//     resend after a reconnect repeats identical batches, which the broker
//     drops whole or stores whole;
//   - after any failure the producer is closed without flushing, and the next
//     session starts unbatched again.
//
// TestPulsarSinkReplayDeduplicates replays overlapping batches through new
// sink instances and counts the messages in the topic.

// PulsarOptions tunes the Pulsar sink and source beyond what the
// configuration file says. The zero value works for a source; a sink needs
// Instance.
type PulsarOptions struct {
	// Instance is the proxy instance id. The sink's producer is named
	// "portcullis-audit-<Instance>"; the name must be stable across restarts
	// and unique per instance for broker de-duplication to work.
	Instance string
	// Logger receives the sink's and the Pulsar client's log lines (nil:
	// discarded).
	Logger *slog.Logger
	// Registerer receives the Pulsar client's metrics. Nil: a private
	// registry nobody scrapes (never the global one).
	Registerer prometheus.Registerer
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Compression is "lz4" (default), "zstd" or "none".
	Compression string
	// BatchMessages is the most events per broker batch (default 1000).
	BatchMessages int
	// BatchBytes bounds the payload bytes per broker batch (default 1 MiB).
	BatchBytes int
	// OperationTimeout bounds producer creation and other broker requests
	// (default 5s). While the broker is down each producer creation attempt
	// takes this long, and Close may wait for one.
	OperationTimeout time.Duration
	// SendTimeout fails a sent batch that is not acknowledged in time
	// (default 30s); Publish then returns an error and the batch is retried
	// by the caller through a new producer.
	SendTimeout time.Duration
	// RetryMax caps the back-off between producer creation attempts and
	// reconnects (default 2s).
	RetryMax time.Duration
	// StallAfter is how long unacknowledged messages may wait before Status
	// reports the sink as not live (default 5s).
	StallAfter time.Duration
	// ReceiverQueueSize is the source's reader queue (default 10000).
	ReceiverQueueSize int
	// SeekMargin is how far before Filter.Since the source seeks by publish
	// time, to allow for clock skew between proxy and broker (default 2m).
	SeekMargin time.Duration
}

func (o PulsarOptions) withDefaults() PulsarOptions {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Compression == "" {
		o.Compression = "lz4"
	}
	if o.BatchMessages <= 0 {
		o.BatchMessages = 1000
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = 1 << 20
	}
	if o.OperationTimeout <= 0 {
		o.OperationTimeout = 5 * time.Second
	}
	if o.SendTimeout <= 0 {
		o.SendTimeout = 30 * time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 2 * time.Second
	}
	if o.StallAfter <= 0 {
		o.StallAfter = 5 * time.Second
	}
	if o.ReceiverQueueSize <= 0 {
		o.ReceiverQueueSize = 10000
	}
	if o.SeekMargin <= 0 {
		o.SeekMargin = 2 * time.Minute
	}
	return o
}

// The client's batch must never be cut by anything but the sink: the
// BatchingMaxSize is far above any chunk the sink builds, and the batching
// timer is off in practice.
const (
	pulsarBatchingMaxSize  = 4 << 20
	pulsarBatchingNoTimer  = 100 * 365 * 24 * time.Hour
	pulsarMessageOverhead  = 64 // per-message metadata bound used for the byte budget
	pulsarMaxPendingFactor = 8  // pending messages allowed, in chunks
)

// PulsarSink publishes events to a Pulsar topic, one message per event, with
// broker de-duplication making re-delivery harmless (see the design note
// above). It implements EncodedSink; Publish and PublishEncoded are meant to be called from one
// goroutine at a time (Status and Close may be called concurrently).
type PulsarSink struct {
	opts     PulsarOptions
	cfg      PulsarConfig
	topic    string
	name     string
	client   pulsar.Client // replaced only by the connector; see resetClient
	prodOpts pulsar.ProducerOptions
	log      *slog.Logger

	closed       chan struct{}
	closeOnce    sync.Once
	firstAttempt chan struct{} // closed when the first producer creation attempt has settled
	firstOnce    sync.Once
	wg           sync.WaitGroup

	mu         sync.Mutex
	producer   pulsar.Producer
	retired    []pulsar.Producer // closed by the connector before it creates a new producer
	connecting chan struct{}     // closed when the running connection attempt settles
	batched    bool              // the producer batches (the watermark is known)
	wantBatch  bool              // the next producer should batch
	acked      int64             // every seq up to this one is stored (-1: unknown)
	lastErr    error

	// noSkip makes Publish send events at or below the watermark too; tests
	// set it to show that the broker's de-duplication alone drops them.
	noSkip bool

	// Batches started and not yet waited for; the publishing goroutine's.
	inFlight    int
	lastStarted *pulsarPending

	dupCount prometheus.Counter

	waitingSince atomic.Int64 // unix nanos of the oldest unacknowledged send, 0 when none
	live         atomic.Bool
	detail       atomic.Value // string
}

var _ StreamingSink = (*PulsarSink)(nil)

// NewPulsarSink creates the Pulsar client and starts connecting the producer
// "portcullis-audit-<opts.Instance>" to cfg.Topic. It waits for the first
// connection attempt until ctx is done or OperationTimeout has passed; when
// the broker is unreachable it still returns the sink (not live) and keeps
// retrying in the background with back-off, so that a proxy can start during
// a Pulsar outage. It fails only for a bad configuration (URL, topic, token
// file).
func NewPulsarSink(ctx context.Context, cfg PulsarConfig, opts PulsarOptions) (*PulsarSink, error) {
	if opts.Instance == "" {
		return nil, errors.New("audit: pulsar sink: instance id is required")
	}
	opts = opts.withDefaults()
	client, err := newPulsarClient(cfg, opts)
	if err != nil {
		return nil, err
	}
	compression, err := pulsarCompression(opts.Compression)
	if err != nil {
		client.Close()
		return nil, err
	}
	name := "portcullis-audit-" + opts.Instance
	s := &PulsarSink{
		opts:   opts,
		cfg:    cfg,
		topic:  cfg.Topic,
		name:   name,
		client: client,
		log:    opts.Logger.With("component", "audit.pulsar", "topic", cfg.Topic, "producer", name),
		closed: make(chan struct{}),
		acked:  -1,

		firstAttempt: make(chan struct{}),
		prodOpts: pulsar.ProducerOptions{
			Topic:                   cfg.Topic,
			Name:                    name,
			SendTimeout:             opts.SendTimeout,
			MaxPendingMessages:      opts.BatchMessages * pulsarMaxPendingFactor,
			BatchingMaxMessages:     uint(opts.BatchMessages),
			BatchingMaxSize:         pulsarBatchingMaxSize,
			BatchingMaxPublishDelay: pulsarBatchingNoTimer,
			CompressionType:         compression,
			BackOffPolicyFunc:       func() backoff.Policy { return newCappedBackoff(opts.RetryMax) },
		},
	}
	s.dupCount = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "portcullis_audit_pulsar_duplicates_total",
		Help: "Events the broker acknowledged as duplicates of events it already held (see the log when this grows outside restarts).",
	})
	if err := opts.Registerer.Register(s.dupCount); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			client.Close()
			return nil, fmt.Errorf("audit: pulsar sink: %w", err)
		}
		s.dupCount = are.ExistingCollector.(prometheus.Counter)
	}
	s.detail.Store("connecting")
	s.startConnect()
	timer := time.NewTimer(opts.OperationTimeout)
	defer timer.Stop()
	select {
	case <-s.firstAttempt:
	case <-timer.C:
	case <-ctx.Done():
	}
	return s, nil
}

// Publish is PublishEncoded for events not yet encoded: each event is
// encoded with encoding/json (the canonical encoding of chain.go).
func (s *PulsarSink) Publish(ctx context.Context, batch []*Event) error {
	encoded := make([]Encoded, len(batch))
	for i, ev := range batch {
		data, err := json.Marshal(ev)
		if err != nil {
			return fmt.Errorf("audit: pulsar: encode event %s: %w", ev.ID, err)
		}
		encoded[i] = Encoded{Seq: ev.Seq, ID: ev.ID, Time: ev.Time, Key: ev.Key(), Data: data}
	}
	return s.PublishEncoded(ctx, encoded)
}

// PublishEncoded sends every event of batch whose Seq is above what the
// broker already holds for this instance, each as one message with the
// payload batch[i].Data, and returns nil once all of them are acknowledged.
// Events must come in increasing Seq order (the spool's order). On error
// nothing about the batch is assumed: the caller retries the whole batch,
// and the events the broker already stored are skipped or de-duplicated.
// PublishEncoded waits for a producer while the broker is down, but never
// past ctx.
func (s *PulsarSink) PublishEncoded(ctx context.Context, batch []Encoded) error {
	pd, err := s.start(ctx, batch, false)
	if err != nil {
		return err
	}
	return pd.Wait(ctx)
}

// StartEncoded is PublishEncoded without the wait (see StreamingSink): it
// sends the batch behind those started before and returns; Wait on the
// result returns once the broker holds all of it. While a session is
// still unbatched (after a connect), StartEncoded publishes synchronously.
func (s *PulsarSink) StartEncoded(ctx context.Context, batch []Encoded) (Pending, error) {
	return s.start(ctx, batch, true)
}

// start sends the batch as PublishEncoded describes. With stream, a full
// last chunk is left open in the client (the next batch's first message
// cuts it, or Wait flushes it) instead of being flushed, since a flush
// waits for every acknowledgement.
func (s *PulsarSink) start(ctx context.Context, batch []Encoded, stream bool) (*pulsarPending, error) {
	if len(batch) == 0 {
		return &pulsarPending{}, nil
	}
	p, batched, err := s.awaitProducer(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	acked := s.acked
	s.mu.Unlock()
	start := 0
	for !s.noSkip && start < len(batch) && int64(batch[start].Seq) <= acked {
		start++
	}
	todo := batch[start:]
	if len(todo) == 0 {
		return &pulsarPending{}, nil
	}
	for i := 1; i < len(todo); i++ {
		if todo[i].Seq <= todo[i-1].Seq {
			return nil, fmt.Errorf("audit: pulsar: batch out of order: seq %d after %d", todo[i].Seq, todo[i-1].Seq)
		}
	}
	last := int64(todo[len(todo)-1].Seq)
	if !batched {
		if err := s.sendSingly(ctx, p, todo); err != nil {
			s.abandon(p, err)
			return nil, err
		}
		s.confirm(last)
		// The broker now holds everything up to acked: batch from here on.
		s.retire(p, true, nil)
		return &pulsarPending{}, nil
	}
	w := newAckWaiter(len(todo))
	s.inFlight++
	s.waitingSince.CompareAndSwap(0, s.opts.Now().UnixNano())
	open, err := s.sendBatched(ctx, p, todo, w, stream)
	if err != nil {
		s.abandon(p, err)
		return nil, err
	}
	pd := &pulsarPending{s: s, p: p, w: w, last: last, open: open}
	s.lastStarted = pd
	return pd, nil
}

// pulsarPending is a batch sent by start and not yet known to be stored.
// Its fields belong to the publishing goroutine.
type pulsarPending struct {
	s    *PulsarSink
	p    pulsar.Producer
	w    *ackWaiter // nil: nothing to wait for
	last int64      // the batch's highest seq
	open bool       // its last chunk is still open in the client
}

// Wait returns once the broker has acknowledged every message of the
// batch. After an error the producer is retired and nothing sent on it is
// assumed stored.
func (pd *pulsarPending) Wait(ctx context.Context) error {
	if pd.w == nil {
		return nil
	}
	s := pd.s
	if pd.open && s.lastStarted == pd {
		// Nothing was sent after this batch to cut its last chunk. (The
		// flush waits for every acknowledgement.)
		if err := pd.p.FlushWithCtx(ctx); err != nil {
			err = fmt.Errorf("audit: pulsar: flush: %w", err)
			s.abandon(pd.p, err)
			return err
		}
	}
	if err := pd.w.wait(ctx); err != nil {
		err = fmt.Errorf("audit: pulsar: publish: %w", err)
		s.abandon(pd.p, err)
		return err
	}
	if n := pd.w.duplicates(); n > 0 {
		s.duplicates(n, true)
	}
	pd.w = nil
	if s.lastStarted == pd {
		s.lastStarted = nil
	}
	if s.inFlight--; s.inFlight > 0 {
		// The next batch was sent after this one: close enough.
		s.waitingSince.Store(s.opts.Now().UnixNano())
	} else {
		s.waitingSince.Store(0)
	}
	s.confirm(pd.last)
	return nil
}

// confirm records that the broker holds every event up to seq.
func (s *PulsarSink) confirm(seq int64) {
	s.mu.Lock()
	if seq > s.acked {
		s.acked = seq
	}
	s.mu.Unlock()
	s.setLive()
}

// abandon retires p after a failure: nothing sent on it and not yet
// confirmed is assumed stored, and no batch is in flight any more.
func (s *PulsarSink) abandon(p pulsar.Producer, cause error) {
	s.inFlight, s.lastStarted = 0, nil
	s.waitingSince.Store(0)
	s.retire(p, false, cause)
}

// sendSingly publishes each event as an unbatched message with sequence id
// Seq and waits for every acknowledgement; the broker drops those it
// already holds.
func (s *PulsarSink) sendSingly(ctx context.Context, p pulsar.Producer, events []Encoded) error {
	w := newAckWaiter(len(events))
	s.waitingSince.CompareAndSwap(0, s.opts.Now().UnixNano())
	defer s.waitingSince.Store(0)
	for i := range events {
		ev := &events[i]
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("audit: pulsar: publish: %w", err)
		}
		seq := int64(ev.Seq)
		p.SendAsync(ctx, &pulsar.ProducerMessage{Payload: ev.Data, Key: ev.Key, EventTime: ev.Time, SequenceID: &seq}, w.callback)
		if err := w.failed(); err != nil {
			return fmt.Errorf("audit: pulsar: publish: %w", err)
		}
	}
	if err := p.FlushWithCtx(ctx); err != nil {
		return fmt.Errorf("audit: pulsar: flush: %w", err)
	}
	if err := w.wait(ctx); err != nil {
		return fmt.Errorf("audit: pulsar: publish: %w", err)
	}
	if n := w.duplicates(); n > 0 {
		s.duplicates(n, false)
	}
	return nil
}

// duplicates accounts for n events the broker acknowledged as copies of
// events it already held (same producer, seq not above its watermark).
// Replaying the spool after a restart sends some on purpose (acknowledged
// before the crash, but not yet noted as such), and the client resends
// batches after a reconnect; but the broker drops a NEW event the same way
// when this instance's chain went back (a data_dir restored from a backup,
// two proxies with one audit instance id), and that event is then lost.
// They are counted in portcullis_audit_pulsar_duplicates_total and logged.
func (s *PulsarSink) duplicates(n int, batched bool) {
	s.dupCount.Add(float64(n))
	if !batched {
		s.log.Info("audit: the broker already held events replayed after a (re)connect", "events", n)
		return
	}
	s.log.Warn("audit: the broker dropped events as duplicates of events it already held: expected only after a "+
		"reconnect resent them; otherwise this instance's chain went back (a restored data_dir, or two proxies with one "+
		"audit.instance) and the events are lost", "events", n)
}

// sendBatched sends events in chunks shaped as the design note says, each
// acknowledgement counted by w. A chunk cut short (byte budget) is flushed
// at once; so is the last one, unless it is full and stream is set: then
// it is left open (the next message sent cuts it) and open is true.
func (s *PulsarSink) sendBatched(ctx context.Context, p pulsar.Producer, events []Encoded, w *ackWaiter, stream bool) (open bool, err error) {
	// The client holds on to each message until it is acknowledged, so the
	// messages and their sequence ids are allocated once for the whole
	// batch rather than one by one.
	slab := make([]pulsar.ProducerMessage, len(events))
	seqs := make([]int64, len(events))
	msgs := make([]*pulsar.ProducerMessage, 0, s.opts.BatchMessages)
	for i := 0; i < len(events); {
		// Build one chunk: at most BatchMessages events and BatchBytes bytes.
		msgs = msgs[:0]
		size := 0
		for i < len(events) && len(msgs) < s.opts.BatchMessages {
			ev := &events[i]
			n := len(ev.Data) + len(ev.Key) + pulsarMessageOverhead
			if len(msgs) > 0 && size+n > s.opts.BatchBytes {
				break
			}
			seqs[i] = int64(ev.Seq)
			slab[i] = pulsar.ProducerMessage{Payload: ev.Data, Key: ev.Key, EventTime: ev.Time, SequenceID: &seqs[i]}
			msgs = append(msgs, &slab[i])
			size += n
			i++
		}
		// The broker batch takes the first message's sequence id: make it
		// the chunk's highest, so that de-duplication and the persisted
		// watermark cover the whole chunk.
		highest := *msgs[len(msgs)-1].SequenceID
		msgs[0].SequenceID = &highest
		for _, m := range msgs {
			if err := ctx.Err(); err != nil {
				return false, fmt.Errorf("audit: pulsar: publish: %w", err)
			}
			p.SendAsync(ctx, m, w.callback)
			if err := w.failed(); err != nil {
				return false, fmt.Errorf("audit: pulsar: publish: %w", err)
			}
		}
		// A full chunk is cut by the client when the next message arrives;
		// a shorter one (byte budget, end of the batch) must be flushed.
		full := len(msgs) == s.opts.BatchMessages
		if !full || i == len(events) && !stream {
			if err := p.FlushWithCtx(ctx); err != nil {
				return false, fmt.Errorf("audit: pulsar: flush: %w", err)
			}
		}
		open = full && i == len(events) && stream
	}
	return open, nil
}

// ackWaiter counts acknowledgements for one Publish. Callbacks may arrive
// after Publish gave up; they only touch the waiter.
type ackWaiter struct {
	mu        sync.Mutex
	remaining int
	dups      int // acknowledged as duplicates: the broker already held them
	err       error
	done      chan struct{}
}

func newAckWaiter(n int) *ackWaiter {
	return &ackWaiter{remaining: n, done: make(chan struct{})}
}

func (w *ackWaiter) callback(id pulsar.MessageID, _ *pulsar.ProducerMessage, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil && w.err == nil {
		w.err = err
	}
	if err == nil && id != nil && id.LedgerID() < 0 && id.EntryID() < 0 {
		// The broker's receipt for a message it dropped by de-duplication.
		w.dups++
	}
	w.remaining--
	if w.remaining == 0 {
		close(w.done)
	}
}

func (w *ackWaiter) duplicates() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dups
}

func (w *ackWaiter) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *ackWaiter) wait(ctx context.Context) error {
	select {
	case <-w.done:
		return w.failed()
	case <-ctx.Done():
		if err := w.failed(); err != nil {
			return err
		}
		return ctx.Err()
	}
}

// Status reports whether the producer is connected and acknowledgements are
// flowing: not live while no producer exists, after a failed send, or while
// messages have waited longer than StallAfter for their acknowledgement.
func (s *PulsarSink) Status() SinkStatus {
	if since := s.waitingSince.Load(); since != 0 {
		if waited := s.opts.Now().Sub(time.Unix(0, since)); waited > s.opts.StallAfter {
			return SinkStatus{Live: false, Detail: fmt.Sprintf("pulsar: no acknowledgement for %s", waited.Round(time.Second))}
		}
	}
	if s.live.Load() {
		return SinkStatus{Live: true}
	}
	d, _ := s.detail.Load().(string)
	return SinkStatus{Live: false, Detail: d}
}

// Close stops reconnecting, closes the producer (unacknowledged messages
// fail; they stay in the caller's spool) and the client. It waits for a
// connection attempt in progress, at most OperationTimeout.
func (s *PulsarSink) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.wg.Wait()
		s.mu.Lock()
		ps := append(s.retired, s.producer)
		s.producer, s.retired = nil, nil
		s.mu.Unlock()
		for _, p := range ps {
			if p != nil {
				p.Close()
			}
		}
		s.client.Close()
		s.live.Store(false)
		s.detail.Store("closed")
	})
	return nil
}

// awaitProducer returns the connected producer, starting or waiting for a
// connection attempt as needed, until ctx is done or the sink is closed.
func (s *PulsarSink) awaitProducer(ctx context.Context) (pulsar.Producer, bool, error) {
	for {
		select {
		case <-s.closed:
			return nil, false, fmt.Errorf("audit: pulsar: %w", ErrClosed)
		default:
		}
		s.mu.Lock()
		if s.producer != nil {
			p, batched := s.producer, s.batched
			s.mu.Unlock()
			return p, batched, nil
		}
		s.mu.Unlock()
		ch := s.startConnect()
		select {
		case <-ch:
		case <-ctx.Done():
			s.mu.Lock()
			last := s.lastErr
			s.mu.Unlock()
			if last != nil {
				return nil, false, fmt.Errorf("audit: pulsar: no producer (%v): %w", last, ctx.Err())
			}
			return nil, false, fmt.Errorf("audit: pulsar: no producer: %w", ctx.Err())
		case <-s.closed:
			return nil, false, fmt.Errorf("audit: pulsar: %w", ErrClosed)
		}
	}
}

// startConnect starts the connector unless it is running or a producer
// exists, and returns a channel closed when a producer exists or the sink is
// closed.
func (s *PulsarSink) startConnect() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.producer != nil {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	if s.connecting != nil {
		return s.connecting
	}
	ch := make(chan struct{})
	s.connecting = ch
	s.wg.Add(1)
	go s.connect(ch)
	return ch
}

// connect closes retired producers, then creates a producer with back-off
// until it succeeds or the sink is closed.
func (s *PulsarSink) connect(ch chan struct{}) {
	defer s.wg.Done()
	settle := func() {
		s.mu.Lock()
		if s.connecting == ch {
			s.connecting = nil
		}
		s.mu.Unlock()
		close(ch)
	}
	bo := newCappedBackoff(s.opts.RetryMax)
	for attempt := 0; ; attempt++ {
		s.mu.Lock()
		retired := s.retired
		s.retired = nil
		s.mu.Unlock()
		for _, p := range retired {
			p.Close()
		}
		s.mu.Lock()
		batched := s.wantBatch
		s.mu.Unlock()
		p, err := s.createProducer(batched)
		s.firstOnce.Do(func() { close(s.firstAttempt) })
		if err == nil {
			s.mu.Lock()
			s.producer, s.batched = p, batched
			acked := s.acked
			s.lastErr = nil
			s.mu.Unlock()
			s.setLive()
			s.log.Debug("audit: pulsar producer connected", "batching", batched, "acked_seq", acked, "attempts", attempt+1)
			settle()
			return
		}
		s.mu.Lock()
		s.lastErr = err
		s.mu.Unlock()
		s.setNotLive(err.Error())
		if strings.Contains(err.Error(), "ProducerBusy") {
			s.resetClient(err)
		}
		if attempt == 0 || attempt%20 == 0 {
			s.log.Warn("audit: cannot create pulsar producer; retrying", "err", err, "attempts", attempt+1)
		}
		select {
		case <-s.closed:
			settle()
			return
		case <-time.After(bo.Next()):
		}
	}
}

func (s *PulsarSink) createProducer(batched bool) (pulsar.Producer, error) {
	partitions, err := s.client.TopicPartitions(s.topic)
	if err != nil {
		return nil, fmt.Errorf("audit: pulsar: look up topic: %w", err)
	}
	if len(partitions) != 1 {
		return nil, fmt.Errorf("audit: pulsar: topic %s has %d partitions; the audit topic must not be partitioned", s.topic, len(partitions))
	}
	opts := s.prodOpts
	opts.DisableBatching = !batched
	p, err := s.client.CreateProducer(opts)
	if err != nil {
		return nil, fmt.Errorf("audit: pulsar: create producer: %w", err)
	}
	return p, nil
}

// resetClient replaces the client after the broker refused the producer's
// name as taken. The broker holds a producer of that name on one of this
// client's connections that the client no longer knows (a creation that
// timed out here while the restarting broker completed it, or a reconnect
// racing a close: pulsar-client-go #638, #1032), and drops it only when
// that connection closes, so retrying on the same client fails forever.
// If another process holds the name (two proxies with one audit instance
// id), the new client is refused as well and the log says so. Only the
// connector calls it; Close reads the client after the connector ended.
func (s *PulsarSink) resetClient(cause error) {
	s.log.Warn("audit: the broker says producer "+s.name+" is already connected; reconnecting with a new client "+
		"(if this repeats, another proxy may run with the same audit instance id)", "err", cause)
	c, err := newPulsarClient(s.cfg, s.opts)
	if err != nil {
		s.log.Error("audit: creating a new pulsar client", "err", err)
		return
	}
	s.mu.Lock()
	old := s.client
	s.client = c
	s.mu.Unlock()
	old.Close()
}

// retire takes p out of use and starts connecting its successor; p is
// closed (without flushing what is left in its batch) before the successor is
// created. After a success (upgrade) the successor batches; after a failure
// it starts unbatched, because only the broker knows what it holds.
func (s *PulsarSink) retire(p pulsar.Producer, upgrade bool, cause error) {
	s.mu.Lock()
	if s.producer == p {
		s.producer = nil
		s.retired = append(s.retired, p)
	}
	s.wantBatch = upgrade
	s.mu.Unlock()
	if cause != nil {
		s.setNotLive(cause.Error())
		s.log.Warn("audit: pulsar publish failed; reconnecting", "err", cause)
	}
	s.startConnect()
}

func (s *PulsarSink) setLive() {
	s.live.Store(true)
	s.detail.Store("")
}

func (s *PulsarSink) setNotLive(detail string) {
	s.live.Store(false)
	s.detail.Store(detail)
}

func pulsarCompression(name string) (pulsar.CompressionType, error) {
	switch name {
	case "lz4":
		return pulsar.LZ4, nil
	case "zstd":
		return pulsar.ZSTD, nil
	case "none":
		return pulsar.NoCompression, nil
	}
	return 0, fmt.Errorf("audit: pulsar: unknown compression %q (want lz4, zstd or none)", name)
}
