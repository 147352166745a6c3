package engine

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/schedule"
)

// An expiry's delta is published but its membership record cannot be written (Redis down for a
// moment), and the user sends an event meanwhile. The worker keeps retrying the record before it
// does anything else, so the event's delta is the next version and reaches DELTAS. Before, the
// expiry was only rescheduled: the event started from the old record, got the expiry's version,
// and was left out as already on DELTAS, so the edges never saw the user re-enter.
func TestADeltaPublishedButNotRecordedIsRecordedBeforeTheUsersNextDelta(t *testing.T) {
	mem := &stuckMembers{Memory: members.NewMemory()}
	r := newRigWith(t, mem)
	r.send(t, event.Event{ID: "e1", UserID: "alice", Type: "add_to_cart", TS: r.clk.Now()})
	if d := r.next(t); d.Version != 1 || !slices.Equal(d.Entered, []string{"cart_abandoner"}) {
		t.Fatalf("first delta = %+v", d)
	}

	// the first delta recorded and its event acknowledged before the members store goes down
	waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(10*time.Second))
	mem.failing.Store(true)
	r.clk.Add(32 * time.Minute)
	d := r.next(t)
	if d.Cause != delta.CauseExpiry || d.Version != 2 || !slices.Equal(d.Exited, []string{"cart_abandoner"}) {
		t.Fatalf("expiry delta = %+v", d)
	}
	for deadline := time.Now().Add(5 * time.Second); mem.failed.Load() < 1; { // published, the record write failed
		if time.Now().After(deadline) {
			t.Fatal("the expiry's record was never written")
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.send(t, event.Event{ID: "e2", UserID: "alice", Type: "add_to_cart", TS: r.clk.Now()})
	time.Sleep(200 * time.Millisecond)
	mem.failing.Store(false)

	d = r.next(t)
	if d.Cause != delta.CauseEvent || d.Version != 3 || !slices.Equal(d.Entered, []string{"cart_abandoner"}) {
		t.Fatalf("the event's delta = %+v, want version 3 entering cart_abandoner", d)
	}
	waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(10*time.Second))
	rec, err := mem.Get(context.Background(), "alice")
	if err != nil || rec.Version != 3 {
		t.Fatalf("alice's record = %+v, %v; want version 3", rec, err)
	}
}

// countingMembers counts the records read from the members store.
type countingMembers struct {
	*members.Memory
	reads atomic.Int64
}

func (m *countingMembers) Get(ctx context.Context, user string) (members.Record, error) {
	m.reads.Add(1)
	return m.Memory.Get(ctx, user)
}

func (m *countingMembers) GetMany(ctx context.Context, users []string) ([]members.Record, error) {
	m.reads.Add(int64(len(users)))
	return m.Memory.GetMany(ctx, users)
}

// A partition worker reads a user's membership record from the store once and then uses what it
// wrote itself.
func TestAWorkerReadsAUsersRecordOnce(t *testing.T) {
	mem := &countingMembers{Memory: members.NewMemory()}
	r := newRigWith(t, mem)
	for i := range 5 {
		r.send(t, event.Event{ID: "e" + string(rune('0'+i)), UserID: "bob", Type: "add_to_cart", TS: r.clk.Now()})
		if i == 0 {
			if d := r.next(t); d.Version != 1 {
				t.Fatalf("delta = %+v", d)
			}
		}
	}
	// every event applied and acknowledged before the time passes
	waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(10*time.Second))
	r.clk.Add(32 * time.Minute)
	if d := r.next(t); d.Cause != delta.CauseExpiry || d.Version != 2 {
		t.Fatalf("expiry delta = %+v, want version 2", d)
	}
	if got := mem.reads.Load(); got != 1 {
		t.Fatalf("read bob's record %d times, want once", got)
	}
}

// A partition that goes to another origin and comes back: the worker must not trust what it
// cached before, since the other origin wrote the users' records meanwhile.
func TestAWorkerThatRetakesAPartitionRereadsTheRecords(t *testing.T) {
	s := newShared(t)
	P := s.n.Topology.Partitions
	users := make([]string, P) // users[p] is a user of partition p
	for i := 0; slices.Contains(users, ""); i++ {
		u := fmt.Sprintf("user-%d", i)
		if p := event.Partition(u, P); users[p] == "" {
			users[p] = u
		}
	}
	sent := 0
	send := func(ps []int) {
		t.Helper()
		var evs []event.Event
		for _, p := range ps {
			sent++
			evs = append(evs, event.Event{ID: fmt.Sprint("e", sent), UserID: users[p], Type: "add_to_cart", TS: time.Now()})
		}
		publishEvents(t, s.n, evs)
	}
	all := make([]int, P)
	for p := range all {
		all[p] = p
	}

	a := s.start(t, "origin-a")
	waitReady(t, a.eng)
	send(all) // origin a: version 1 of every user, cached
	readDeltaMsgs(t, s.n, P)
	waitNothingPending(context.Background(), t, s.n.JS, s.n.Topology.EventsStream(), time.Now().Add(10*time.Second))
	b := s.start(t, "origin-b")
	waitHeld(t, P, 3*testLeaseTTL, []*origin{a, b}, P/2, P/2)
	moved := b.eng.Held()
	send(moved) // origin b: version 2 of its half
	readDeltaMsgs(t, s.n, P+len(moved))
	// b stops after recording and acknowledging them (else a redelivers them: more deltas)
	waitNothingPending(context.Background(), t, s.n.JS, s.n.Topology.EventsStream(), time.Now().Add(10*time.Second))
	b.stop()
	waitHeld(t, P, 3*testLeaseTTL, []*origin{a}, P)
	send(moved) // origin a again: version 3 (or more), not its cached 1 + 1
	// A handover may deliver an event twice: it is applied once, but its second evaluation
	// publishes a delta too, so count versions, not deltas. With a stale cache origin a would
	// compute version 2 again, which is left out as already on DELTAS: the users would stay at 2.
	reached := func(msgs []deltaMsg) bool {
		last := versionsInOrder(t, msgs)
		for _, p := range moved {
			if last[users[p]] < 3 {
				return false
			}
		}
		return true
	}
	if msgs := readDeltasUntil(t, s.n, 20*time.Second, reached); !reached(msgs) {
		t.Errorf("after 20s the users of partitions %v are at versions %v, want 3 or more", moved, versionsInOrder(t, msgs))
	}
}

// readDeltasUntil reads DELTAS from the start until done holds for what was read, or for d.
func readDeltasUntil(t *testing.T, n *testenv.NATS, d time.Duration, done func([]deltaMsg) bool) []deltaMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cons, err := n.JS.OrderedConsumer(ctx, n.Topology.DeltasStream(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []deltaMsg
	for !done(out) && ctx.Err() == nil {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			continue
		}
		ds, err := delta.DecodeBatch(msg.Data())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, deltaMsg{id: msg.Headers().Get(jetstream.MsgIDHeader), deltas: ds})
	}
	return out
}

// countingSchedule counts the due times written to the schedule.
type countingSchedule struct {
	schedule.Schedule
	written atomic.Int64
}

func (s *countingSchedule) At(ctx context.Context, p int, user string, due time.Time) error {
	s.written.Add(1)
	return s.Schedule.At(ctx, p, user, due)
}

// A user's due time is written once while it does not move, and the expiry still happens.
func TestADueTimeTheScheduleHasIsNotWrittenAgain(t *testing.T) {
	sched := &countingSchedule{Schedule: schedule.NewMemory()}
	r := newRigWithSchedule(t, members.NewMemory(), sched)
	for i := range 4 { // one batch each
		r.send(t, event.Event{ID: fmt.Sprint("e", i), UserID: "cid", Type: "add_to_cart", TS: r.clk.Now()})
		waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(10*time.Second))
	}
	if d := r.next(t); d.Version != 1 {
		t.Fatalf("delta = %+v", d)
	}
	// (the first wait may have passed before the worker had its consumer)
	waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(10*time.Second))
	if got := sched.written.Load(); got != 1 {
		t.Fatalf("wrote the same due time %d times, want once", got)
	}
	r.clk.Add(32 * time.Minute)
	if d := r.next(t); d.Cause != delta.CauseExpiry || !slices.Equal(d.Exited, []string{"cart_abandoner"}) {
		t.Fatalf("expiry delta = %+v", d)
	}
	// After the expiry the schedule has nothing for her: a new event writes her due time again.
	r.send(t, event.Event{ID: "e9", UserID: "cid", Type: "add_to_cart", TS: r.clk.Now()})
	if d := r.next(t); d.Version != 3 {
		t.Fatalf("delta = %+v", d)
	}
	waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(10*time.Second))
	if got := sched.written.Load(); got != 2 {
		t.Fatalf("due times written %d times, want 2", got)
	}
	r.clk.Add(32 * time.Minute)
	if d := r.next(t); d.Cause != delta.CauseExpiry || d.Version != 4 {
		t.Fatalf("second expiry delta = %+v", d)
	}
}

// A due time the worker wrote is trusted to be in the schedule for DefaultDueTrust, for itself
// and any later due time (the schedule keeps the earliest), and no longer.
func TestACachedDueTimeIsTrustedForTheTrustPeriodOnly(t *testing.T) {
	start := time.Now()
	due := start.Add(30 * time.Minute)
	for _, tc := range []struct {
		name  string
		after time.Duration // since it was written
		t     time.Time
		want  bool
	}{
		{"the same due time", 0, due, true},
		{"a later due time", time.Second, due.Add(time.Minute), true},
		{"an earlier due time", 0, due.Add(-time.Millisecond), false},
		{"just before the trust period ends", DefaultDueTrust - time.Millisecond, due, true},
		{"when the trust period ends", DefaultDueTrust, due, false},
		{"long after", time.Hour, due, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &clock{now: start}
			c := newRecordCache(64, clk.Now)
			c.recordDue("u", due)
			clk.Add(tc.after)
			if got := c.dueRecorded("u", tc.t); got != tc.want {
				t.Fatalf("dueRecorded = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestTheRecordCacheIsBounded(t *testing.T) {
	c := newRecordCache(64, time.Now)
	for i := range 1000 {
		u := fmt.Sprint("u", i)
		c.put(u, members.Record{Version: uint64(i)})
		c.recordDue(u, time.UnixMilli(int64(i)))
		if len(c.m) > 64 || len(c.due) > 64 {
			t.Fatalf("after %d users: %d records, %d due times cached; want at most 64", i+1, len(c.m), len(c.due))
		}
		if r, ok := c.get(u); !ok || r.Version != uint64(i) {
			t.Fatalf("the record just put is not there: %+v, %v", r, ok)
		}
	}
}

// A due time the schedule lost behind the worker's back (Redis flushed, or restored from an
// older snapshot) is written again by the user's next event once the worker's memory of it is
// older than DefaultDueTrust, so the user still leaves at the due time. Before, the worker
// trusted its memory while it held the partition: the user never left. Within the trust period
// the due time is not written again.
func TestALostDueTimeIsWrittenAgainByAnEventAfterTheTrustPeriod(t *testing.T) {
	sched := &countingSchedule{Schedule: schedule.NewMemory()}
	r := newRigWithSchedule(t, members.NewMemory(), sched)
	send := func(id, typ string) {
		t.Helper()
		r.send(t, event.Event{ID: id, UserID: "dot", Type: typ, TS: r.clk.Now()})
		waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(10*time.Second))
	}
	send("e1", "add_to_cart")
	if d := r.next(t); d.Version != 1 || !slices.Equal(d.Entered, []string{"cart_abandoner"}) {
		t.Fatalf("delta = %+v", d)
	}
	waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(10*time.Second))
	if got := sched.written.Load(); got != 1 {
		t.Fatalf("due times written %d times, want once", got)
	}
	if err := sched.Cancel(context.Background(), event.Partition("dot", r.n.Topology.Partitions), "dot"); err != nil {
		t.Fatal(err) // the schedule loses it
	}

	written := r.clk.Now()
	// Within the trust period the worker's memory is trusted: a page view leaves the due time
	// where it was and nothing is written.
	r.clk.Add(DefaultDueTrust / 2)
	send("e2", "page_view")
	if got := sched.written.Load(); got != 1 {
		t.Fatalf("within the trust period due times written %d times, want once", got)
	}
	// Past it, the next event writes the due time again (ZADD LT: harmless if it was there).
	r.clk.Add(written.Add(DefaultDueTrust + time.Second).Sub(r.clk.Now()))
	send("e3", "page_view")
	if got := sched.written.Load(); got != 2 {
		t.Fatalf("after the trust period due times written %d times, want 2", got)
	}
	r.clk.Add(32 * time.Minute)
	if d := r.next(t); d.Cause != delta.CauseExpiry || d.Version != 2 || !slices.Equal(d.Exited, []string{"cart_abandoner"}) {
		t.Fatalf("expiry delta = %+v", d)
	}
}
