package audit

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// MultiSink delivers every batch to several sinks (for example the file
// and Pulsar, as `portcullis dev --pulsar` does). A batch is acknowledged
// only when every sink stored it; after a failure the whole batch goes to
// every sink again, which FileSink and PulsarSink both de-duplicate by Seq.
type MultiSink struct {
	sinks []Sink
}

var _ EncodedSink = (*MultiSink)(nil)

// NewMultiSink combines sinks; it owns them and closes them in Close.
func NewMultiSink(sinks ...Sink) *MultiSink {
	return &MultiSink{sinks: sinks}
}

// PublishEncoded publishes batch to every sink in turn.
func (m *MultiSink) PublishEncoded(ctx context.Context, batch []Encoded) error {
	var events []*Event
	for i, s := range m.sinks {
		if es, ok := s.(EncodedSink); ok {
			if err := es.PublishEncoded(ctx, batch); err != nil {
				return fmt.Errorf("audit: sink %d of %d: %w", i+1, len(m.sinks), err)
			}
			continue
		}
		if events == nil {
			events = make([]*Event, len(batch))
			for j := range batch {
				ev, err := batch[j].Decode()
				if err != nil {
					return err
				}
				events[j] = ev
			}
		}
		if err := s.Publish(ctx, events); err != nil {
			return fmt.Errorf("audit: sink %d of %d: %w", i+1, len(m.sinks), err)
		}
	}
	return nil
}

// Publish publishes batch to every sink in turn.
func (m *MultiSink) Publish(ctx context.Context, batch []*Event) error {
	for i, s := range m.sinks {
		if err := s.Publish(ctx, batch); err != nil {
			return fmt.Errorf("audit: sink %d of %d: %w", i+1, len(m.sinks), err)
		}
	}
	return nil
}

// Status is live when every sink is.
func (m *MultiSink) Status() SinkStatus {
	var details []string
	for _, s := range m.sinks {
		if st := s.Status(); !st.Live {
			details = append(details, st.Detail)
		}
	}
	if len(details) > 0 {
		return SinkStatus{Detail: strings.Join(details, "; ")}
	}
	return SinkStatus{Live: true}
}

// Close closes every sink.
func (m *MultiSink) Close() error {
	var errs []error
	for _, s := range m.sinks {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}
