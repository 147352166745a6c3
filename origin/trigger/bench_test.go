package trigger

import (
	"context"
	"fmt"
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
