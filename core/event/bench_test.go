package event

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// benchEvents are 50 events shaped like the load generator's: a page view with three props.
func benchEvents() []Event {
	evs := make([]Event, 50)
	for i := range evs {
		evs[i] = Event{ID: "evt-" + strconv.Itoa(100000+i), UserID: "user-" + strconv.Itoa(4242+i), Type: "page_view",
			TS: now.Add(-time.Duration(i) * time.Second), Props: map[string]any{"path": "/products/" + strconv.Itoa(i), "ref": "google", "ms": 120.0}}
	}
	return evs
}

// BenchmarkEncodeMessage50 is the ingest side of EVENTS: 50 events into one message body, with
// the hand-written encoder and with json.Marshal (the encoder before it), side by side.
func BenchmarkEncodeMessage50(b *testing.B) {
	evs := benchEvents()
	for _, e := range []struct {
		name string
		fn   func([]byte, Event, time.Time) ([]byte, error)
	}{{"encoding_json", appendWireStd}, {"segedge", AppendWire}} {
		b.Run("impl="+e.name, func(b *testing.B) {
			b.ReportAllocs()
			var buf []byte
			for b.Loop() {
				buf = buf[:0]
				for i, ev := range evs {
					if i > 0 {
						buf = append(buf, '\n')
					}
					var err error
					if buf, err = e.fn(buf, ev, now); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.SetBytes(int64(len(buf)))
			b.ReportMetric(float64(b.N*len(evs))/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkDecodeMessage50 is the worker side: one message of 50 events back into events,
// with the scanner and with encoding/json (the decoder before it), side by side.
func BenchmarkDecodeMessage50(b *testing.B) {
	evs := benchEvents()
	body := ndjson(b, now, evs...)
	for _, d := range []struct {
		name string
		fn   func([]byte, []Event, []time.Time) ([]Event, []time.Time, error)
	}{{"encoding_json", decodeMessageStd}, {"segedge", DecodeMessage}} {
		b.Run("impl="+d.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			var got []Event
			var at []time.Time
			for b.Loop() {
				var err error
				if got, at, err = d.fn(body, got[:0], at[:0]); err != nil || len(got) != len(evs) {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(evs))/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkDecodeBody50 is the HTTP side: a request body of 50 events (a JSON array, RFC 3339
// times, three props each) decoded and validated, with the scanner and with encoding/json.
func BenchmarkDecodeBody50(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("[")
	for i, ev := range benchEvents() {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `{"event_id":%q,"user_id":%q,"type":%q,"ts":%q,"props":{"path":%q,"ref":"google","ms":120}}`,
			ev.ID, ev.UserID, ev.Type, ev.TS.Format(time.RFC3339), ev.Props["path"])
	}
	sb.WriteString("]")
	body := []byte(sb.String())
	for _, d := range []struct {
		name string
		fn   func([]byte, string, Limits, time.Time) ([]Event, []FieldError, error)
	}{{"encoding_json", referenceDecode}, {"segedge", Decode}} {
		b.Run("impl="+d.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				evs, errs, err := d.fn(body, "application/json", Limits{}, now)
				if err != nil || len(errs) != 0 || len(evs) != 50 {
					b.Fatal(err, errs)
				}
			}
			b.ReportMetric(float64(b.N*50)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
