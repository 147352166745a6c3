package engine

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ingest"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/schedule"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
)

// cartRules is a ruleset written in Go for the engine's own tests: cart_abandoner is
// count("add_to_cart", "30m") > 0. (The compiled wasm rulesets are tested end to end elsewhere.)
type cartRules struct {
	spec    *profile.Spec
	name    string
	version uint64
	// filter: ReadsEventType answers true for add_to_cart only (false: for every type).
	filter bool
	evals  *atomic.Int64 // counts Segments calls when set
}

func (r *cartRules) ReadsEventType(typ string) bool { return !r.filter || typ == "add_to_cart" }

var cartFeature = profile.Feature{Kind: profile.FeatureCount, Name: "add_to_cart", Window: 30 * time.Minute}

func newCartRules(t *testing.T) *cartRules {
	spec, err := profile.NewSpec([]profile.Feature{cartFeature}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &cartRules{spec: spec, name: "cart_abandoner", version: 7}
}

func (r *cartRules) Version() uint64                 { return r.version }
func (r *cartRules) Spec() *profile.Spec             { return r.spec }
func (r *cartRules) EdgeFeatures() []profile.Feature { return nil }
func (r *cartRules) Segments(_ context.Context, p *profile.Profile, now time.Time, dst []string) ([]string, error) {
	if r.evals != nil {
		r.evals.Add(1)
	}
	if v, ok := p.Value(cartFeature, now); ok && v.Int > 0 {
		dst = append(dst, r.name)
	}
	return dst, nil
}

// clock is a controllable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type rig struct {
	n      *testenv.NATS
	eng    *Engine
	pub    *ingest.Publisher
	deltas jetstream.Consumer
	queued []delta.Delta // read from DELTAS, not yet returned by next
	clk    *clock
	rules  atomic.Pointer[cartRules]
}

func newRig(t *testing.T) *rig {
	t.Helper()
	return newRigWith(t, members.NewMemory())
}

// newRigWith is newRig with the members store mem.
func newRigWith(t *testing.T, mem members.Store) *rig {
	t.Helper()
	return newRigWithSchedule(t, mem, schedule.NewMemory())
}

// newRigWithSchedule is newRig with the members store mem and the schedule sched.
func newRigWithSchedule(t *testing.T, mem members.Store, sched schedule.Schedule) *rig {
	t.Helper()
	return newRigWithConfig(t, func(c *Config) { c.Members, c.Schedule = mem, sched })
}

// newRigWithConfig is newRig with the engine's Config changed by mod (the clock's, the rig's
// cartRules and an in-memory store, members store and schedule are set before).
func newRigWithConfig(t *testing.T, mod func(*Config)) *rig {
	t.Helper()
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	clk := &clock{now: time.Now()}
	r := &rig{n: n, clk: clk, pub: ingest.NewPublisher(n.JS, n.Topology, "origin", prometheus.NewRegistry())}
	r.rules.Store(newCartRules(t))
	cfg := Config{
		JS: n.JS, Topology: n.Topology,
		Store:    memory.New(store.Options{Now: clk.Now}),
		Members:  members.NewMemory(),
		Schedule: schedule.NewMemory(),
		Rules:    func() Rules { return r.rules.Load() },
		Now:      clk.Now,
		DuePoll:  10 * time.Millisecond,
	}
	mod(&cfg)
	eng, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go eng.Run(ctx)
	cons, err := n.JS.CreateConsumer(ctx, n.Topology.DeltasStream(), jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	r.eng, r.deltas = eng, cons
	return r
}

func (r *rig) send(t *testing.T, evs ...event.Event) {
	t.Helper()
	for i, err := range r.pub.Publish(context.Background(), evs, r.clk.Now()) {
		if err != nil {
			t.Fatalf("publish event %d: %v", i, err)
		}
	}
}

// next returns the next delta on DELTAS (one message may hold several).
func (r *rig) next(t *testing.T) *delta.Delta {
	t.Helper()
	for len(r.queued) == 0 {
		msg, err := r.deltas.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("no delta: %v", err)
		}
		_ = msg.Ack()
		if r.queued, err = delta.DecodeBatch(msg.Data()); err != nil {
			t.Fatal(err)
		}
	}
	d := &r.queued[0]
	r.queued = r.queued[1:]
	return d
}

func (r *rig) none(t *testing.T, within time.Duration) {
	t.Helper()
	if len(r.queued) > 0 {
		t.Fatalf("unexpected delta: %+v", r.queued[0])
	}
	if msg, err := r.deltas.Next(jetstream.FetchMaxWait(within)); err == nil {
		t.Fatalf("unexpected delta: %s", msg.Data())
	}
}

func TestEventEntersSegmentAndTimeMakesItExit(t *testing.T) {
	r := newRig(t)
	t0 := r.clk.Now().Truncate(time.Millisecond) // Due has millisecond resolution
	r.send(t, event.Event{ID: "e1", UserID: "alice", Type: "add_to_cart", TS: r.clk.Now()})
	d := r.next(t)
	if d.UserID != "alice" || d.Version != 1 || d.Ruleset != 7 || d.Cause != delta.CauseEvent ||
		!slices.Equal(d.Entered, []string{"cart_abandoner"}) || !slices.Equal(d.Members, []string{"cart_abandoner"}) || d.AcceptedAt == 0 {
		t.Fatalf("first delta = %+v", d)
	}

	// The same event again (a retrying client past JetStream's duplicate window, or a
	// redelivery): applied once, no new delta.
	r.send(t, event.Event{ID: "e1", UserID: "alice", Type: "add_to_cart", TS: r.clk.Now()})
	// A different user's event is independent.
	r.send(t, event.Event{ID: "e2", UserID: "bob", Type: "page_view", TS: r.clk.Now()})
	r.none(t, 300*time.Millisecond)

	// 29 minutes later she is still in; past the window (plus one bucket) she leaves with no event.
	r.clk.Add(29 * time.Minute)
	r.none(t, 200*time.Millisecond)
	r.clk.Add(3 * time.Minute)
	d = r.next(t)
	if d.Cause != delta.CauseExpiry || d.Version != 2 || !slices.Equal(d.Exited, []string{"cart_abandoner"}) || len(d.Members) != 0 || d.Due == 0 {
		t.Fatalf("expiry delta = %+v", d)
	}
	// Due is when the exit was due (the window after the event's bucket), not when the poll
	// found it (+32m here): the expiry lateness metric is measured from it.
	if due := time.UnixMilli(d.Due); due.Before(t0.Add(30*time.Minute)) || !due.Before(t0.Add(32*time.Minute)) {
		t.Fatalf("expiry delta due at +%s, want the window's end, between +30m and the poll at +32m", due.Sub(t0))
	}
}

// A worker that took a user's due time and died before the exit was out (here: the test takes
// it, as that worker did, and never says Done) does not lose the exit: once the take runs out
// (schedule.Lease), the partition's worker gets the user again and publishes the exit.
func TestAnExitTakenByAWorkerThatDiedIsPublishedAfterTheTakeRunsOut(t *testing.T) {
	sched := schedule.NewMemory()
	r := newRigWithSchedule(t, members.NewMemory(), sched)
	r.send(t, event.Event{ID: "e1", UserID: "alice", Type: "add_to_cart", TS: r.clk.Now()})
	if d := r.next(t); !slices.Equal(d.Entered, []string{"cart_abandoner"}) {
		t.Fatalf("first delta = %+v", d)
	}
	waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(5*time.Second))
	p := event.Partition("alice", r.n.Topology.Partitions)
	deadline := time.Now().Add(5 * time.Second)
	var dying []schedule.Taken
	for len(dying) == 0 { // the due time is written after the delta: wait for it
		var err error
		if dying, err = sched.Due(context.Background(), p, r.clk.Now().Add(32*time.Minute), 10); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("alice's exit was never scheduled")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(dying) != 1 || dying[0].User != "alice" {
		t.Fatalf("taken %+v", dying)
	}
	r.clk.Add(32 * time.Minute) // past her due time: the take is the dead worker's
	r.none(t, 300*time.Millisecond)
	r.clk.Add(schedule.Lease) // the take runs out
	d := r.next(t)
	if d.UserID != "alice" || d.Cause != delta.CauseExpiry || !slices.Equal(d.Exited, []string{"cart_abandoner"}) {
		t.Fatalf("delta after the take ran out = %+v", d)
	}
}

func TestEraseTellsEdgesToForget(t *testing.T) {
	r := newRig(t)
	r.send(t, event.Event{ID: "e1", UserID: "carol", Type: "add_to_cart", TS: r.clk.Now()})
	if d := r.next(t); d.Version != 1 {
		t.Fatalf("delta = %+v", d)
	}
	if err := r.eng.Erase(context.Background(), "carol"); err != nil {
		t.Fatal(err)
	}
	d := r.next(t)
	if !d.Erased || d.Version != 2 || !slices.Equal(d.Exited, []string{"cart_abandoner"}) {
		t.Fatalf("erase delta = %+v", d)
	}
	if _, err := r.eng.cfg.Store.Get(context.Background(), "carol"); err != store.ErrNotFound {
		t.Fatalf("profile after erase: %v", err)
	}
	// No expiry delta for an erased user.
	r.clk.Add(time.Hour)
	r.none(t, 300*time.Millisecond)
}

func TestUnreadableEventIsDroppedAndCounted(t *testing.T) {
	r := newRig(t)
	if _, err := r.n.JS.Publish(context.Background(), r.n.Topology.EventSubject(event.Partition("dave", r.n.Topology.Partitions)), []byte("not an event")); err != nil {
		t.Fatal(err)
	}
	r.send(t, event.Event{ID: "e1", UserID: "dave", Type: "add_to_cart", TS: r.clk.Now()})
	if d := r.next(t); d.UserID != "dave" {
		t.Fatalf("delta = %+v", d)
	}
	if got := testutil.ToFloat64(r.eng.m.poison); got != 1 {
		t.Fatalf("unreadable counter = %v, want 1", got)
	}
}

// everyoneRules puts every profile in segment "known": a membership no window ends.
type everyoneRules struct{ cartRules }

func (r *everyoneRules) Segments(_ context.Context, _ *profile.Profile, _ time.Time, dst []string) ([]string, error) {
	return append(dst, "known"), nil
}

// With a retention, a user whose profile expired is erased everywhere at the due time just after
// the expiry: an erase delta (edges drop their replica), no memberships, member counts down. A
// user with new events before then is kept.
func TestAnExpiredProfileIsForgottenEverywhere(t *testing.T) {
	const retention = 2 * time.Hour
	rules := &everyoneRules{cartRules: *newCartRules(t)}
	mem := members.NewMemory()
	var clk *clock
	r := newRigWithConfig(t, func(c *Config) {
		clk = &clock{now: time.Now()}
		c.Now = clk.Now
		c.Store = memory.New(store.Options{Now: clk.Now, Retention: retention})
		c.Members, c.Rules, c.Retention = mem, func() Rules { return rules }, retention
	})
	r.clk = clk
	ctx, n, eng := context.Background(), r.n, r.eng
	r.send(t, event.Event{ID: "e1", UserID: "idle", Type: "page_view", TS: clk.Now()},
		event.Event{ID: "e2", UserID: "busy", Type: "page_view", TS: clk.Now()})
	for range 2 {
		if d := r.next(t); !slices.Equal(d.Entered, []string{"known"}) {
			t.Fatalf("first delta = %+v", d)
		}
	}
	waitNothingPending(ctx, t, n.JS, n.Topology.EventsStream(), time.Now().Add(5*time.Second))
	clk.Add(retention - time.Minute)
	r.send(t, event.Event{ID: "e3", UserID: "busy", Type: "page_view", TS: clk.Now()}) // busy stays
	waitNothingPending(ctx, t, n.JS, n.Topology.EventsStream(), time.Now().Add(5*time.Second))
	r.none(t, 200*time.Millisecond) // nothing changed for busy: no delta

	clk.Add(time.Hour + 2*time.Minute) // idle's profile expired; its forget due has come
	d := r.next(t)
	if d.UserID != "idle" || !d.Erased || d.Cause != delta.CauseErase || !slices.Equal(d.Exited, []string{"known"}) || len(d.Members) != 0 {
		t.Fatalf("delta after idle's profile expired = %+v", d)
	}
	r.none(t, 300*time.Millisecond) // busy is not forgotten, and idle only once
	if rec, err := mem.Get(ctx, "idle"); err != nil || len(rec.Members) != 0 {
		t.Fatalf("idle's membership record = %+v, %v", rec, err)
	}
	counts, err := mem.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if counts["known"] != 1 {
		t.Fatalf("members of known = %d, want 1 (busy)", counts["known"])
	}
	if got := testutil.ToFloat64(eng.m.forgotten); got != 1 {
		t.Fatalf("forgotten = %v, want 1", got)
	}
}

// A backend may publish an event on EVENTS itself, without ts or accepted_at: it counts at the
// time JetStream stored it ("ts optional: server time"), not at 1970, so it lands in the window
// and the user enters; its delta has an acceptance time.
func TestAnEventPublishedOnNATSWithoutTsCountsAtItsStoreTime(t *testing.T) {
	r := newRig(t)
	subject := r.n.Topology.EventSubject(event.Partition("dora", r.n.Topology.Partitions))
	if _, err := r.n.JS.Publish(context.Background(), subject, []byte(`{"event_id":"direct-1","user_id":"dora","type":"add_to_cart"}`)); err != nil {
		t.Fatal(err)
	}
	d := r.next(t)
	if d.UserID != "dora" || !slices.Equal(d.Entered, []string{"cart_abandoner"}) {
		t.Fatalf("delta = %+v, want dora in cart_abandoner", d)
	}
	if age := time.Since(time.UnixMilli(d.AcceptedAt)); d.AcceptedAt == 0 || age < 0 || age > time.Minute {
		t.Fatalf("accepted_at %d (%s ago), want the time JetStream stored the event", d.AcceptedAt, age)
	}
	prof, err := r.eng.cfg.Store.Get(context.Background(), "dora")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := prof.Value(cartFeature, r.clk.Now()); !ok || v.Int != 1 {
		t.Fatalf("dora's add_to_cart count in the window = %+v, %v; want 1", v, ok)
	}
}

// After an event of a type no rule reads, the profile is updated but not evaluated: no segment's
// inputs changed. An event of a type a rule reads is evaluated as always.
func TestAnEventNoRuleReadsIsAppliedButNotEvaluated(t *testing.T) {
	r := newRig(t)
	rules := newCartRules(t)
	rules.filter, rules.evals = true, new(atomic.Int64)
	r.rules.Store(rules)
	r.send(t, event.Event{ID: "c1", UserID: "alice", Type: "add_to_cart", TS: r.clk.Now()})
	if d := r.next(t); !slices.Equal(d.Entered, []string{"cart_abandoner"}) {
		t.Fatalf("delta = %+v", d)
	}
	r.send(t, event.Event{ID: "v1", UserID: "alice", Type: "page_view", TS: r.clk.Now()},
		event.Event{ID: "v2", UserID: "bob", Type: "page_view", TS: r.clk.Now()})
	waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(5*time.Second))
	r.none(t, 200*time.Millisecond)
	if got := rules.evals.Load(); got != 1 {
		t.Fatalf("%d evaluations, want 1: the page views changed nothing a rule reads", got)
	}
	if got := testutil.ToFloat64(r.eng.m.notEvaluated); got != 2 {
		t.Fatalf("not evaluated = %v, want 2", got)
	}
	if got := testutil.ToFloat64(r.eng.m.applied); got != 3 {
		t.Fatalf("applied = %v, want 3 (the page views update the profiles)", got)
	}
	prof, err := r.eng.cfg.Store.Get(context.Background(), "alice")
	if err != nil || prof.Version != 2 {
		t.Fatalf("alice's profile: %+v, %v; want version 2", prof, err)
	}
	r.send(t, event.Event{ID: "c2", UserID: "alice", Type: "add_to_cart", TS: r.clk.Now()})
	waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(5*time.Second))
	deadline := time.Now().Add(5 * time.Second)
	for rules.evals.Load() != 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := rules.evals.Load(); got != 2 {
		t.Fatalf("%d evaluations after a second add_to_cart, want 2", got)
	}
}
