package engine

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ingest"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/schedule"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
)

// An event the store refuses on every delivery goes to EVENTS_DLQ after MaxEventAttempts
// deliveries, with the reason, and its message is acknowledged: the other events of the
// message are applied once, the consumer has nothing pending, and nothing is lost. Before, the
// message came back every second forever.
func TestAnEventRefusedOnEveryDeliveryGoesToEventsDLQ(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	var users []string // three users of partition 1
	for i := 0; len(users) < 3; i++ {
		if u := fmt.Sprintf("u%d", i); event.Partition(u, n.Topology.Partitions) == 1 {
			users = append(users, u)
		}
	}
	now := time.Now()
	var evs []event.Event
	for i := range 4 {
		evs = append(evs, event.Event{ID: fmt.Sprintf("e-%d", i), UserID: users[i%3], Type: "add_to_cart", TS: now})
	}
	pub := ingest.NewPublisher(n.JS, n.Topology, "origin", prometheus.NewRegistry())
	for i, err := range pub.Publish(ctx, evs, now) { // one message of four events
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	st := &refusingStore{Store: memory.New(store.Options{}), refuse: map[string]bool{"e-2": true}, always: true}
	const attempts = 3
	eng, err := New(Config{
		JS: n.JS, Topology: n.Topology, Store: st, Members: members.NewMemory(), Schedule: schedule.NewMemory(),
		Rules: func() Rules { return parityRules{} }, Partitions: []int{1}, DuePoll: 10 * time.Millisecond,
		AckWait: 2 * time.Second, MaxEventAttempts: attempts,
	})
	if err != nil {
		t.Fatal(err)
	}
	go eng.Run(ctx)

	deadline := time.Now().Add(20 * time.Second)
	for testutil.ToFloat64(eng.m.deadLettered) < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := testutil.ToFloat64(eng.m.deadLettered); got != 1 {
		t.Fatalf("dead-lettered %v events, want 1", got)
	}
	if got := st.refusals(); got != attempts {
		t.Errorf("the store refused e-2 %d times, want %d (one per delivery)", got, attempts)
	}
	if got := testutil.ToFloat64(eng.m.applied); got != 3 {
		t.Errorf("applied %v events, want the other 3", got)
	}
	dlq, err := n.JS.Stream(ctx, n.Topology.EventsDLQStream())
	if err != nil {
		t.Fatal(err)
	}
	m, err := dlq.GetLastMsgForSubject(ctx, n.Topology.EventsDLQSubject(1))
	if err != nil {
		t.Fatalf("nothing in EVENTS_DLQ: %v", err)
	}
	got, _, err := event.DecodeMessage(m.Data, nil, nil)
	if err != nil || len(got) != 1 || got[0].ID != "e-2" || got[0].UserID != users[2] {
		t.Fatalf("EVENTS_DLQ holds %+v (%v); want e-2 only", got, err)
	}
	if r := m.Header.Get("Segedge-Error"); !strings.Contains(r, "profile hash unreadable") {
		t.Errorf("Segedge-Error = %q; want the store's reason", r)
	}
	waitNothingPending(ctx, t, n.JS, n.Topology.EventsStream(), deadline)
}

// Events a backend publishes on EVENTS itself pass the checks of POST /v1/events at the worker:
// in a message of three, the valid one is applied, and the two that fail (props nested too
// deep, a ts an hour ahead) go to EVENTS_DLQ with their reasons, counted by field, and the
// message is acknowledged. Before, they were applied as they were.
func TestEventsPublishedOnNATSItselfAreCheckedLikeTheIngestChecksThem(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	user := "dora"
	p := event.Partition(user, r.n.Topology.Partitions)
	ahead := time.Now().Add(time.Hour).UnixMilli()
	body := `{"event_id":"ok-1","user_id":"dora","type":"add_to_cart"}` + "\n" +
		`{"event_id":"deep-1","user_id":"dora","type":"add_to_cart","props":{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}}` + "\n" +
		fmt.Sprintf(`{"event_id":"ahead-1","user_id":"dora","type":"add_to_cart","ts":%d}`, ahead)
	if _, err := r.n.JS.Publish(ctx, r.n.Topology.EventSubject(p), []byte(body)); err != nil {
		t.Fatal(err)
	}
	if d := r.next(t); d.UserID != user || !slices.Equal(d.Entered, []string{"cart_abandoner"}) {
		t.Fatalf("delta = %+v, want dora in cart_abandoner", d)
	}
	waitNothingPending(ctx, t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(10*time.Second))
	prof, err := r.eng.cfg.Store.Get(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := prof.Value(cartFeature, r.clk.Now()); v.Int != 1 {
		t.Fatalf("dora's cart count = %d, want 1 (the valid event only)", v.Int)
	}
	for field, want := range map[string]float64{"props": 1, "ts": 1, "user_id": 0} {
		if got := testutil.ToFloat64(r.eng.m.directRejected.WithLabelValues(field)); got != want {
			t.Errorf("rejected for %s = %v, want %v", field, got, want)
		}
	}
	dlq, err := r.n.JS.Stream(ctx, r.n.Topology.EventsDLQStream())
	if err != nil {
		t.Fatal(err)
	}
	m, err := dlq.GetLastMsgForSubject(ctx, r.n.Topology.EventsDLQSubject(p))
	if err != nil {
		t.Fatalf("nothing in EVENTS_DLQ: %v", err)
	}
	got, _, err := event.DecodeMessage(m.Data, nil, nil)
	if err != nil || len(got) != 2 || got[0].ID != "deep-1" || got[1].ID != "ahead-1" {
		t.Fatalf("EVENTS_DLQ holds %+v (%v); want deep-1 and ahead-1", got, err)
	}
	if reason := m.Header.Get("Segedge-Error"); !strings.Contains(reason, "props") || !strings.Contains(reason, "ts") {
		t.Errorf("Segedge-Error = %q; want the reasons for props and ts", reason)
	}
}
