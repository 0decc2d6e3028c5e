package audit

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// SinkOptions are what NewSink passes on to the sink it builds.
type SinkOptions struct {
	// Logger receives the sink's log lines (nil: discarded).
	Logger *slog.Logger
	// Registerer receives the Pulsar client's metrics (nil: a private
	// registry, never the global one).
	Registerer prometheus.Registerer
	// Instance is the proxy instance id, which names the Pulsar producer.
	// Empty: InstanceID(cfg, DataDir), with DataDir defaulting to the data
	// directory given to cfg.SetDefaults.
	Instance string
	DataDir  string
}

// NewSink builds the sink cfg.Sink names: a FileSink for "file", a
// PulsarSink for "pulsar" (which keeps connecting in the background when
// the broker is down; see NewPulsarSink). Pass it to Open, which then owns
// it.
func NewSink(ctx context.Context, cfg Config, opts SinkOptions) (Sink, error) {
	switch cfg.Sink {
	case SinkFile, "":
		s, err := NewFileSink(cfg.File, FileSinkOptions{Logger: opts.Logger})
		if err != nil {
			return nil, err
		}
		return s, nil
	case SinkPulsar:
		instance := opts.Instance
		if instance == "" {
			var err error
			if instance, err = InstanceID(cfg, opts.DataDir); err != nil {
				return nil, err
			}
		}
		s, err := NewPulsarSink(ctx, cfg.Pulsar, PulsarOptions{Instance: instance, Logger: opts.Logger, Registerer: opts.Registerer})
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	return nil, fmt.Errorf("audit: unknown sink %q", cfg.Sink)
}
