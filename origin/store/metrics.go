package store

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
)

// Metrics are the store's Prometheus metrics.
type Metrics struct {
	errors *prometheus.CounterVec
	apply  prometheus.Histogram
}

// NewMetrics registers segedge_origin_store_errors_total{op} and
// segedge_origin_store_apply_duration_seconds on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "segedge_origin_store_errors_total",
			Help: "Profile store operations that failed (not counting profiles not found), by operation.",
		}, []string{"op"}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "segedge_origin_store_apply_duration_seconds",
			Help:    "Time to apply one event to a profile in the store, duplicates included.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16), // 50µs .. ~1.6s
		}),
	}
	for _, op := range []string{"apply", "get", "delete", "scan"} {
		m.errors.WithLabelValues(op)
	}
	if reg != nil {
		reg.MustRegister(m.errors, m.apply)
	}
	return m
}

// Instrument wraps s so that its operations are measured by m.
func Instrument(s Store, m *Metrics) Store { return &instrumented{Store: s, m: m} }

type instrumented struct {
	Store
	m *Metrics
}

func (i *instrumented) Apply(ctx context.Context, ev event.Event, spec *profile.Spec) (*profile.Profile, bool, error) {
	start := time.Now()
	p, applied, err := i.Store.Apply(ctx, ev, spec)
	i.m.apply.Observe(time.Since(start).Seconds())
	if err != nil {
		i.m.errors.WithLabelValues("apply").Inc()
	}
	return p, applied, err
}

// ApplyBatch observes the batch's time divided among its events, so the histogram stays "time
// to apply one event" whether events come one by one or in batches.
func (i *instrumented) ApplyBatch(ctx context.Context, evs []event.Event, spec *profile.Spec) ([]Result, error) {
	start := time.Now()
	res, err := i.Store.ApplyBatch(ctx, evs, spec)
	if len(evs) > 0 {
		per := time.Since(start).Seconds() / float64(len(evs))
		for range evs {
			i.m.apply.Observe(per)
		}
	}
	if err != nil {
		i.m.errors.WithLabelValues("apply").Add(float64(len(evs)))
		return res, err
	}
	for _, r := range res {
		if r.Err != nil {
			i.m.errors.WithLabelValues("apply").Inc()
		}
	}
	return res, nil
}

func (i *instrumented) Get(ctx context.Context, userID string) (*profile.Profile, error) {
	p, err := i.Store.Get(ctx, userID)
	if err != nil && !errors.Is(err, ErrNotFound) {
		i.m.errors.WithLabelValues("get").Inc()
	}
	return p, err
}

func (i *instrumented) Delete(ctx context.Context, userID string) error {
	err := i.Store.Delete(ctx, userID)
	if err != nil {
		i.m.errors.WithLabelValues("delete").Inc()
	}
	return err
}

func (i *instrumented) Scan(ctx context.Context, cursor string, count int) ([]string, string, error) {
	ids, next, err := i.Store.Scan(ctx, cursor, count)
	if err != nil {
		i.m.errors.WithLabelValues("scan").Inc()
	}
	return ids, next, err
}
