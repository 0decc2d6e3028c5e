package audit

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// Clock tells the time of events. Tests pass a fixed or stepping clock.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Options tunes a Pipeline beyond the configuration file. The zero value
// works.
type Options struct {
	// Logger receives the pipeline's log lines (nil: discarded). Every
	// dropped or lost event is logged here.
	Logger *slog.Logger
	// Registerer receives the pipeline's metrics (nil: a private registry;
	// never the global one).
	Registerer prometheus.Registerer
	// Clock stamps events whose Time is zero (nil: the system clock).
	Clock Clock
	// Instance overrides the instance id (default: InstanceID).
	Instance string
	// BatchEvents is the most events handed to the sink at once (default
	// 4000); BatchBytes bounds their JSON bytes (default 4MiB). The Pulsar
	// sink sends a batch as several broker batches (PulsarOptions.
	// BatchMessages) before it waits for their acknowledgement, so a
	// larger batch keeps more in flight when the shipper is behind.
	BatchEvents int
	BatchBytes  int
	// RetryMin and RetryMax bound the back-off between failed publishes
	// (defaults 100ms and 5s).
	RetryMin, RetryMax time.Duration
	// SegmentBytes is the spool's segment size (default: see SpoolOptions).
	SegmentBytes int64
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	if o.Clock == nil {
		o.Clock = systemClock{}
	}
	if o.BatchEvents <= 0 {
		o.BatchEvents = 4000
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = 4 << 20
	}
	if o.RetryMin <= 0 {
		o.RetryMin = 100 * time.Millisecond
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = max(5*time.Second, o.RetryMin)
	}
	return o
}

// Drop reasons (label "reason" of portcullis_audit_events_dropped_total).
const (
	dropBufferFull = "buffer_full"
	dropSpoolFull  = "spool_full"
	dropSpoolError = "spool_error"
	dropClosed     = "closed"
	dropEncode     = "encode"
)

// Pipeline is the Recorder of a running proxy: it completes each event
// (ID, Instance, Seq, PrevHash, Hash), records it according to the mode
// (spool or memory queue), and ships it to the sink from Run.
//
// Record, Accepting, Status and Ready are safe for concurrent use. Run is
// called once; Close ends it.
type Pipeline struct {
	mode     string
	dataDir  string
	instance string
	sink     Sink
	esink    EncodedSink // sink, when it takes encoded events
	log      *slog.Logger
	clock    Clock
	opts     Options
	m        *metrics

	// mu is the chain lock: IDs, Seq and hashes are assigned, and events
	// appended to the spool or queue, in one order under it.
	mu      sync.Mutex
	last    ChainState
	entropy *ulid.MonotonicEntropy
	sealer  sealer
	idBuf   ulid.ULID // scratch for event IDs
	closed  bool

	spool *Spool       // durable and fail-closed
	queue chan Encoded // best-effort

	runMu   sync.Mutex
	running bool
	runDone chan struct{}
	stop    chan struct{}
	stopped sync.Once

	acked atomic.Uint64 // highest acknowledged seq
}

var _ Recorder = (*Pipeline)(nil)

// Open prepares the pipeline for cfg (after SetDefaults and Validate):
// the instance id, the chain state (the newer of the spool's tail and
// <dataDir>/audit-chain.json), and in durable and fail-closed modes the
// spool, cutting off a record torn by a crash (counted and logged as lost).
// The pipeline owns sink from now on and closes it in Close. Call Run to
// ship events.
func Open(ctx context.Context, cfg Config, dataDir string, sink Sink, opts Options) (*Pipeline, error) {
	if sink == nil {
		return nil, errors.New("audit: open: no sink")
	}
	opts = opts.withDefaults()
	instance := opts.Instance
	if instance == "" {
		var err error
		if instance, err = InstanceID(cfg, dataDir); err != nil {
			return nil, err
		}
	}
	if !instancePattern.MatchString(instance) {
		return nil, fmt.Errorf("audit: instance id %q: want 1 to 64 letters, digits, '.', '_' or '-'", instance)
	}
	st, err := loadChainState(dataDir, instance)
	if err != nil {
		return nil, err
	}
	p := &Pipeline{
		mode: cfg.Mode, dataDir: dataDir, instance: instance, sink: sink,
		log:     opts.Logger.With("component", "audit", "instance", instance),
		clock:   opts.Clock,
		opts:    opts,
		entropy: ulid.Monotonic(rand.Reader, 0),
		stop:    make(chan struct{}),
	}
	p.esink, _ = sink.(EncodedSink)
	if p.mode == "" {
		p.mode = ModeDurable
	}
	p.m = newMetrics(p)

	switch p.mode {
	case ModeDurable, ModeFailClosed:
		if err := p.openSpool(cfg, st); err != nil {
			return nil, err
		}
	case ModeBestEffort:
		buf := cfg.Buffer
		if buf <= 0 {
			buf = DefaultBuffer
		}
		p.queue = make(chan Encoded, buf)
		p.last = st
		p.acked.Store(st.Seq)
		if segs, _ := filepath.Glob(filepath.Join(cfg.Spool.Dir, "*"+segSuffix)); len(segs) > 0 {
			p.log.Warn("audit: the spool holds events from a durable run; they are delivered when durable mode runs again", "dir", cfg.Spool.Dir, "segments", len(segs))
		}
	default:
		return nil, fmt.Errorf("audit: unknown mode %q", p.mode)
	}
	if err := p.m.register(opts.Registerer); err != nil {
		if p.spool != nil {
			p.spool.Close()
		}
		return nil, err
	}
	p.log.Info("audit: pipeline open", "mode", p.mode, "seq", p.last.Seq, "backlog", p.backlog())
	return p, nil
}

func (p *Pipeline) openSpool(cfg Config, st ChainState) error {
	s, err := OpenSpool(cfg.Spool.Dir, int64(cfg.Spool.MaxBytes), SpoolOptions{Logger: p.opts.Logger, SegmentBytes: p.opts.SegmentBytes})
	if err != nil {
		return err
	}
	if rec := s.Recovery(); rec.LostRecords > 0 {
		p.m.lost.Add(float64(rec.LostRecords))
		p.log.Error("audit: events lost by an unclean stop (torn or corrupt spool records)", "lost", rec.LostRecords, "bytes", rec.TornBytes)
	}
	seq, hash := s.Tail()
	if ti := s.TailInstance(); seq > 0 && ti != "" && ti != p.instance {
		// A new audit.instance (as after a data_dir restored from a
		// backup): fine once the old instance's events have all been
		// delivered; never at the cost of one that was not.
		ok, err := s.resetIfDrained(st.Seq, st.Hash, p.instance)
		if err != nil || !ok {
			s.Close()
			return errors.Join(err, fmt.Errorf("audit: spool %s holds undelivered events of instance %q, not %q: run as %q until it is drained, or move it aside", cfg.Spool.Dir, ti, p.instance, ti))
		}
		p.log.Info("audit: the spool's events of the previous instance are all delivered; starting the new instance's chain", "previous", ti, "instance", p.instance)
		seq, hash = s.Tail()
	}
	switch {
	case seq >= st.Seq:
		p.last = ChainState{Instance: p.instance, Seq: seq, Hash: hash}
	case seq == 0:
		s.continueFrom(st.Seq, st.Hash)
		p.last = st
	default:
		// The chain went on without the spool (best-effort mode ran
		// meanwhile). Drop the spool's acknowledged leftovers.
		ok, err := s.resetIfDrained(st.Seq, st.Hash, p.instance)
		if err != nil {
			s.Close()
			return err
		}
		if !ok {
			s.Close()
			return fmt.Errorf("audit: spool %s ends at seq %d with unacknowledged events, but the chain state is at seq %d: move the spool aside", cfg.Spool.Dir, seq, st.Seq)
		}
		p.last = st
	}
	p.spool = s
	p.acked.Store(s.Stats().Acked)
	return nil
}

// Instance is the instance id events are recorded under.
func (p *Pipeline) Instance() string { return p.instance }

// Spool is the pipeline's spool (nil in best-effort mode), for inspection.
func (p *Pipeline) Spool() *Spool { return p.spool }

// Record completes ev and records it (see Recorder). In durable and
// fail-closed modes it returns after the group fsync that covers ev; an
// error wrapping ErrUnavailable means ev is not recorded (counted as
// dropped, logged); ctx's error means Record stopped waiting, and ev may
// still be written. In best-effort mode it never blocks. Record sets
// ev.Schema, ev.Time (when zero; always UTC, microseconds), ev.ID,
// ev.Instance, ev.Seq, ev.PrevHash, ev.Hash and an empty Groups slice.
func (p *Pipeline) Record(ctx context.Context, ev *Event) error {
	if ev.Time.IsZero() {
		ev.Time = p.clock.Now()
	}
	normalize(ev, ev.Time)
	ev.Instance = p.instance
	// Most of the encoding happens here, outside the chain lock, into a
	// buffer that is reused once the event is sealed.
	buf := bodyPool.Get().(*[]byte)
	body, err := appendBody((*buf)[:0], ev)
	if err != nil {
		bodyPool.Put(buf)
		return p.drop(ev, dropEncode, fmt.Errorf("%w (%w)", err, ErrUnavailable))
	}
	ticket, reason, err := p.enqueue(ev, body)
	if cap(body) <= maxPooledBody {
		*buf = body[:0]
		bodyPool.Put(buf)
	}
	if err != nil {
		return p.drop(ev, reason, err)
	}
	if p.spool != nil {
		if err := p.spool.Sync(ctx, ticket); err != nil {
			if errors.Is(err, ErrUnavailable) {
				return p.drop(ev, dropSpoolError, err)
			}
			return err
		}
	}
	p.m.recorded.Inc()
	return nil
}

// bodyPool holds Record's encoding buffers (*[]byte); buffers that grew
// beyond maxPooledBody are left to the collector.
var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

const maxPooledBody = 64 << 10

// enqueue gives ev its ID and place in the chain, seals it with body, and
// appends it to the spool (the Ticket to Sync on) or the memory queue (a
// zero Ticket), all under the chain lock. On failure it returns the drop
// reason, and the chain is as before.
func (p *Pipeline) enqueue(ev *Event, body []byte) (Ticket, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return Ticket{}, dropClosed, fmt.Errorf("%w (%w)", ErrClosed, ErrUnavailable)
	}
	if p.queue != nil && len(p.queue) == cap(p.queue) {
		return Ticket{}, dropBufferFull, fmt.Errorf("audit: memory buffer full: %w", ErrUnavailable)
	}
	id := &p.idBuf
	ms := ulid.Timestamp(ev.Time)
	if err := id.SetTime(ms); err != nil {
		return Ticket{}, dropEncode, fmt.Errorf("audit: event id: %v: %w", err, ErrUnavailable)
	}
	if err := p.entropy.MonotonicRead(ms, id[6:]); err != nil {
		return Ticket{}, dropEncode, fmt.Errorf("audit: event id: %v: %w", err, ErrUnavailable)
	}
	ev.ID = id.String()
	enc, err := p.sealNext(ev, body)
	if err != nil {
		return Ticket{}, dropEncode, fmt.Errorf("%w (%w)", err, ErrUnavailable)
	}

	if p.queue != nil {
		p.queue <- enc
		p.last = ChainState{Instance: p.instance, Seq: ev.Seq, Hash: ev.Hash}
		return Ticket{}, "", nil
	}

	ticket, err := p.spool.Append(enc, ev.Hash)
	if errors.Is(err, errSpoolSeq) {
		// The spool discarded unconfirmed records after a write failure:
		// continue the chain from what it holds.
		p.last.Seq, p.last.Hash = p.spool.Tail()
		if enc, err = p.sealNext(ev, body); err == nil {
			ticket, err = p.spool.Append(enc, ev.Hash)
		}
	}
	if err != nil {
		p.last.Seq, p.last.Hash = p.spool.Tail()
		if errors.Is(err, ErrSpoolFull) {
			return Ticket{}, dropSpoolFull, err
		}
		return Ticket{}, dropSpoolError, err
	}
	p.last = ChainState{Instance: p.instance, Seq: ev.Seq, Hash: ev.Hash}
	return ticket, "", nil
}

// sealNext gives ev the next Seq and PrevHash of the chain and encodes it.
// Called with p.mu held; p.last is advanced by the caller once the event
// is taken.
func (p *Pipeline) sealNext(ev *Event, body []byte) (Encoded, error) {
	ev.Seq = p.last.Seq + 1
	ev.PrevHash = p.last.Hash
	data, err := p.sealer.seal(ev, body)
	if err != nil {
		return Encoded{}, err
	}
	return Encoded{Seq: ev.Seq, ID: ev.ID, Time: ev.Time, Key: ev.Key(), Data: data}, nil
}

// drop counts and logs an event that was not recorded, and takes back the
// chain fields it may have been given (its seq goes to the next event).
func (p *Pipeline) drop(ev *Event, reason string, err error) error {
	p.m.dropped.WithLabelValues(reason).Inc()
	p.log.Warn("audit: event dropped", "reason", reason, "request_id", ev.RequestID,
		"decision", ev.Decision, "route", ev.Route, "sub", ev.User.Sub, "time", ev.Time, "err", err)
	ev.Seq, ev.PrevHash, ev.Hash = 0, "", ""
	return err
}

// Accepting reports whether Record is expected to succeed: false after
// Close, and in durable and fail-closed modes while the spool is full
// (within 64KiB of max_bytes, or an eighth of a smaller one) or failing. Best-effort mode always accepts
// (it drops instead).
func (p *Pipeline) Accepting() bool {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return false
	}
	if p.spool != nil {
		return p.spool.Accepting()
	}
	return true
}

// Status is the pipeline's state for /readyz and operators.
type Status struct {
	Mode     string
	Instance string
	// Sink is the sink's own report.
	Sink SinkStatus
	// Spooling is true when the sink is not live and durable events wait
	// in the spool.
	Spooling bool
	// Accepting is Accepting().
	Accepting bool
	// Seq is the last recorded seq; Acked the last acknowledged by the sink.
	Seq, Acked uint64
	// Backlog is how many recorded events the sink has not acknowledged.
	Backlog uint64
	// SpoolBytes is the spool's size on disk (0 in best-effort mode).
	SpoolBytes int64
}

// Status reports the sink's liveness and the backlog.
func (p *Pipeline) Status() Status {
	p.mu.Lock()
	seq := p.last.Seq
	p.mu.Unlock()
	st := Status{Mode: p.mode, Instance: p.instance, Sink: p.sink.Status(), Accepting: p.Accepting(), Seq: seq, Acked: p.acked.Load()}
	st.Backlog = p.backlog()
	if p.spool != nil {
		st.SpoolBytes = p.spool.Stats().Bytes
		st.Spooling = !st.Sink.Live
	}
	return st
}

// Ready is the /readyz check: nil while events can be recorded — the sink
// is live, or (durable) the spool takes them; best-effort is always ready
// while open, since it never holds requests back.
func (p *Pipeline) Ready() error {
	st := p.Status()
	if !st.Accepting {
		if p.spool == nil {
			return fmt.Errorf("audit: %w", ErrClosed)
		}
		sp := p.spool.Stats()
		if sp.Failed {
			return fmt.Errorf("audit: spool failing (%s); %d events waiting: %w", sp.Err, st.Backlog, ErrUnavailable)
		}
		return fmt.Errorf("audit: spool full (%d of %d bytes); %d events waiting: %w", sp.Bytes, sp.MaxBytes, st.Backlog, ErrUnavailable)
	}
	return nil
}

func (p *Pipeline) backlog() uint64 {
	if p.spool != nil {
		s := p.spool.Stats()
		return s.Appended - min(s.Acked, s.Appended)
	}
	p.mu.Lock()
	last := p.last.Seq
	p.mu.Unlock()
	return last - min(p.acked.Load(), last)
}

// Run ships recorded events to the sink until ctx is cancelled or Close
// stops it: it reads batches from the spool (or the memory queue), calls
// the sink with back-off between failures (retrying the same batch), and
// advances the acknowledgement. A StreamingSink (Pulsar) gets the next
// batch while it confirms the previous one (see ship). It returns nil when stopped, or an error
// when it cannot read the spool. Run must not be called twice.
func (p *Pipeline) Run(ctx context.Context) error {
	p.runMu.Lock()
	if p.running {
		p.runMu.Unlock()
		return errors.New("audit: Run called twice")
	}
	select {
	case <-p.stop:
		p.runMu.Unlock()
		return fmt.Errorf("audit: run: %w", ErrClosed)
	default:
	}
	p.running = true
	p.runDone = make(chan struct{})
	p.runMu.Unlock()
	defer close(p.runDone)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	if ss, ok := p.sink.(StreamingSink); ok {
		return p.ship(ctx, ss)
	}
	var saved uint64 // best-effort: the seq of the chain state saved
	for {
		batch, err := p.next(ctx)
		if ctx.Err() != nil {
			if len(batch) > 0 {
				p.lose(batch, ctx.Err())
			}
			return nil
		}
		if err != nil {
			return err
		}
		saved = p.saveChain(batch, saved)
		if err := p.publish(ctx, batch); err != nil {
			p.lose(batch, err)
			return nil
		}
		p.confirm(batch)
	}
}

// maxInFlight is how many batches the shipper keeps on their way to a
// StreamingSink.
const maxInFlight = 2

// flight is a batch started on a StreamingSink.
type flight struct {
	batch []Encoded
	pd    Pending
	start time.Time
}

// ship is Run's loop for a StreamingSink: it starts the next batch while
// up to maxInFlight-1 earlier ones await confirmation, and confirms them in
// order. When the sink fails, every unconfirmed batch is published again,
// in order, with back-off (publish).
func (p *Pipeline) ship(ctx context.Context, sink StreamingSink) error {
	var fl []flight
	var saved uint64
	// failed handles a sink error with fl in flight: every unconfirmed
	// batch is published again, in order. False means stop: ctx ended.
	failed := func() bool {
		if err := ctx.Err(); err != nil {
			for _, f := range fl {
				p.lose(f.batch, err)
			}
			return false
		}
		if !p.republish(ctx, fl) {
			return false
		}
		fl = fl[:0]
		return true
	}
	for {
		var batch []Encoded
		var err error
		if len(fl) == 0 {
			batch, err = p.next(ctx)
			if ctx.Err() != nil {
				if len(batch) > 0 {
					p.lose(batch, ctx.Err())
				}
				return nil
			}
		} else if len(fl) < maxInFlight {
			batch, err = p.poll()
		}
		if err != nil {
			return err
		}
		if len(batch) == 0 {
			// Nothing more to send now: wait for the oldest batch.
			f := fl[0]
			if err := f.pd.Wait(ctx); err != nil {
				if !failed() {
					return nil
				}
				continue
			}
			p.m.publish.Observe(time.Since(f.start).Seconds())
			p.confirm(f.batch)
			fl = append(fl[:0], fl[1:]...)
			continue
		}
		saved = p.saveChain(batch, saved)
		start := time.Now()
		pd, err := sink.StartEncoded(ctx, batch)
		fl = append(fl, flight{batch: batch, pd: pd, start: start})
		if err != nil && !failed() {
			return nil
		}
	}
}

// republish publishes the batches of fl again, in order, each until it
// succeeds (see publish), after the sink failed with them in flight. It
// reports false when ctx ended first.
func (p *Pipeline) republish(ctx context.Context, fl []flight) bool {
	for i, f := range fl {
		if err := p.publish(ctx, f.batch); err != nil {
			for _, g := range fl[i:] {
				p.lose(g.batch, err)
			}
			return false
		}
		p.confirm(f.batch)
	}
	return true
}

// saveChain, in best-effort mode, saves the chain state before batch
// leaves, unless the state saved (at seq saved) already covers it, and
// returns the seq saved. After a crash the chain continues behind the
// events sent (a gap where events were lost, never a seq used twice). The
// state saved is the newest event's, so that while the shipper is behind,
// one save covers the batches of the whole queue.
func (p *Pipeline) saveChain(batch []Encoded, saved uint64) uint64 {
	if p.queue == nil || batch[len(batch)-1].Seq <= saved {
		return saved
	}
	p.mu.Lock()
	st := p.last
	p.mu.Unlock()
	if err := saveChainState(p.dataDir, st); err != nil {
		p.log.Error("audit: saving the chain state", "err", err)
		return saved
	}
	return st.Seq
}

// confirm advances the acknowledgement past batch, which the sink holds.
func (p *Pipeline) confirm(batch []Encoded) {
	last := batch[len(batch)-1].Seq
	if p.spool != nil {
		inst, hash := eventHead(batch[len(batch)-1].Data)
		if err := p.spool.Ack(last, hash, inst); err != nil {
			p.log.Error("audit: recording the acknowledgement", "err", err)
		}
	}
	p.acked.Store(last)
	p.m.acked.Add(float64(len(batch)))
}

// poll is next without waiting: the batch ready now, if any.
func (p *Pipeline) poll() ([]Encoded, error) {
	if p.queue != nil {
		return p.drain(nil), nil
	}
	return p.spool.ReadBatch(p.opts.BatchEvents, p.opts.BatchBytes)
}

// drain adds the events waiting in the memory queue to batch, up to the
// batch limits.
func (p *Pipeline) drain(batch []Encoded) []Encoded {
	size := 0
	for _, e := range batch {
		size += len(e.Data)
	}
	for len(batch) < p.opts.BatchEvents && size < p.opts.BatchBytes {
		select {
		case q := <-p.queue:
			batch = append(batch, q)
			size += len(q.Data)
			continue
		default:
		}
		break
	}
	return batch
}

// next waits for the next batch.
func (p *Pipeline) next(ctx context.Context) ([]Encoded, error) {
	if p.queue != nil {
		var first Encoded
		select {
		case first = <-p.queue:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return p.drain([]Encoded{first}), nil
	}
	for {
		batch, err := p.spool.ReadBatch(p.opts.BatchEvents, p.opts.BatchBytes)
		if len(batch) > 0 {
			return batch, nil
		}
		if err != nil {
			p.log.Error("audit: reading the spool", "err", err)
			return nil, err
		}
		durable, ch := p.spool.Waiter()
		if durable >= p.spool.rnext {
			continue // committed between ReadBatch and Waiter
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// publish hands batch to the sink until it succeeds or ctx ends.
func (p *Pipeline) publish(ctx context.Context, batch []Encoded) error {
	var events []*Event // decoded once, for sinks that want Events
	backoff := p.opts.RetryMin
	for attempt := 1; ; attempt++ {
		start := time.Now()
		var err error
		if p.esink != nil {
			err = p.esink.PublishEncoded(ctx, batch)
		} else {
			if events == nil {
				events = make([]*Event, len(batch))
				for i := range batch {
					if events[i], err = batch[i].Decode(); err != nil {
						return err
					}
				}
			}
			err = p.sink.Publish(ctx, events)
		}
		p.m.publish.Observe(time.Since(start).Seconds())
		if err == nil {
			if attempt > 1 {
				p.log.Info("audit: sink accepted events again", "attempts", attempt, "first_seq", batch[0].Seq)
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt == 1 || attempt%20 == 0 {
			p.log.Warn("audit: publishing to the sink failed; retrying", "err", err, "attempts", attempt,
				"first_seq", batch[0].Seq, "events", len(batch), "spooled", p.spool != nil)
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff = min(backoff*2, p.opts.RetryMax)
	}
}

// lose accounts for a batch Run gave up on: in durable modes it stays in
// the spool for the next start; in best-effort mode it is lost.
func (p *Pipeline) lose(batch []Encoded, cause error) {
	if p.queue == nil {
		return
	}
	p.m.lost.Add(float64(len(batch)))
	p.log.Error("audit: events lost: best-effort batch not delivered before shutdown",
		"lost", len(batch), "first_seq", batch[0].Seq, "last_seq", batch[len(batch)-1].Seq, "err", cause)
}

// Close stops recording (Record then fails with ErrClosed), writes what
// the spool buffers, lets Run deliver the backlog until ctx ends, stops
// Run, saves the chain state and closes the spool and the sink. Events not
// delivered stay in the spool for the next start (durable modes) or are
// counted and logged as lost (best-effort).
func (p *Pipeline) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	last := p.last
	p.mu.Unlock()

	var errs []error
	if p.spool != nil {
		if err := p.spool.Flush(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	p.runMu.Lock()
	running, done := p.running, p.runDone
	p.runMu.Unlock()
	if running {
		t := time.NewTicker(10 * time.Millisecond)
	wait:
		for p.backlog() > 0 {
			select {
			case <-ctx.Done():
				break wait
			case <-done:
				break wait
			case <-t.C:
			}
		}
		t.Stop()
	}
	p.stopped.Do(func() { close(p.stop) })
	if running {
		<-done
	}
	if p.queue != nil {
		n := len(p.queue)
		if n > 0 {
			var first, lastSeq uint64
			for i := 0; i < n; i++ {
				q := <-p.queue
				if i == 0 {
					first = q.Seq
				}
				lastSeq = q.Seq
			}
			p.m.lost.Add(float64(n))
			p.log.Error("audit: events lost: best-effort queue not delivered before shutdown", "lost", n, "first_seq", first, "last_seq", lastSeq)
		}
	}
	if p.spool != nil {
		seq, hash := p.spool.Tail()
		last = ChainState{Instance: p.instance, Seq: seq, Hash: hash}
	}
	if last.Seq > 0 {
		if err := saveChainState(p.dataDir, last); err != nil {
			errs = append(errs, err)
		}
	}
	if p.spool != nil {
		if err := p.spool.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.sink.Close(); err != nil {
		errs = append(errs, fmt.Errorf("audit: closing the sink: %w", err))
	}
	if b := p.backlog(); b > 0 && p.spool != nil {
		p.log.Warn("audit: closed with events waiting in the spool; they are delivered after the next start", "backlog", b)
	}
	return errors.Join(errs...)
}
