package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Errors callers inspect with errors.Is.
var (
	// ErrUnavailable means the event could not be recorded (spool full or
	// failing, or in best-effort mode the buffer is full). In fail-closed
	// mode the proxy answers 503 and does not forward.
	ErrUnavailable = errors.New("audit: cannot record event")
	// ErrClosed means the recorder was closed.
	ErrClosed = errors.New("audit: closed")
	// ErrNoEvents means a Source's trail holds nothing at all (an empty or
	// misnamed topic), as opposed to no event in a time range.
	ErrNoEvents = errors.New("audit: the trail holds no events")
)

// Recorder is the proxy's view of the audit pipeline.
//
// Implementations are safe for concurrent use.
type Recorder interface {
	// Record completes ev (ID, Instance, Seq, PrevHash, Hash; Schema and
	// Time when zero) and records it according to the delivery mode:
	// durable and fail-closed return only after the event is on the
	// fsync'd spool (group commit), best-effort after it is queued in memory.
	// The error wraps ErrUnavailable when the event could not be recorded
	// (also after Close, when it wraps ErrClosed too); the event is then
	// counted as dropped and logged. ctx bounds the wait; when it ends
	// first, the error wraps ctx.Err() and the event may still be recorded.
	Record(ctx context.Context, ev *Event) error
	// Accepting reports whether Record is currently expected to succeed.
	// The proxy checks it before forwarding in fail-closed mode.
	Accepting() bool
}

// Sink delivers events to their destination (a file, a Pulsar topic).
//
// Publish is called from a single goroutine, in Seq order, with batches
// read from the spool. It returns nil only once the destination holds every
// event of the batch durably (for Pulsar: acknowledged by the broker); on
// error the whole batch is retried later, so a Sink must tolerate (or, like
// Pulsar with de-duplication, suppress) re-delivery of events it already
// stored. Publish must honour ctx cancellation.
type Sink interface {
	Publish(ctx context.Context, batch []*Event) error
	// Status reports whether the destination is reachable right now.
	Status() SinkStatus
	// Close releases connections; pending Publish calls fail.
	Close() error
}

// EncodedSink is a Sink that publishes the spool's encoded events as they
// are, without decoding them into Events and encoding them again. The
// pipeline's shipper uses PublishEncoded when the sink implements it, and
// Publish otherwise; both FileSink and PulsarSink should implement it.
//
// PublishEncoded has Publish's contract: one goroutine, batches in Seq
// order, nil only once every event is durably stored, the whole batch
// retried after an error, ctx honoured. batch[i].Data is the exact JSON to
// store or send (the message payload); it must not be modified.
type EncodedSink interface {
	Sink
	PublishEncoded(ctx context.Context, batch []Encoded) error
}

// StreamingSink is an EncodedSink that keeps several batches on their way
// at once, so that the shipper sends the next batch while the destination
// still confirms the previous one (a synchronous PublishEncoded leaves the
// connection idle for a round trip per batch). PulsarSink implements it.
//
// StartEncoded has PublishEncoded's contract except that it does not wait:
// it sends batch after the batches started before it and returns a Pending
// whose Wait returns nil once every event of batch is durably stored. The
// caller waits for Pendings in the order it started them, from the same
// goroutine. After an error from StartEncoded or from any Wait, nothing
// not yet confirmed is assumed stored: the caller waits for none of the
// later Pendings and publishes those batches again, in order.
type StreamingSink interface {
	EncodedSink
	StartEncoded(ctx context.Context, batch []Encoded) (Pending, error)
}

// Pending is a batch a StreamingSink has sent and not yet confirmed.
type Pending interface {
	Wait(ctx context.Context) error
}

// SinkStatus is reported on /readyz and in metrics.
type SinkStatus struct {
	// Live is true when the last contact with the destination succeeded.
	Live bool
	// Detail says what is wrong when not live.
	Detail string
}

// Filter selects events for query, tail and verify. Zero fields match
// everything.
type Filter struct {
	Since, Until time.Time
	// User matches the subject or the email.
	User  string
	Route string
	// RouteSet makes an empty Route a filter too: the events of requests
	// no route served (route "").
	RouteSet bool
	Decision string
}

// ForeignReporter is implemented by the Sources (file, Pulsar): after
// ReportForeign(fn), a stored record that is not an audit event (a stray
// message in the topic, a foreign or torn line in a file) is skipped and
// reported to fn with where it is, instead of ending Read with an error.
type ForeignReporter interface {
	ReportForeign(fn func(where string, err error))
}

// decodeEvent decodes one stored event, refusing JSON that is not one
// (no schema version, instance, seq or id).
func decodeEvent(data []byte, ev *Event) error {
	if err := json.Unmarshal(data, ev); err != nil {
		return err
	}
	if ev.Schema != SchemaVersion || ev.Instance == "" || ev.Seq == 0 || ev.ID == "" {
		return fmt.Errorf("not a schema %d audit event (schema %d, instance %q, seq %d)", SchemaVersion, ev.Schema, ev.Instance, ev.Seq)
	}
	return nil
}

// Source reads events back in time order (query, tail, verify).
//
// Implementations are not required to be safe for concurrent use.
type Source interface {
	// Read calls fn for every stored event with Time in [f.Since, f.Until)
	// (Until zero: up to the newest event now stored), in time order per
	// instance, until fn returns false or an error. Filtering on User,
	// Route and Decision is the caller's job (see Filter.Match).
	Read(ctx context.Context, f Filter, fn func(*Event) (bool, error)) error
	// Follow is Read that does not stop at the newest event: it waits for
	// new ones until ctx is cancelled (then returns nil).
	Follow(ctx context.Context, f Filter, fn func(*Event) (bool, error)) error
	Close() error
}
