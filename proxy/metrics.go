package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's Prometheus series. They live on a registry passed
// in by the caller and survive config reloads.
type metrics struct {
	requests       *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	phase          *prometheus.HistogramVec
	upstreamErrors *prometheus.CounterVec
	inflight       prometheus.Gauge
	reloads        *prometheus.CounterVec

	// The phase histogram's series, resolved once instead of per request.
	phaseAuthn, phasePolicy, phaseAudit prometheus.Observer
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_requests_total",
			Help: "Requests answered, by route, status code and decision.",
		}, []string{"route", "code", "decision"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "portcullis_request_duration_seconds",
			Help:    "Time from request start until the response headers were written, by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route"}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "portcullis_phase_duration_seconds",
			Help:    "Time spent per request in Portcullis's own phases (authn, policy, audit).",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .05},
		}, []string{"phase"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_upstream_errors_total",
			Help: "Requests that could not be completed by the upstream, by route and kind (timeout, unreachable, canceled).",
		}, []string{"route", "kind"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "portcullis_requests_in_flight",
			Help: "Requests being served now.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_config_reloads_total",
			Help: "Configuration reloads by result (ok, error).",
		}, []string{"result"}),
	}
	m.phaseAuthn = m.phase.WithLabelValues("authn")
	m.phasePolicy = m.phase.WithLabelValues("policy")
	m.phaseAudit = m.phase.WithLabelValues("audit")
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.phase, m.upstreamErrors, m.inflight, m.reloads)
	}
	return m
}
