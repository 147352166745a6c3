package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ingest"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/schedule"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
)

// refusingStore is the memory store that refuses (without applying) the events whose ids are
// in refuse: once each (one event of a message failing on its own), or on every delivery with
// always (a profile the store cannot update). refused counts the refusals.
type refusingStore struct {
	store.Store
	mu      sync.Mutex
	refuse  map[string]bool
	always  bool
	refused int
}

func (s *refusingStore) ApplyBatch(ctx context.Context, evs []event.Event, spec *profile.Spec) ([]store.Result, error) {
	s.mu.Lock()
	var pass []event.Event
	var refused []bool
	for _, ev := range evs {
		r := s.refuse[ev.ID]
		if r {
			s.refused++
		}
		if !s.always {
			delete(s.refuse, ev.ID)
		}
		refused = append(refused, r)
		if !r {
			pass = append(pass, ev)
		}
	}
	s.mu.Unlock()
	got, err := s.Store.ApplyBatch(ctx, pass, spec)
	if err != nil {
		return nil, err
	}
	res := make([]store.Result, len(evs))
	for i := range evs {
		if refused[i] {
			res[i] = store.Result{Err: errors.New("profile hash unreadable: refused")}
			continue
		}
		res[i], got = got[0], got[1:]
	}
	return res, nil
}

// TestEventMessagesAreAppliedWholeAndAcknowledged: messages of several events (as the ingest
// publisher sends them), a single-event message as older producers and backends send it, and
// an unreadable one, with a worker batch of 3 events so that messages span batches. Every
// readable event is applied exactly once — also the events of a message delivered twice (a
// crash before its ack) and of a message redelivered because one of its events failed — the
// unreadable one is counted, and every message ends acknowledged or terminated.
func TestEventMessagesAreAppliedWholeAndAcknowledged(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	parts := n.Topology.Partitions
	var users []string // four users of partition 2
	for i := 0; len(users) < 4; i++ {
		if u := fmt.Sprintf("u%d", i); event.Partition(u, parts) == 2 {
			users = append(users, u)
		}
	}
	now := time.Now()
	want := map[string]int64{} // events per user
	mk := func(prefix string, k int) []event.Event {
		var evs []event.Event
		for i := range k {
			u := users[i%len(users)]
			evs = append(evs, event.Event{ID: fmt.Sprintf("%s-%d", prefix, i), UserID: u, Type: "add_to_cart", TS: now})
			want[u]++
		}
		return evs
	}
	pub := ingest.NewPublisher(n.JS, n.Topology, "origin", prometheus.NewRegistry())
	publish := func(evs []event.Event) {
		t.Helper()
		for i, err := range pub.Publish(ctx, evs, now) {
			if err != nil {
				t.Fatalf("publish %d: %v", i, err)
			}
		}
	}
	raw := func(body []byte, id string) {
		t.Helper()
		msg := &nats.Msg{Subject: n.Topology.EventSubject(2), Data: body, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, id)
		if _, err := n.JS.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	first := mk("a", 7)
	publish(first) // one message of 7 events
	single, err := event.EncodeWire(mk("legacy", 1)[0], now)
	if err != nil {
		t.Fatal(err)
	}
	raw(single, "legacy")
	raw([]byte(string(single)+"\n{\"event_id\":\"broken\"}"), "poison")
	publish(mk("b", 5))
	again, _ := event.EncodeWire(first[0], now)
	for _, ev := range first[1:] { // the first message delivered a second time
		b, _ := event.EncodeWire(ev, now)
		again = append(append(again, '\n'), b...)
	}
	raw(again, "redelivered")
	publish(mk("c", 6))

	st := &refusingStore{Store: memory.New(store.Options{}), refuse: map[string]bool{"c-4": true}}
	eng, err := New(Config{
		JS: n.JS, Topology: n.Topology, Store: st, Members: members.NewMemory(), Schedule: schedule.NewMemory(),
		Rules: func() Rules { return parityRules{} }, Partitions: []int{2}, DuePoll: 10 * time.Millisecond, Batch: 3,
		AckWait: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	go eng.Run(ctx)

	total := 0
	for _, k := range want {
		total += int(k)
	}
	deadline := time.Now().Add(15 * time.Second)
	for testutil.ToFloat64(eng.m.applied) < float64(total) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := testutil.ToFloat64(eng.m.applied); got != float64(total) {
		t.Fatalf("applied %v events, want %d", got, total)
	}
	for _, u := range users {
		p, err := st.Get(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		if p.Version != want[u] {
			t.Errorf("%s: profile version %d, want %d (one per event, none twice)", u, p.Version, want[u])
		}
	}
	// The redelivered message's 7 events, and the 5 other events of the message NAKed for c-4.
	if got := testutil.ToFloat64(eng.m.duplicates); got != 7+5 {
		t.Errorf("duplicates = %v, want 12", got)
	}
	if got := testutil.ToFloat64(eng.m.poison); got != 1 {
		t.Errorf("unreadable messages = %v, want 1", got)
	}
	// Every message acknowledged (or terminated): nothing pending on any consumer of EVENTS.
	waitNothingPending(ctx, t, n.JS, n.Topology.EventsStream(), deadline)
}

// waitNothingPending waits until no consumer of stream has a message pending or unacknowledged,
// failing the test at deadline.
func waitNothingPending(ctx context.Context, t *testing.T, js jetstream.JetStream, stream string, deadline time.Time) {
	t.Helper()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	for {
		pending := 0
		for info := range s.ListConsumers(ctx).Info() {
			pending += int(info.NumAckPending) + int(info.NumPending)
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages still pending or unacknowledged", pending)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// slowStore is the memory store taking delay for every ApplyBatch.
type slowStore struct {
	store.Store
	delay time.Duration
}

func (s slowStore) ApplyBatch(ctx context.Context, evs []event.Event, spec *profile.Spec) ([]store.Result, error) {
	time.Sleep(s.delay)
	return s.Store.ApplyBatch(ctx, evs, spec)
}

// TestMessagesWaitingForLaterChunksAreNotRedelivered: a big message takes many chunks, longer
// than AckWait in all; it is kept in progress meanwhile, so JetStream does not redeliver it
// and no event is seen twice.
func TestMessagesWaitingForLaterChunksAreNotRedelivered(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	pub := ingest.NewPublisher(n.JS, n.Topology, "origin", prometheus.NewRegistry())
	now := time.Now()
	const msgs, per = 1, 48
	var evs []event.Event
	for i := range per {
		evs = append(evs, event.Event{ID: fmt.Sprintf("m-%d", i), UserID: "slow-user", Type: "page_view", TS: now})
	}
	for i, err := range pub.Publish(ctx, evs, now) {
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	p := event.Partition("slow-user", n.Topology.Partitions)
	// 48 events in chunks of 4: 12 chunks of 150 ms = 1.8 s, AckWait 1 s.
	eng, err := New(Config{
		JS: n.JS, Topology: n.Topology, Store: slowStore{memory.New(store.Options{}), 150 * time.Millisecond},
		Members: members.NewMemory(), Schedule: schedule.NewMemory(), Rules: func() Rules { return parityRules{} },
		Partitions: []int{p}, DuePoll: 10 * time.Millisecond, Batch: 4, AckWait: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	go eng.Run(ctx)
	deadline := time.Now().Add(15 * time.Second)
	for testutil.ToFloat64(eng.m.applied) < msgs*per && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := testutil.ToFloat64(eng.m.applied); got != msgs*per {
		t.Fatalf("applied %v events, want %d", got, msgs*per)
	}
	time.Sleep(1500 * time.Millisecond) // a redelivery would come within AckWait
	if got := testutil.ToFloat64(eng.m.duplicates); got != 0 {
		t.Errorf("%v events seen twice: messages were redelivered while earlier chunks ran", got)
	}
}

// refusals returns how many times an event was refused.
func (s *refusingStore) refusals() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}
