package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ingest"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/schedule"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
)

// deltaMsg is one DELTAS message as read back.
type deltaMsg struct {
	id     string
	deltas []delta.Delta
}

// readDeltaMsgs reads DELTAS from the start until want deltas have been read.
func readDeltaMsgs(t *testing.T, n *testenv.NATS, want int) []deltaMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cons, err := n.JS.OrderedConsumer(ctx, n.Topology.DeltasStream(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []deltaMsg
	for got := 0; got < want; {
		msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("after %d of %d deltas: %v", got, want, err)
		}
		ds, err := delta.DecodeBatch(msg.Data())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, deltaMsg{id: msg.Headers().Get(jetstream.MsgIDHeader), deltas: ds})
		got += len(ds)
	}
	return out
}

// versionsInOrder fails unless each user's deltas across msgs carry versions 1, 2, 3 … in order
// (none repeated or skipped), and returns the last version per user.
func versionsInOrder(t *testing.T, msgs []deltaMsg) map[string]uint64 {
	t.Helper()
	last := map[string]uint64{}
	for i, m := range msgs {
		for _, d := range m.deltas {
			if d.Version != last[d.UserID]+1 {
				t.Fatalf("message %d: %s version %d after %d", i, d.UserID, d.Version, last[d.UserID])
			}
			last[d.UserID] = d.Version
		}
	}
	return last
}

func startDeltaEngine(t *testing.T, ctx context.Context, cfg Config) (*Engine, <-chan error) {
	t.Helper()
	eng, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	return eng, done
}

func publishEvents(t *testing.T, n *testenv.NATS, evs []event.Event) {
	t.Helper()
	pub := ingest.NewPublisher(n.JS, n.Topology, "origin", prometheus.NewRegistry())
	for i, err := range pub.Publish(context.Background(), evs, time.Now()) {
		if err != nil {
			t.Fatalf("publish event %d: %v", i, err)
		}
	}
}

// A backlog handled in batches comes out as a few DELTAS messages, each holding its batch's
// deltas in order under an id naming them, not one message per delta.
func TestAFlushPublishesOneDeltasMessage(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	const users, rounds = 16, 4
	var evs []event.Event
	for i := range rounds {
		for u := range users {
			evs = append(evs, event.Event{ID: fmt.Sprintf("u%d-%d", u, i), UserID: fmt.Sprintf("u%d", u), Type: "add_to_cart", TS: time.Now()})
		}
	}
	publishEvents(t, n, evs)
	eng, _ := startDeltaEngine(t, ctx, Config{
		JS: n.JS, Topology: n.Topology, Store: memory.New(store.Options{}), Members: members.NewMemory(), Schedule: schedule.NewMemory(),
		Rules: func() Rules { return parityRules{} }, DuePoll: 10 * time.Millisecond, Batch: 64,
	})
	msgs := readDeltaMsgs(t, n, len(evs))
	last := versionsInOrder(t, msgs)
	for u := range users {
		if v := last[fmt.Sprintf("u%d", u)]; v != rounds {
			t.Errorf("u%d: last version %d, want %d", u, v, rounds)
		}
	}
	// 4 partitions, at most 64 events a batch: at least 4 messages, far fewer than 64 deltas.
	if len(msgs) >= len(evs)/4 {
		t.Errorf("%d messages for %d deltas: not batched", len(msgs), len(evs))
	}
	for i, m := range msgs {
		ptrs := make([]*delta.Delta, len(m.deltas))
		for j := range m.deltas {
			ptrs[j] = &m.deltas[j]
		}
		if want := delta.BatchMsgID(ptrs); m.id != want {
			t.Errorf("message %d: id %q, want %q", i, m.id, want)
		}
	}
	var h dtoHist
	h.read(t, eng.m.deltaBatchSize)
	if h.count != uint64(len(msgs)) {
		t.Errorf("delta batch size observed %d times, want once per message (%d)", h.count, len(msgs))
	}
}

// stuckMembers is the memory members store whose writes fail while failing is set: the origin
// publishes a batch's deltas but cannot record them, as when it crashes between the two.
type stuckMembers struct {
	*members.Memory
	failing atomic.Bool
	failed  atomic.Int32
}

func (m *stuckMembers) Put(ctx context.Context, user string, r members.Record) error {
	if m.failing.Load() {
		m.failed.Add(1)
		return errors.New("members store down")
	}
	return m.Memory.Put(ctx, user, r)
}

func (m *stuckMembers) PutMany(ctx context.Context, users []string, rs []members.Record) error {
	if m.failing.Load() {
		m.failed.Add(1)
		return errors.New("members store down")
	}
	return m.Memory.PutMany(ctx, users, rs)
}

// An origin publishes a batch's deltas and dies before recording them; the next one gets the
// same events in other batches and evaluates them to the same versions. JetStream's dedup cannot
// recognise the deltas under another batch's id, so the engine reads the last deltas of the
// partition back and leaves those out: every user's versions on DELTAS stay 1, 2, 3 … with no
// repeat, as when each delta was its own message.
func TestRegroupedRedeliveryDoesNotRepublishDeltas(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	var evs []event.Event
	for i := range 3 {
		for _, u := range []string{"ann", "ben", "cat", "dan", "eve", "fay"} {
			evs = append(evs, event.Event{ID: fmt.Sprintf("%s-%d", u, i), UserID: u, Type: "add_to_cart", TS: time.Now()})
		}
	}
	publishEvents(t, n, evs)
	st := memory.New(store.Options{})
	mem := &stuckMembers{Memory: members.NewMemory()}
	mem.failing.Store(true)
	cfg := Config{
		JS: n.JS, Topology: n.Topology, Store: st, Members: mem, Schedule: schedule.NewMemory(),
		Rules: func() Rules { return parityRules{} }, DuePoll: 10 * time.Millisecond, Batch: 64, AckWait: time.Second,
	}
	// The first origin publishes every event's delta, records none, and stops.
	ctx1, stop1 := context.WithCancel(ctx)
	_, done1 := startDeltaEngine(t, ctx1, cfg)
	first := readDeltaMsgs(t, n, len(evs))
	for mem.failed.Load() < 2 { // a retry too: it must not publish them again either
		time.Sleep(10 * time.Millisecond)
	}
	stop1()
	<-done1

	// The next one takes the events one at a time.
	mem.failing.Store(false)
	cfg.Batch = 1
	cfg.Registerer = prometheus.NewRegistry()
	startDeltaEngine(t, ctx, cfg)
	// Once it has recorded the users, a new event publishes the next version.
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := mem.Get(ctx, "ann")
		if err != nil {
			t.Fatal(err)
		}
		if r.Version == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ann recorded at version %d, want 3", r.Version)
		}
		time.Sleep(20 * time.Millisecond)
	}
	publishEvents(t, n, []event.Event{{ID: "ann-3", UserID: "ann", Type: "add_to_cart", TS: time.Now()}})
	all := readDeltaMsgs(t, n, len(evs)+1)
	last := versionsInOrder(t, all)
	if last["ann"] != 4 {
		t.Fatalf("ann at version %d, want 4", last["ann"])
	}
	if len(all) <= len(first) {
		t.Fatalf("%d messages, want the first origin's %d and the new event's", len(all), len(first))
	}
}

// The last flush of a partition may have been split into several messages, with other
// partitions' messages between them: tailVersions reads all its parts and nothing of the
// other partitions.
func TestTailVersionsReadsEveryPartOfTheLastFlush(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx := context.Background()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	pub := func(p int, part string, ds ...*delta.Delta) {
		t.Helper()
		body, err := delta.EncodeBatch(ds)
		if err != nil {
			t.Fatal(err)
		}
		msg := nats.NewMsg(n.Topology.DeltaSubject(p))
		msg.Data = body
		if part != "" {
			msg.Header.Set(partHeader, part)
		}
		if _, err := n.JS.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	eng, err := New(Config{JS: n.JS, Topology: n.Topology, Store: memory.New(store.Options{}), Members: members.NewMemory(),
		Schedule: schedule.NewMemory(), Rules: func() Rules { return parityRules{} }})
	if err != nil {
		t.Fatal(err)
	}
	if have, err := eng.tailVersions(ctx, 0); err != nil || len(have) != 0 {
		t.Fatalf("empty subject: %v, %v", have, err)
	}
	pub(0, "", &delta.Delta{UserID: "old", Version: 1})    // an earlier flush
	pub(0, "1/3", &delta.Delta{UserID: "ann", Version: 1}) // the last flush, split in three
	pub(1, "", &delta.Delta{UserID: "other", Version: 5})  // another partition's
	pub(0, "2/3", &delta.Delta{UserID: "ann", Version: 2}, &delta.Delta{UserID: "ben", Version: 4})
	pub(1, "1/2", &delta.Delta{UserID: "other", Version: 6})
	pub(0, "3/3", &delta.Delta{UserID: "cat", Version: 1})
	have, err := eng.tailVersions(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]uint64{"ann": 2, "ben": 4, "cat": 1}; !maps.Equal(have, want) {
		t.Fatalf("tail of partition 0 = %v, want %v", have, want)
	}
}
