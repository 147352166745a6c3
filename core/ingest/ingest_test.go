package ingest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/testenv"
)

func newPublisher(t *testing.T) (*Publisher, *testenv.NATS) {
	t.Helper()
	n := testenv.StartNATS(t)
	if err := bus.EnsureStreams(context.Background(), n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return NewPublisher(n.JS, n.Topology, "origin", prometheus.NewRegistry()), n
}

// stored reads every message of EVENTS: per subject, the events of each message in order.
func stored(t *testing.T, n *testenv.NATS) (map[string][][]string, int) {
	t.Helper()
	ctx := context.Background()
	s, err := n.JS.Stream(ctx, n.Topology.EventsStream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][][]string{}
	count := 0
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		evs, _, err := event.DecodeMessage(m.Data, nil, nil)
		if err != nil {
			t.Fatalf("message %d on %s does not decode: %v", seq, m.Subject, err)
		}
		if want := event.MessageID(ids(evs)); m.Header.Get(jetstream.MsgIDHeader) != want {
			t.Errorf("message %d: Nats-Msg-Id %q, want %q", seq, m.Header.Get(jetstream.MsgIDHeader), want)
		}
		out[m.Subject] = append(out[m.Subject], ids(evs))
		count++
	}
	return out, count
}

func ids(evs []event.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

// users returns k user ids of partition p and one of another partition.
func users(parts, p, k int) (same []string, other string) {
	for i := 0; len(same) < k || other == ""; i++ {
		u := fmt.Sprintf("user-%d", i)
		if event.Partition(u, parts) == p {
			if len(same) < k {
				same = append(same, u)
			}
		} else if other == "" {
			other = u
		}
	}
	return same, other
}

// One request's events become one message per partition, the events of each in request order,
// and a retry of the same request within the duplicate window stores nothing again.
func TestPublishSendsOneMessagePerPartition(t *testing.T) {
	pub, n := newPublisher(t)
	parts := n.Topology.Partitions
	same, other := users(parts, 1, 2)
	now := time.Now()
	evs := []event.Event{
		{ID: "a1", UserID: same[0], Type: "page_view", TS: now},
		{ID: "o1", UserID: other, Type: "page_view", TS: now},
		{ID: "b1", UserID: same[1], Type: "add_to_cart", TS: now, Props: map[string]any{"sku": "x"}},
		{ID: "a2", UserID: same[0], Type: "purchase_completed", TS: now},
	}
	for attempt := range 2 {
		for i, err := range pub.Publish(context.Background(), evs, now) {
			if err != nil {
				t.Fatalf("attempt %d: event %d not stored: %v", attempt, i, err)
			}
		}
	}
	got, count := stored(t, n)
	if count != 2 {
		t.Errorf("stored %d messages for 4 events on 2 partitions (sent twice), want 2: %v", count, got)
	}
	if want := [][]string{{"a1", "b1", "a2"}}; fmt.Sprint(got[n.Topology.EventSubject(1)]) != fmt.Sprint(want) {
		t.Errorf("partition 1 holds %v, want %v", got[n.Topology.EventSubject(1)], want)
	}
	if want := [][]string{{"o1"}}; fmt.Sprint(got[n.Topology.EventSubject(event.Partition(other, parts))]) != fmt.Sprint(want) {
		t.Errorf("the other partition holds %v, want %v", got, want)
	}
	if got := testutil.ToFloat64(pub.AcceptedCounter()); got != 8 {
		t.Errorf("accepted counter = %v, want 8 (each answer counts)", got)
	}
}

// A partition's events that would make a message larger than the bound are split over several
// messages, in order, none larger than the bound (an event larger than the bound on its own
// travels alone).
func TestPublishSplitsLargeGroups(t *testing.T) {
	pub, n := newPublisher(t)
	pub.maxPayload = 3 * 1024 // bound: 2 KiB
	same, _ := users(n.Topology.Partitions, 3, 3)
	now := time.Now()
	var evs []event.Event
	for i := range 12 {
		evs = append(evs, event.Event{ID: fmt.Sprintf("e%02d", i), UserID: same[i%3], Type: "page_view", TS: now,
			Props: map[string]any{"pad": strings.Repeat("x", 400)}})
	}
	evs[5].Props["pad"] = strings.Repeat("y", 3000)
	for i, err := range pub.Publish(context.Background(), evs, now) {
		if err != nil {
			t.Fatalf("event %d not stored: %v", i, err)
		}
	}
	got, count := stored(t, n)
	msgs := got[n.Topology.EventSubject(3)]
	var order []string
	for _, m := range msgs {
		order = append(order, m...)
	}
	if fmt.Sprint(order) != fmt.Sprint(ids(evs)) {
		t.Errorf("events stored in the order %v, want %v", order, ids(evs))
	}
	// ~530 bytes an event: 3 fit in 2 KiB; the 3000-byte one travels alone.
	if want := "[[e00 e01 e02] [e03 e04] [e05] [e06 e07 e08] [e09 e10 e11]]"; fmt.Sprint(msgs) != want || count != 5 {
		t.Errorf("messages %v, want %s", msgs, want)
	}
}

// An event is accepted iff its message was stored: with JetStream gone, every event of the
// request gets the error.
func TestPublishAnswersPerEvent(t *testing.T) {
	pub, n := newPublisher(t)
	now := time.Now()
	evs := []event.Event{
		{ID: "ok", UserID: "u1", Type: "page_view", TS: now},
		{ID: "nan", UserID: "u2", Type: "page_view", TS: now, Props: map[string]any{"x": nanValue()}},
	}
	errs := pub.Publish(context.Background(), evs, now)
	if errs[0] != nil || errs[1] == nil || !strings.Contains(errs[1].Error(), "encode") {
		t.Fatalf("answers %v: want the first stored and the unencodable one refused", errs)
	}
	if err := n.JS.DeleteStream(context.Background(), n.Topology.EventsStream()); err != nil {
		t.Fatal(err)
	}
	pub.timeout = time.Second
	for i, err := range pub.Publish(context.Background(), evs[:1], now) {
		if err == nil {
			t.Errorf("event %d accepted with no stream to store it", i)
		}
	}
}

func nanValue() float64 {
	zero := 0.0
	return zero / zero
}
