package engine

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	applied, duplicates, poison, applyErrors, evalErrors, publishErrors, deadLettered prometheus.Counter
	forgotten, notEvaluated                                                           prometheus.Counter
	deltas, directRejected                                                            *prometheus.CounterVec
	applyDur, ingestToProfile, ingestToDelta, expiryLateness                          prometheus.Histogram
	lag                                                                               *prometheus.GaugeVec
	batchSize, deltaBatchSize                                                         prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	// Fine around the 10 ms goal, coarse in the tail.
	lat := []float64{0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
	m := &metrics{
		applied:    prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_events_applied_total", Help: "Events applied to profiles."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_events_duplicate_total", Help: "Redelivered events recognised by id and not applied again."}),
		notEvaluated: prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_evaluations_skipped_total",
			Help: "Applied events of a type the active ruleset does not read: the profile was updated but not evaluated (no segment's inputs changed)."}),
		forgotten: prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_profiles_forgotten_total",
			Help: "Users erased everywhere (erase delta, memberships, member counts) because their profile expired after SEGEDGE_RETENTION with no event."}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_events_dead_lettered_total", Help: "Events the profile store refused on every one of MaxEventAttempts deliveries, moved to EVENTS_DLQ."}),
		directRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segedge_origin_direct_events_rejected_total",
			Help: "Events a backend published on EVENTS itself that fail the checks of POST /v1/events, moved to EVENTS_DLQ with their reasons, by the first field at fault (event: the event as a whole)."}, []string{"field"}),
		poison:          prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_events_unreadable_total", Help: "Messages on EVENTS that could not be decoded and were dropped."}),
		applyErrors:     prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_profile_update_failures_total", Help: "Profile updates that failed and will be retried."}),
		evalErrors:      prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_eval_failures_total", Help: "Ruleset evaluations that failed."}),
		publishErrors:   prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_delta_publish_failures_total", Help: "Deltas JetStream did not store (retried)."}),
		deltas:          prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segedge_origin_deltas_published_total", Help: "Deltas published, by cause."}, []string{"cause"}),
		applyDur:        prometheus.NewHistogram(prometheus.HistogramOpts{Name: "segedge_origin_profile_update_duration_seconds", Help: "Time to apply one event to the store.", Buckets: lat}),
		ingestToProfile: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "segedge_origin_ingest_to_profile_seconds", Help: "From event accepted to profile updated.", Buckets: lat}),
		ingestToDelta:   prometheus.NewHistogram(prometheus.HistogramOpts{Name: "segedge_origin_ingest_to_delta_seconds", Help: "From event accepted to its delta published.", Buckets: lat}),
		expiryLateness:  prometheus.NewHistogram(prometheus.HistogramOpts{Name: "segedge_origin_expiry_lateness_seconds", Help: "From a time-based change's due time (a window passing, since() or a decayed score() crossing a rule's constant) to its delta published.", Buckets: lat}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "segedge_origin_event_batch_size", Help: "Events a partition worker handled together (one store pipeline, one membership read and write).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}}),
		deltaBatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "segedge_origin_delta_batch_size", Help: "Deltas in one DELTAS message (a partition worker's batch, split above 256 KiB).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "segedge_origin_consumer_lag_messages", Help: "Messages of EVENTS waiting or unacknowledged per partition (a message holds one request's events of that partition)."}, []string{"partition"}),
	}
	for _, c := range []string{"event", "expiry", "ruleset", "erase"} {
		m.deltas.WithLabelValues(c)
	}
	for _, f := range []string{"event", "event_id", "user_id", "type", "ts", "props"} {
		m.directRejected.WithLabelValues(f)
	}
	reg.MustRegister(m.applied, m.forgotten, m.notEvaluated, m.duplicates, m.poison, m.deadLettered, m.directRejected, m.applyErrors, m.evalErrors, m.publishErrors, m.deltas,
		m.applyDur, m.ingestToProfile, m.ingestToDelta, m.expiryLateness, m.lag, m.batchSize, m.deltaBatchSize)
	return m
}

// watchLag samples each partition's consumer for its pending count every 5 seconds. Every
// partition's series exists from the start (at 0 until sampled): a consumer being recreated by
// a new lease holder is missing for a moment, and a dashboard must not lose the series then.
func (e *Engine) watchLag(ctx context.Context) {
	for _, p := range e.cfg.Partitions {
		e.m.lag.WithLabelValues(strconv.Itoa(p))
	}
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		for _, p := range e.cfg.Partitions {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			c, err := e.cfg.JS.Consumer(cctx, e.cfg.Topology.EventsStream(), e.cfg.ConsumerName+"-p"+strconv.Itoa(p))
			if err == nil {
				if info, err := c.Info(cctx); err == nil {
					e.m.lag.WithLabelValues(strconv.Itoa(p)).Set(float64(info.NumPending + uint64(info.NumAckPending)))
				}
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
