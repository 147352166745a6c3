package ingest

import (
	"fmt"
	"testing"
	"time"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/event"
)

// BenchmarkGroup50 encodes a request of 50 events shaped like the load generator's into EVENTS
// messages (8 partitions): the ingest path's own work besides decoding and publishing.
func BenchmarkGroup50(b *testing.B) {
	p := &Publisher{topo: bus.Topology{Partitions: 8}}
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	evs := make([]event.Event, 50)
	for i := range evs {
		evs[i] = event.Event{ID: fmt.Sprintf("lg-0123456789-%d", i), UserID: fmt.Sprintf("user-%d", i*7919%10000),
			Type: "page_view", TS: now, Props: map[string]any{"path": "/products/42", "ref": "search", "n": float64(i)}}
	}
	errs := make([]error, len(evs))
	b.ReportAllocs()
	for b.Loop() {
		if msgs := p.group(evs, now, errs); len(msgs) == 0 {
			b.Fatal("no messages")
		}
	}
}
