package httpcache

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests *prometheus.CounterVec
	purges   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, c *Cache) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "segedge_edge_cache_requests_total",
			Help: "Requests answered by the edge cache path, by result (HIT, MISS, STALE, PASS, REVALIDATED).",
		}, []string{"result"}),
		purges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "segedge_edge_cache_purges_total",
			Help: "Purge operations, by kind (url, prefix, tag, dependency, unsafe_method).",
		}, []string{"kind"}),
	}
	for _, k := range []string{"url", "prefix", "tag", "dependency", "unsafe_method"} {
		m.purges.WithLabelValues(k) // every series from the start: docs/metrics.md, rate() and alerts see them
	}
	if reg == nil {
		return m, nil
	}
	bytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "segedge_edge_cache_bytes",
		Help: "Weighted size of the cache (bodies, headers, keys).",
	}, func() float64 { return float64(c.store.WeightedSize()) })
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "segedge_edge_cache_entries",
		Help: "Stored entries (Vary markers included), estimated.",
	}, func() float64 { return float64(c.store.EstimatedSize()) })
	for _, col := range []prometheus.Collector{m.requests, m.purges, bytes, entries} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
