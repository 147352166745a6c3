package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/schedule"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
)

// downStore is the memory store whose ApplyBatch fails while down is set (Redis unreachable),
// counting the calls.
type downStore struct {
	store.Store
	down  atomic.Bool
	calls atomic.Int32
}

func (s *downStore) ApplyBatch(ctx context.Context, evs []event.Event, spec *profile.Spec) ([]store.Result, error) {
	s.calls.Add(1)
	if s.down.Load() {
		return nil, errors.New("store down")
	}
	return s.Store.ApplyBatch(ctx, evs, spec)
}

// TestMessagesWaitingBehindAFailingBatchAreNotRedelivered: the store is down for several
// AckWaits while a batch is retried in place. The messages the worker already received and that
// wait behind that batch are kept in progress too, so JetStream delivers each message once
// (before, those waiting in the worker's buffer came back every AckWait: duplicate work, and
// deliveries counted towards dead-lettering), and every event is applied exactly once when the
// store is back.
func TestMessagesWaitingBehindAFailingBatchAreNotRedelivered(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	const p, messages = 1, 24
	var users []string // three users of partition p
	for i := 0; len(users) < 3; i++ {
		if u := fmt.Sprintf("w%d", i); event.Partition(u, n.Topology.Partitions) == p {
			users = append(users, u)
		}
	}
	want := map[string]int64{}
	for i := range messages { // one message per event
		u := users[i%len(users)]
		publishEvents(t, n, []event.Event{{ID: fmt.Sprint("w-", i), UserID: u, Type: "add_to_cart", TS: time.Now()}})
		want[u]++
	}

	st := &downStore{Store: memory.New(store.Options{})}
	st.down.Store(true)
	// 2 s, not less: a message is marked within half an AckWait of its arrival, and a loaded CI
	// box under -race must not stall the marking goroutine for that long.
	const ackWait = 2 * time.Second
	eng, err := New(Config{
		JS: n.JS, Topology: n.Topology, Store: st, Members: members.NewMemory(), Schedule: schedule.NewMemory(),
		Rules: func() Rules { return parityRules{} }, Partitions: []int{p}, DuePoll: 10 * time.Millisecond,
		Batch: 4, AckWait: ackWait,
	})
	if err != nil {
		t.Fatal(err)
	}
	go eng.Run(ctx)
	for deadline := time.Now().Add(10 * time.Second); st.calls.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the worker never tried the store")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(7 * ackWait / 2) // the store stays down for 3.5 AckWaits
	st.down.Store(false)

	deadline := time.Now().Add(15 * time.Second)
	for testutil.ToFloat64(eng.m.applied) < messages && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	waitNothingPending(ctx, t, n.JS, n.Topology.EventsStream(), deadline)
	cons, err := n.JS.Consumer(ctx, n.Topology.EventsStream(), "origin-p"+strconv.Itoa(p))
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d messages, %d deliveries, %d store calls", messages, info.Delivered.Consumer, st.calls.Load())
	if info.Delivered.Consumer != messages {
		t.Errorf("%d deliveries of %d messages: messages waiting behind the failing batch were redelivered", info.Delivered.Consumer, messages)
	}
	if got := testutil.ToFloat64(eng.m.applied); got != messages {
		t.Errorf("applied %v events, want %d", got, messages)
	}
	if got := testutil.ToFloat64(eng.m.duplicates); got != 0 {
		t.Errorf("%v events seen twice", got)
	}
	for _, u := range users {
		prof, err := st.Get(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		if prof.Version != want[u] {
			t.Errorf("%s: profile version %d, want %d (one per event)", u, prof.Version, want[u])
		}
	}
}

// fakeMsg is a message of data that counts its InProgress calls.
type fakeMsg struct {
	jetstream.Msg
	data     []byte
	progress atomic.Int32
}

func (m *fakeMsg) Data() []byte      { return m.data }
func (m *fakeMsg) InProgress() error { m.progress.Add(1); return nil }

// The inbox hands out batches in arrival order, and each round marks in progress exactly the
// messages held since the round before: waiting or in the current batch, not those finished.
func TestTheInboxMarksTheMessagesItHoldsInProgress(t *testing.T) {
	q := newInbox()
	ms := make([]*fakeMsg, 6)
	for i := range ms {
		ms[i] = &fakeMsg{}
	}
	put := func(from, to int) {
		for _, m := range ms[from:to] {
			q.put(context.Background(), m)
		}
	}
	round := func() {
		for _, m := range q.heldSinceLastRound(nil) {
			_ = m.InProgress()
		}
	}
	marks := func() []int32 {
		out := make([]int32, len(ms))
		for i, m := range ms {
			out[i] = m.progress.Load()
		}
		return out
	}

	put(0, 4)
	round() // all four just arrived: none marked
	batch := q.take(nil, 2)
	if len(batch) != 2 || batch[0] != ms[0] || batch[1] != ms[1] {
		t.Fatalf("first batch = %v, want messages 0 and 1", batch)
	}
	put(4, 6)
	round() // 0 and 1 (the batch), 2 and 3 (waiting) were held a round ago; 4 and 5 are new
	if got, want := marks(), []int32{1, 1, 1, 1, 0, 0}; !slices.Equal(got, want) {
		t.Fatalf("marks after round 2 = %v, want %v", got, want)
	}
	q.done()
	batch = q.take(batch, 10)
	if len(batch) != 4 || batch[0] != ms[2] || batch[3] != ms[5] {
		t.Fatalf("second batch = %v, want messages 2 to 5", batch)
	}
	round() // 0 and 1 are finished
	if got, want := marks(), []int32{1, 1, 2, 2, 1, 1}; !slices.Equal(got, want) {
		t.Fatalf("marks after round 3 = %v, want %v", got, want)
	}
	q.done()
	round()
	if got, want := marks(), []int32{1, 1, 2, 2, 1, 1}; !slices.Equal(got, want) {
		t.Fatalf("marks with nothing held = %v, want %v", got, want)
	}
	if len(q.msgs) != 0 || q.bytes != 0 {
		t.Fatalf("an empty inbox keeps %d messages, %d bytes", len(q.msgs), q.bytes)
	}
}

// The Consume callback does not grow the inbox without bound: past inboxMax messages (or
// inboxMaxBytes) it waits, until the worker finishes a batch or the lease ends.
func TestAFullInboxHoldsTheCallbackUntilThereIsRoomOrTheLeaseEnds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fill   int // messages put first
		size   int // bytes each
		finish bool
	}{
		{"too many messages, a batch finished", inboxMax, 1, true},
		{"too many messages, the lease ends", inboxMax, 1, false},
		{"too many bytes, a batch finished", 4, inboxMaxBytes / 4, true},
		{"too many bytes, the lease ends", 4, inboxMaxBytes / 4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newInbox()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			m := &fakeMsg{data: make([]byte, tc.size)}
			for range tc.fill {
				q.put(ctx, m)
			}
			returned := make(chan struct{})
			go func() {
				defer close(returned)
				q.put(ctx, m)
			}()
			select {
			case <-returned:
				t.Fatal("put into a full inbox returned at once")
			case <-time.After(100 * time.Millisecond):
			}
			if tc.finish {
				q.take(nil, 4)
				q.done()
			} else {
				cancel()
			}
			select {
			case <-returned:
			case <-time.After(5 * time.Second):
				t.Fatal("put still waits")
			}
		})
	}
}
