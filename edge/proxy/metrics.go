package proxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	duration *prometheus.HistogramVec
	errors   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "segedge_edge_upstream_request_duration_seconds",
			Help:    "Time from sending a request to the upstream until its response headers arrived, by status class (error: no response).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"status"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "segedge_edge_upstream_errors_total",
			Help: "Upstream requests that got no response, by reason (connect, connect_timeout, timeout, closed, protocol).",
		}, []string{"reason"}),
	}
	for _, r := range []string{"connect", "connect_timeout", "dial", "timeout", "closed", "protocol", "body"} {
		m.errors.WithLabelValues(r) // every series from the start: docs/metrics.md, rate() and alerts see them
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.duration, m.errors} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register metrics: %w", err)
			}
		}
	}
	return m, nil
}
