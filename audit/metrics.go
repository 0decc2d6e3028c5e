package audit

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the pipeline's Prometheus series.
type metrics struct {
	recorded prometheus.Counter
	acked    prometheus.Counter
	dropped  *prometheus.CounterVec
	lost     prometheus.Counter
	publish  prometheus.Histogram
	gauges   []prometheus.Collector
}

func newMetrics(p *Pipeline) *metrics {
	m := &metrics{
		recorded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_audit_events_recorded_total",
			Help: "Audit events recorded (spooled with fsync, or queued in best-effort mode).",
		}),
		acked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_audit_events_acknowledged_total",
			Help: "Audit events the sink acknowledged as stored.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_audit_events_dropped_total",
			Help: "Audit events not recorded, by reason (buffer_full, spool_full, spool_error, closed, encode).",
		}, []string{"reason"}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_audit_events_lost_total",
			Help: "Recorded audit events lost afterwards (torn spool records after a crash, best-effort events undelivered at shutdown).",
		}),
		publish: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "portcullis_audit_publish_seconds",
			Help:    "Time the sink took per batch (including failed attempts).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
	}
	for _, r := range []string{dropBufferFull, dropSpoolFull, dropSpoolError, dropClosed, dropEncode} {
		m.dropped.WithLabelValues(r)
	}
	m.gauges = []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "portcullis_audit_spool_bytes",
			Help: "Bytes in the audit spool on disk (0 in best-effort mode).",
		}, func() float64 {
			if p.spool == nil {
				return 0
			}
			return float64(p.spool.Stats().Bytes)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "portcullis_audit_last_seq",
			Help:        "The seq of the last audit event this instance recorded: what the trail's newest event of the instance should carry (a trail cut at its end shows a lower one).",
			ConstLabels: prometheus.Labels{"instance_id": p.instance},
		}, func() float64 {
			p.mu.Lock()
			defer p.mu.Unlock()
			return float64(p.last.Seq)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "portcullis_audit_backlog_events",
			Help: "Recorded audit events the sink has not acknowledged yet.",
		}, func() float64 { return float64(p.backlog()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "portcullis_audit_sink_live",
			Help: "1 when the audit sink is reachable, 0 while events wait.",
		}, func() float64 {
			if p.sink.Status().Live {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "portcullis_audit_spool_commits_total",
			Help: "Group commits (one write and one fsync each) of the audit spool.",
		}, func() float64 {
			if p.spool == nil {
				return 0
			}
			return float64(p.spool.Stats().Commits)
		}),
	}
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	cs := append([]prometheus.Collector{m.recorded, m.acked, m.dropped, m.lost, m.publish}, m.gauges...)
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("audit: metrics: %w", err)
		}
	}
	return nil
}
