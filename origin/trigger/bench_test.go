package trigger

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/testenv"
)

// benchFirer has 50 triggers on 50 segments, as a large rules file might.
func benchFirer(b *testing.B) *Firer {
	n := testenv.StartNATS(b)
	f, err := NewFirer(context.Background(), FirerConfig{JS: n.JS, Topology: n.Topology})
	if err != nil {
		b.Fatal(err)
	}
	var ts []Trigger
	for i := range 50 {
		ts = append(ts, Trigger{Name: fmt.Sprintf("t%d", i), On: Enter, Segment: fmt.Sprintf("seg%d", i), Webhook: hook})
	}
	if err := f.SetTriggers(ts); err != nil {
		b.Fatal(err)
	}
	return f
}

// BenchmarkFireNoMatch is the common case on the event path: the membership changed, but no
// trigger watches the segments involved. No NATS round trip.
func BenchmarkFireNoMatch(b *testing.B) {
	f := benchFirer(b)
	d := &delta.Delta{UserID: "u1", Members: []string{"other"}, Entered: []string{"other"}}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		d.Version = uint64(i + 1)
		if err := f.Fire(context.Background(), d); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFireOneMatch stores one firing per call and waits for JetStream's ack.
func BenchmarkFireOneMatch(b *testing.B) {
	f := benchFirer(b)
	d := &delta.Delta{UserID: "u1", Members: []string{"seg7"}, Entered: []string{"seg7"}}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		d.Version = uint64(i + 1)
		if err := f.Fire(context.Background(), d); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFireThreeMatches stores three firings per call, published together and acked together.
func BenchmarkFireThreeMatches(b *testing.B) {
	f := benchFirer(b)
	d := &delta.Delta{UserID: "u1", Members: []string{"seg1", "seg2", "seg3"}, Entered: []string{"seg1", "seg2", "seg3"}}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		d.Version = uint64(i + 1)
		if err := f.Fire(context.Background(), d); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSign(b *testing.B) {
	body, now := make([]byte, 400), time.Unix(1_800_000_000, 0)
	b.ReportAllocs()
	for b.Loop() {
		_ = Sign(testSecret, now, body)
	}
}

// BenchmarkDeliver is the dispatcher's throughput: b.N firings stored, then delivered (signed
// POST, 2xx, ack) to a receiver on 127.0.0.1 with the default 8 deliveries in flight. ns/op is
// wall time per delivered firing.
func BenchmarkDeliver(b *testing.B) {
	n := testenv.StartNATS(b)
	var got atomic.Int64
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		got.Add(1)
	}))
	defer rcv.Close()
	f, err := NewFirer(context.Background(), FirerConfig{JS: n.JS, Topology: n.Topology, AllowHosts: []string{"127.0.0.1"}})
	if err != nil {
		b.Fatal(err)
	}
	if err := f.SetTriggers([]Trigger{{Name: "t", On: Enter, Segment: "s", Webhook: rcv.URL}}); err != nil {
		b.Fatal(err)
	}
	d, err := NewDispatcher(DispatcherConfig{JS: n.JS, Topology: n.Topology, Secret: testSecret, AllowHosts: []string{"127.0.0.1"}})
	if err != nil {
		b.Fatal(err)
	}
	for i := range b.N {
		if err := f.Fire(context.Background(), &delta.Delta{UserID: "u", Version: uint64(i + 1), Entered: []string{"s"}}); err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	b.ResetTimer()
	go func() { done <- d.Run(ctx) }()
	deadline := time.Now().Add(2 * time.Minute)
	for got.Load() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("delivered %d of %d", got.Load(), b.N)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
