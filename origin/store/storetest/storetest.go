// Package storetest is the conformance suite every profile store must pass: one set of
// behaviours (dedup, out-of-order events, windows, sums, decayed scores, traits, retention,
// delete, scan, concurrency), run against store/memory and store/redis alike, with results
// checked against the store-independent model in core/profile.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/origin/store"
)

// Clock is a settable clock for store.Options.Now.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock stopped at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// NewStore builds an empty store for one test with the given options (clock, retention, dedup
// window). It must clean up after itself with t.Cleanup.
type NewStore func(t *testing.T, opts store.Options) store.Store

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

const week = 7 * 24 * time.Hour

var (
	cart30m     = profile.Feature{Kind: profile.FeatureCount, Name: "add_to_cart", Window: 30 * time.Minute}
	cart5m      = profile.Feature{Kind: profile.FeatureCount, Name: "add_to_cart", Window: 5 * time.Minute}
	buy7d       = profile.Feature{Kind: profile.FeatureCount, Name: "purchase", Window: week}
	amount7d    = profile.Feature{Kind: profile.FeatureSum, Name: "purchase", Prop: "amount", Window: week}
	amount1h    = profile.Feature{Kind: profile.FeatureSum, Name: "purchase", Prop: "amount", Window: time.Hour}
	views90d    = profile.Feature{Kind: profile.FeatureCount, Name: "page_view", Window: 90 * 24 * time.Hour}
	sinceView   = profile.Feature{Kind: profile.FeatureSince, Name: "page_view"}
	sinceCart   = profile.Feature{Kind: profile.FeatureSince, Name: "add_to_cart"}
	engagement  = profile.Feature{Kind: profile.FeatureScore, Name: "engagement"}
	planTrait   = profile.Feature{Kind: profile.FeatureTrait, Name: "plan"}
	vipTrait    = profile.Feature{Kind: profile.FeatureTrait, Name: "vip"}
	ageTrait    = profile.Feature{Kind: profile.FeatureTrait, Name: "age"}
	allFeatures = []profile.Feature{cart30m, cart5m, buy7d, amount7d, amount1h, views90d, sinceView, sinceCart, engagement, planTrait, vipTrait, ageTrait}
)

// Spec is the Spec the suite uses; benchmarks may use it too.
func Spec() *profile.Spec {
	s, err := profile.NewSpec(allFeatures, map[string]profile.ScoreSpec{
		"engagement": {HalfLife: week, Weights: map[string]float64{"page_view": 1, "add_to_cart": 5, "purchase": 20}},
	})
	if err != nil {
		panic(err) // the suite's own constant configuration
	}
	return s
}

type env struct {
	t     *testing.T
	ctx   context.Context
	clock *Clock
	s     store.Store
	spec  *profile.Spec
}

func setup(t *testing.T, newStore NewStore, opts store.Options) *env {
	clock := NewClock(t0)
	opts.Now = clock.Now
	return &env{t: t, ctx: context.Background(), clock: clock, s: newStore(t, opts), spec: Spec()}
}

func (e *env) apply(id, user, typ string, ts time.Time, props map[string]any) (*profile.Profile, bool) {
	e.t.Helper()
	p, applied, err := e.s.Apply(e.ctx, event.Event{ID: id, UserID: user, Type: typ, TS: ts, Props: props}, e.spec)
	if err != nil {
		e.t.Fatalf("Apply(%s): %v", id, err)
	}
	return p, applied
}

func (e *env) get(user string) *profile.Profile {
	e.t.Helper()
	p, err := e.s.Get(e.ctx, user)
	if err != nil {
		e.t.Fatalf("Get(%s): %v", user, err)
	}
	return p
}

// same reports the features of got that differ from want at now (doubles within 1e-9 relative).
func same(got, want *profile.Profile, now time.Time) error {
	if got.Version != want.Version {
		return fmt.Errorf("version %d, want %d", got.Version, want.Version)
	}
	for _, f := range allFeatures {
		g, gok := got.Value(f, now)
		w, wok := want.Value(f, now)
		if gok != wok || g.Kind != w.Kind || !closeEnough(g, w) {
			return fmt.Errorf("%+v = %v (%v), want %v (%v)", f, g, gok, w, wok)
		}
	}
	return nil
}

func closeEnough(a, b profile.Value) bool {
	if a.Kind != profile.KindDouble {
		return a == b
	}
	return math.Abs(a.Double-b.Double) <= 1e-9*math.Max(1, math.Abs(b.Double))
}

func (e *env) expect(p *profile.Profile, now time.Time, want map[profile.Feature]profile.Value) {
	e.t.Helper()
	for f, w := range want {
		got, ok := p.Value(f, now)
		if !ok && !w.IsAbsent() || !closeEnough(got, w) {
			e.t.Errorf("%+v at %s = %v, want %v", f, now.Format(time.DateTime), got, w)
		}
	}
}

// Run runs the conformance suite against the stores newStore builds.
func Run(t *testing.T, newStore NewStore) {
	t.Run("NotFound", func(t *testing.T) {
		e := setup(t, newStore, store.Options{})
		if _, err := e.s.Get(e.ctx, "nobody"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get of an unknown user: %v, want ErrNotFound", err)
		}
	})

	t.Run("ApplyReturnsWhatGetReads", func(t *testing.T) {
		e := setup(t, newStore, store.Options{})
		p, applied := e.apply("e1", "alice", "add_to_cart", t0, nil)
		if !applied || p.Version != 1 || p.UserID != "alice" {
			t.Fatalf("first Apply: applied=%v version=%d user=%q", applied, p.Version, p.UserID)
		}
		if !p.Created.Equal(t0) || !p.Updated.Equal(t0) {
			t.Errorf("created %v updated %v, want %v", p.Created, p.Updated, t0)
		}
		if err := same(e.get("alice"), p, t0); err != nil {
			t.Error("Get differs from Apply's result:", err)
		}
		e.expect(p, t0, map[profile.Feature]profile.Value{cart30m: profile.IntValue(1), sinceCart: profile.IntValue(0), engagement: profile.DoubleValue(5)})
	})

	t.Run("ApplyBatchEqualsApplyInOrder", func(t *testing.T) {
		// Interleaved users, out-of-order timestamps, traits overwritten, a duplicate inside
		// the batch and one of an event applied before the batch, and an invalid event in the
		// middle: every result must be what Apply one by one gives, and later events of a user
		// must see the earlier ones.
		one := setup(t, newStore, store.Options{})
		batch := setup(t, newStore, store.Options{})
		pre := event.Event{ID: "pre", UserID: "a", Type: "page_view", TS: t0.Add(-time.Hour)}
		evs := []event.Event{
			{ID: "1", UserID: "a", Type: "add_to_cart", TS: t0},
			{ID: "2", UserID: "b", Type: "purchase", TS: t0, Props: map[string]any{"amount": 12.5}},
			{ID: "3", UserID: "a", Type: "identify", TS: t0.Add(time.Second), Props: map[string]any{"plan": "pro", "age": 41}},
			{ID: "", UserID: "c", Type: "page_view", TS: t0},                                                          // invalid: no event id
			{ID: "4", UserID: "a", Type: "identify", TS: t0.Add(-time.Second), Props: map[string]any{"plan": "free"}}, // older: plan stays
			{ID: "1", UserID: "a", Type: "add_to_cart", TS: t0},                                                       // duplicate inside the batch
			{ID: "pre", UserID: "a", Type: "page_view", TS: t0},                                                       // duplicate of an earlier Apply
			{ID: "5", UserID: "b", Type: "purchase", TS: t0.Add(-20 * time.Minute), Props: map[string]any{"amount": 2.5}},
			{ID: "6", UserID: "a", Type: "page_view", TS: t0.Add(2 * time.Second)},
		}
		for _, e := range []*env{one, batch} {
			if _, _, err := e.s.Apply(e.ctx, pre, e.spec); err != nil {
				t.Fatal(err)
			}
		}
		res, err := batch.s.ApplyBatch(batch.ctx, evs, batch.spec)
		if err != nil {
			t.Fatalf("ApplyBatch: %v", err)
		}
		if len(res) != len(evs) {
			t.Fatalf("ApplyBatch returned %d results for %d events", len(res), len(evs))
		}
		for i, ev := range evs {
			p, applied, err := one.s.Apply(one.ctx, ev, one.spec)
			r := res[i]
			if (err != nil) != (r.Err != nil) {
				t.Fatalf("event %d: Apply error %v, ApplyBatch error %v", i, err, r.Err)
			}
			if err != nil {
				continue
			}
			if applied != r.Applied {
				t.Errorf("event %d (%s): applied %v, Apply says %v", i, ev.ID, r.Applied, applied)
			}
			if e := same(r.Profile, p, t0); e != nil {
				t.Errorf("event %d (%s): %v", i, ev.ID, e)
			}
		}
		if res[3].Err == nil {
			t.Error("the event without an id was applied")
		}
		if !res[0].Applied || res[5].Applied || res[6].Applied {
			t.Errorf("dedup in a batch: applied %v %v %v, want true false false", res[0].Applied, res[5].Applied, res[6].Applied)
		}
		last := res[len(res)-1].Profile
		if last.Version != 5 { // pre, 1, 3, 4, 6
			t.Errorf("user a at the end of the batch: version %d, want 5", last.Version)
		}
		batch.expect(last, t0.Add(2*time.Second), map[profile.Feature]profile.Value{
			planTrait: profile.StringValue("pro"), ageTrait: profile.IntValue(41), cart30m: profile.IntValue(1),
		})
		batch.expect(res[7].Profile, t0, map[profile.Feature]profile.Value{amount1h: profile.DoubleValue(15), buy7d: profile.IntValue(2)})
		if err := same(batch.get("a"), last, t0); err != nil {
			t.Error("Get after the batch differs from the batch's last result:", err)
		}
		if empty, err := batch.s.ApplyBatch(batch.ctx, nil, batch.spec); err != nil || len(empty) != 0 {
			t.Errorf("empty batch: %v, %v", empty, err)
		}
	})

	t.Run("RedeliveredBatchOfOneUserIsAllDuplicates", func(t *testing.T) {
		// A message redelivered after a crash: many events of one user, applied before (all,
		// or the first part). Every event is a duplicate or applied once, none fails.
		e := setup(t, newStore, store.Options{})
		var evs []event.Event
		for i := range 40 {
			evs = append(evs, event.Event{ID: fmt.Sprintf("m%d", i), UserID: "u", Type: "page_view", TS: t0.Add(time.Duration(i) * time.Second)})
		}
		for _, step := range []struct {
			evs  []event.Event
			from int // evs[from:] are new
		}{{evs[:15], 0}, {evs, 15}, {evs, 40}} {
			res, err := e.s.ApplyBatch(e.ctx, step.evs, e.spec)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range res {
				if want := i >= step.from; r.Err != nil || r.Applied != want {
					t.Fatalf("event %d of %d: applied %v err %v, want applied %v", i, len(step.evs), r.Applied, r.Err, want)
				}
			}
		}
		e.expect(e.get("u"), t0.Add(time.Minute), map[profile.Feature]profile.Value{views90d: profile.IntValue(40)})
	})

	t.Run("ProfilesHandedOutNeverChange", func(t *testing.T) {
		// The engine keeps a batch's result profiles while it applies later events of the
		// same users: a result must stay as it was returned.
		e := setup(t, newStore, store.Options{})
		evs := []event.Event{
			{ID: "1", UserID: "u", Type: "add_to_cart", TS: t0},
			{ID: "2", UserID: "u", Type: "identify", TS: t0, Props: map[string]any{"plan": "pro"}},
			{ID: "3", UserID: "u", Type: "purchase", TS: t0, Props: map[string]any{"amount": 5.0}},
		}
		res, err := e.s.ApplyBatch(e.ctx, evs, e.spec)
		if err != nil {
			t.Fatal(err)
		}
		got := e.get("u")
		e.apply("4", "u", "add_to_cart", t0, nil)
		e.apply("5", "u", "identify", t0, map[string]any{"plan": "free"})
		for i, r := range res {
			if r.Err != nil || r.Profile.Version != int64(i+1) {
				t.Fatalf("result %d: %v, %v; want version %d", i, r.Profile, r.Err, i+1)
			}
		}
		e.expect(res[0].Profile, t0, map[profile.Feature]profile.Value{cart30m: profile.IntValue(1), planTrait: {}})
		e.expect(res[2].Profile, t0, map[profile.Feature]profile.Value{cart30m: profile.IntValue(1), planTrait: profile.StringValue("pro"), buy7d: profile.IntValue(1)})
		if got.Version != 3 {
			t.Errorf("a profile from Get changed: version %d, want 3", got.Version)
		}
		e.expect(got, t0, map[profile.Feature]profile.Value{cart30m: profile.IntValue(1), planTrait: profile.StringValue("pro")})
	})

	t.Run("DuplicateEventIDsAreAppliedOnce", func(t *testing.T) {
		e := setup(t, newStore, store.Options{DedupWindow: time.Hour})
		e.apply("e1", "u", "purchase", t0, map[string]any{"amount": 10.0})
		e.clock.Advance(time.Minute)
		p, applied := e.apply("e1", "u", "purchase", t0, map[string]any{"amount": 10.0})
		if applied || p.Version != 1 {
			t.Fatalf("redelivery: applied=%v version=%d, want false, 1", applied, p.Version)
		}
		e.expect(e.get("u"), e.clock.Now(), map[profile.Feature]profile.Value{buy7d: profile.IntValue(1), amount7d: profile.DoubleValue(10)})
		// The same id for another user is another event.
		if _, applied := e.apply("e1", "v", "purchase", t0, nil); !applied {
			t.Error("an event id of user u blocked user v's event")
		}
		// After the dedup window the id is forgotten.
		e.clock.Advance(time.Hour)
		if p, applied := e.apply("e1", "u", "purchase", t0, map[string]any{"amount": 10.0}); !applied || p.Version != 2 {
			t.Errorf("after the dedup window: applied=%v version=%d, want true, 2", applied, p.Version)
		}
	})

	t.Run("OutOfOrderEventsLandInTheirBuckets", func(t *testing.T) {
		e := setup(t, newStore, store.Options{})
		e.clock.Advance(time.Hour) // now 13:00
		now := e.clock.Now()
		e.apply("late", "u", "add_to_cart", now.Add(-2*time.Minute), nil)
		e.apply("early", "u", "add_to_cart", now.Add(-40*time.Minute), nil)
		e.apply("mid", "u", "add_to_cart", now.Add(-20*time.Minute), nil)
		p := e.get("u")
		e.expect(p, now, map[profile.Feature]profile.Value{
			cart5m: profile.IntValue(1), cart30m: profile.IntValue(2), sinceCart: profile.IntValue(120),
		})
		// 13:11 — "mid" (12:40) left the 30-minute window at 13:11, "late" (12:58) is still in.
		e.expect(p, now.Add(11*time.Minute), map[profile.Feature]profile.Value{cart30m: profile.IntValue(1)})
		exp, ok := p.NextExpiry(e.spec, now)
		if want := now.Add(-2*time.Minute + 10*time.Second + 5*time.Minute); !ok || !exp.Equal(want) {
			t.Errorf("NextExpiry = %v, %v; want %v (the 5m window drops the 12:58 event)", exp, ok, want)
		}
	})

	t.Run("WindowsAndSums", func(t *testing.T) {
		e := setup(t, newStore, store.Options{})
		now := t0
		e.apply("a", "u", "purchase", now.Add(-6*24*time.Hour), map[string]any{"amount": 100.0})
		e.apply("b", "u", "purchase", now.Add(-30*time.Minute), map[string]any{"amount": 0.1})
		e.apply("c", "u", "purchase", now.Add(-10*time.Minute), map[string]any{"amount": 0.2})
		e.apply("d", "u", "purchase", now, map[string]any{"amount": "n/a"})
		e.apply("v", "u", "page_view", now.Add(-80*24*time.Hour), nil)
		p := e.get("u")
		e.expect(p, now, map[profile.Feature]profile.Value{
			buy7d: profile.IntValue(4), amount7d: profile.DoubleValue(100.3), amount1h: profile.DoubleValue(0.1 + 0.2),
			views90d: profile.IntValue(1), sinceView: profile.IntValue(80 * 24 * 3600),
		})
		e.expect(p, now.Add(2*24*time.Hour), map[profile.Feature]profile.Value{buy7d: profile.IntValue(3), amount7d: profile.DoubleValue(0.1 + 0.2)})
	})

	t.Run("BucketsOutsideEveryWindowArePruned", func(t *testing.T) {
		e := setup(t, newStore, store.Options{})
		key := profile.SeriesKey{Type: "add_to_cart", Res: profile.BucketSize(cart5m.Window)}
		e.apply("1", "u", "add_to_cart", t0, nil)
		e.clock.Advance(10 * time.Minute)
		now := e.clock.Now()
		e.apply("2", "u", "add_to_cart", now, nil)
		e.apply("3", "u", "add_to_cart", now.Add(-20*time.Minute), nil) // too old for the 5m series
		p := e.get("u")
		if s := p.Series[key]; s == nil || len(s.Buckets) != 1 || s.Buckets[0].V != 1 {
			t.Fatalf("%s buckets = %+v, want only the bucket of event 2", key, s)
		}
		e.expect(p, now, map[profile.Feature]profile.Value{cart5m: profile.IntValue(1), cart30m: profile.IntValue(3)})
	})

	t.Run("ScoresDecayWithTheClock", func(t *testing.T) {
		e := setup(t, newStore, store.Options{})
		e.apply("p", "u", "purchase", t0, nil)             // +20
		e.apply("v", "u", "page_view", t0.Add(-week), nil) // +1, a week before: 0.5 now
		e.clock.Advance(week)
		e.apply("c", "u", "add_to_cart", e.clock.Now(), nil) // +5
		p := e.get("u")
		e.expect(p, e.clock.Now(), map[profile.Feature]profile.Value{engagement: profile.DoubleValue(20.5/2 + 5)})
		e.expect(p, e.clock.Now().Add(2*week), map[profile.Feature]profile.Value{engagement: profile.DoubleValue((20.5/2 + 5) / 4)})
	})

	t.Run("TraitsAreLastWriterWins", func(t *testing.T) {
		e := setup(t, newStore, store.Options{})
		e.apply("1", "u", "identify", t0, map[string]any{"plan": "pro", "vip": true, "age": 42.0})
		e.apply("2", "u", "identify", t0.Add(-time.Hour), map[string]any{"plan": "free"})
		e.apply("3", "u", "identify", t0.Add(time.Minute), map[string]any{"vip": nil, "age": 42.5})
		e.apply("4", "u", "identify", t0.Add(time.Second), map[string]any{"vip": true})
		p := e.get("u")
		e.expect(p, t0, map[profile.Feature]profile.Value{planTrait: profile.StringValue("pro"), ageTrait: profile.DoubleValue(42.5)})
		if v, ok := p.Value(vipTrait, t0); ok {
			t.Errorf("deleted trait vip = %v", v)
		}
		if p.Version != 4 {
			t.Errorf("version %d, want 4: ignored traits still count as applied events", p.Version)
		}
	})

	t.Run("IdleProfilesExpireAfterRetention", func(t *testing.T) {
		// Margins of half a second either way keep this stable on a loaded machine.
		e := setup(t, newStore, store.Options{Retention: 2 * time.Second})
		wait := func(d time.Duration) {
			// The clock and real time both move: Redis expires keys on its own clock.
			time.Sleep(d)
			e.clock.Advance(d)
		}
		e.apply("1", "u", "page_view", t0, nil)
		wait(time.Second)
		if p, _ := e.apply("2", "u", "page_view", e.clock.Now(), nil); p.Version != 2 {
			t.Fatalf("version %d after 1s of a 2s retention, want 2", p.Version)
		}
		wait(1500 * time.Millisecond) // 2.5s after the first event, 1.5s after the second
		if p := e.get("u"); p.Version != 2 {
			t.Fatalf("version %d, want 2: the second event should have pushed the expiry out", p.Version)
		}
		wait(time.Second)
		if _, err := e.s.Get(e.ctx, "u"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get after retention: %v, want ErrNotFound", err)
		}
		if p, applied := e.apply("3", "u", "page_view", e.clock.Now(), nil); !applied || p.Version != 1 {
			t.Errorf("a new event after expiry: applied=%v version=%d, want a fresh profile", applied, p.Version)
		}
	})

	t.Run("DeleteForgetsTheUser", func(t *testing.T) {
		e := setup(t, newStore, store.Options{})
		e.apply("1", "u", "page_view", t0, nil)
		e.apply("1", "keep", "page_view", t0, nil)
		if err := e.s.Delete(e.ctx, "u"); err != nil {
			t.Fatal(err)
		}
		if _, err := e.s.Get(e.ctx, "u"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
		}
		if err := e.s.Delete(e.ctx, "never-seen"); err != nil {
			t.Errorf("Delete of an unknown user: %v", err)
		}
		if p, applied := e.apply("1", "u", "page_view", t0, nil); !applied || p.Version != 1 {
			t.Errorf("re-applying after Delete: applied=%v version=%d, want a fresh profile", applied, p.Version)
		}
		if e.get("keep").Version != 1 {
			t.Error("Delete touched another user")
		}
	})

	t.Run("ScanListsEveryProfile", func(t *testing.T) {
		e := setup(t, newStore, store.Options{})
		want := map[string]bool{}
		for i := range 40 {
			id := fmt.Sprintf("user-%d:{x}", i)
			want[id] = true
			e.apply("e", id, "page_view", t0, nil)
		}
		got := map[string]bool{}
		cursor, calls := "", 0
		for {
			ids, next, err := e.s.Scan(e.ctx, cursor, 7)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range ids {
				got[id] = true
			}
			if calls++; next == "" || calls > 10000 {
				break
			}
			cursor = next
		}
		for id := range want {
			if !got[id] {
				t.Errorf("Scan missed %q", id)
			}
		}
		for id := range got {
			if !want[id] {
				t.Errorf("Scan returned %q, which has no profile", id)
			}
		}
	})

	t.Run("ConcurrentAppliesToOneUserAreExact", func(t *testing.T) {
		e := setup(t, newStore, store.Options{})
		const workers, each = 8, 40
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					ev := event.Event{ID: fmt.Sprintf("w%d-%d", w, i), UserID: "hot", Type: "purchase",
						TS: t0.Add(-time.Duration(i) * time.Second), Props: map[string]any{"amount": 1.0}}
					if _, _, err := e.s.Apply(e.ctx, ev, e.spec); err != nil {
						errs <- err
						return
					}
					// A redelivery racing with the others must still count once.
					if _, applied, err := e.s.Apply(e.ctx, ev, e.spec); err != nil || applied {
						errs <- fmt.Errorf("redelivery of %s: applied=%v err=%v", ev.ID, applied, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		p := e.get("hot")
		if p.Version != workers*each {
			t.Errorf("version %d, want %d", p.Version, workers*each)
		}
		e.expect(p, t0, map[profile.Feature]profile.Value{buy7d: profile.IntValue(workers * each), amount7d: profile.DoubleValue(workers * each)})
	})

	t.Run("MatchesTheProfileModelOnRandomEvents", func(t *testing.T) {
		e := setup(t, newStore, store.Options{})
		rng := rand.New(rand.NewPCG(1, 2))
		types := []string{"page_view", "add_to_cart", "purchase", "identify", "other"}
		ref := profile.New("r")
		for i := range 300 {
			e.clock.Advance(time.Duration(rng.IntN(600)) * time.Second)
			now := e.clock.Now()
			ev := event.Event{ID: fmt.Sprintf("r%d", rng.IntN(280)), UserID: "r", Type: types[rng.IntN(len(types))],
				TS: now.Add(-time.Duration(rng.IntN(3*3600)) * time.Second), Props: map[string]any{}}
			if rng.IntN(3) > 0 {
				ev.Props["amount"] = math.Round(rng.Float64()*10000) / 100
			}
			if ev.Type == "identify" {
				ev.Props = map[string]any{"plan": []any{"free", "pro", nil}[rng.IntN(3)], "age": float64(rng.IntN(90))}
			}
			p, applied, err := e.s.Apply(e.ctx, ev, e.spec)
			if err != nil {
				t.Fatal(err)
			}
			if applied {
				ref.Apply(e.spec.Plan(ev, now))
			}
			if err := same(p, ref, now); err != nil {
				t.Fatalf("after event %d (%s %s, applied=%v): %v", i, ev.ID, ev.Type, applied, err)
			}
		}
		if err := same(e.get("r"), ref, e.clock.Now().Add(time.Hour)); err != nil {
			t.Fatal("an hour later:", err)
		}
	})

	t.Run("BadEventsAreErrors", func(t *testing.T) {
		e := setup(t, newStore, store.Options{})
		for _, ev := range []event.Event{{ID: "x", Type: "a", TS: t0}, {UserID: "u", Type: "a", TS: t0}} {
			if _, _, err := e.s.Apply(e.ctx, ev, e.spec); err == nil {
				t.Errorf("Apply(%+v) accepted an event without ids", ev)
			}
		}
	})
}

// BenchmarkApply measures Apply throughput on s with b.RunParallel (parallelism goroutines per
// GOMAXPROCS): events of a typical mix spread over 10,000 users, every one a new event id. It
// reports events/s.
func BenchmarkApply(b *testing.B, s store.Store, parallelism int) {
	spec := Spec()
	ctx := context.Background()
	types := []string{"page_view", "page_view", "page_view", "add_to_cart", "purchase", "identify"}
	var seq atomicCounter
	b.SetParallelism(parallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := seq.next()
			ev := event.Event{
				ID: "b" + strconv.FormatUint(n, 36), UserID: "user-" + strconv.FormatUint(n%10000, 10),
				Type: types[n%uint64(len(types))], TS: time.Now(),
				Props: map[string]any{"amount": 12.5, "plan": "pro"},
			}
			if _, _, err := s.Apply(ctx, ev, spec); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

type atomicCounter struct{ n atomic.Uint64 }

func (c *atomicCounter) next() uint64 { return c.n.Add(1) }
