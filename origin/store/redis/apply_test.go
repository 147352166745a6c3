package redis

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
	"github.com/segedge/segedge/origin/store/storetest"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// sibling returns a second store on s's Redis and key prefix, with its own cache: another
// origin (or this one after a restart) holding the same users.
func sibling(t *testing.T, s *Store, opts store.Options) *Store {
	t.Helper()
	o, err := New(s.c, s.prefix, opts)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// profileDiff describes how two profiles differ, exactly ("" if they do not): the Redis store
// computes with the same Profile.Apply as the memory store and stores floats in a form that
// parses back to the same bits, so not even rounding may differ.
func profileDiff(got, want *profile.Profile) string {
	switch {
	case got == nil || want == nil:
		if got != want {
			return fmt.Sprintf("profile %v, want %v", got, want)
		}
		return ""
	case got.UserID != want.UserID || got.Version != want.Version:
		return fmt.Sprintf("user %q version %d, want %q %d", got.UserID, got.Version, want.UserID, want.Version)
	case !got.Created.Equal(want.Created) || !got.Updated.Equal(want.Updated):
		return fmt.Sprintf("created %v updated %v, want %v %v", got.Created, got.Updated, want.Created, want.Updated)
	}
	if d := mapDiff("last seen", got.LastSeen, want.LastSeen, func(a, b time.Time) bool { return a.Equal(b) }); d != "" {
		return d
	}
	if d := mapDiff("trait", got.Traits, want.Traits, func(a, b profile.Trait) bool { return a.Value == b.Value && a.TS.Equal(b.TS) }); d != "" {
		return d
	}
	if d := mapDiff("series", got.Series, want.Series, func(a, b *profile.Series) bool { return slices.Equal(a.Buckets, b.Buckets) }); d != "" {
		return d
	}
	return mapDiff("score", got.Scores, want.Scores, func(a, b profile.Score) bool {
		return a.Value == b.Value && a.AsOf.Equal(b.AsOf) && a.HalfLife == b.HalfLife
	})
}

func mapDiff[K comparable, V any](what string, got, want map[K]V, eq func(V, V) bool) string {
	for k, w := range want {
		if g, ok := got[k]; !ok || !eq(g, w) {
			return fmt.Sprintf("%s %v = %+v (present %v), want %+v", what, k, g, ok, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			return fmt.Sprintf("%s %v = %+v, want none", what, k, g)
		}
	}
	return ""
}

// randomEvents makes n events of a few users (skewed, so batches hold several events of one
// user), with out-of-order timestamps, counts, sums, scores and traits (set, overwritten,
// deleted), and now and then an event sent before again (a redelivery).
type randomEvents struct {
	rng  *rand.Rand
	sent []event.Event
	seq  int
}

func (r *randomEvents) next(now time.Time) event.Event {
	if len(r.sent) > 0 && r.rng.IntN(8) == 0 {
		return r.sent[r.rng.IntN(len(r.sent))]
	}
	r.seq++
	users := []string{"u0", "u0", "u0", "u1", "u1", "u2", "u3", "u4:{x}"}
	types := []string{"page_view", "page_view", "add_to_cart", "purchase", "identify", "other"}
	ev := event.Event{ID: "e" + strconv.Itoa(r.seq), UserID: users[r.rng.IntN(len(users))], Type: types[r.rng.IntN(len(types))],
		TS: now.Add(-time.Duration(r.rng.IntN(3*3600*1000)) * time.Millisecond), Props: map[string]any{}}
	switch {
	case ev.Type == "identify":
		ev.Props["plan"] = []any{"free", "pro", nil, "a|b,c:d"}[r.rng.IntN(4)]
		ev.Props["age"] = []any{float64(r.rng.IntN(90)), 41.5, true}[r.rng.IntN(3)]
	case r.rng.IntN(3) > 0:
		ev.Props["amount"] = []float64{0.1, 0.2, 12.5, 1e6, -3, r.rng.Float64() * 100}[r.rng.IntN(6)]
	}
	r.sent = append(r.sent, ev)
	return ev
}

// The Redis store (cached, and with two stores taking turns on the same users, as origins do
// around a lease change) gives every event the result the memory store gives it, and what is
// left in Redis is what the memory store holds and what the cache holds.
func TestApplyBatchMatchesTheMemoryStore(t *testing.T) {
	for _, tc := range []struct {
		name    string
		origins int
	}{{"OneOrigin", 1}, {"TwoOriginsTakingTurns", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			clock := storetest.NewClock(t0)
			opts := store.Options{Now: clock.Now, DedupWindow: time.Hour}
			origins := []*Store{newTestStore(t, opts)}
			for len(origins) < tc.origins {
				origins = append(origins, sibling(t, origins[0], opts))
			}
			mem := memory.New(opts)
			ctx, spec := context.Background(), storetest.Spec()
			gen := &randomEvents{rng: rand.New(rand.NewPCG(7, uint64(tc.origins)))}
			type outcome struct {
				batch, i  int
				ev        event.Event
				got, want store.Result
			}
			var outcomes []outcome
			var batches [][]event.Event
			for b := range 150 {
				clock.Advance(time.Duration(gen.rng.IntN(120)) * time.Second)
				var evs []event.Event
				if len(batches) > 0 && gen.rng.IntN(10) == 0 {
					evs = batches[gen.rng.IntN(len(batches))] // a batch re-sent whole
				} else {
					for range 1 + gen.rng.IntN(20) {
						evs = append(evs, gen.next(clock.Now()))
					}
				}
				batches = append(batches, evs)
				if gen.rng.IntN(40) == 0 { // an erasure: the user starts again in both stores
					user := evs[0].UserID
					if err := origins[gen.rng.IntN(len(origins))].Delete(ctx, user); err != nil {
						t.Fatal(err)
					}
					if err := mem.Delete(ctx, user); err != nil {
						t.Fatal(err)
					}
				}
				got, err := origins[gen.rng.IntN(len(origins))].ApplyBatch(ctx, evs, spec)
				if err != nil {
					t.Fatalf("batch %d: %v", b, err)
				}
				want, err := mem.ApplyBatch(ctx, evs, spec)
				if err != nil {
					t.Fatal(err)
				}
				for i, ev := range evs {
					outcomes = append(outcomes, outcome{b, i, ev, got[i], want[i]})
				}
			}
			// Compared at the end: a profile handed out must not have changed since.
			applied := 0
			for _, o := range outcomes {
				if o.got.Err != nil || o.got.Applied != o.want.Applied {
					t.Fatalf("batch %d event %d (%s of %s): applied %v err %v, want applied %v", o.batch, o.i, o.ev.ID, o.ev.UserID, o.got.Applied, o.got.Err, o.want.Applied)
				}
				if d := profileDiff(o.got.Profile, o.want.Profile); d != "" {
					t.Fatalf("batch %d event %d (%s of %s, applied %v): %s", o.batch, o.i, o.ev.ID, o.ev.UserID, o.got.Applied, d)
				}
				if o.got.Applied {
					applied++
				}
			}
			if applied < len(outcomes)/2 || applied == len(outcomes) {
				t.Fatalf("%d of %d events applied: the generator should make both kinds", applied, len(outcomes))
			}
			for _, user := range []string{"u0", "u1", "u2", "u3", "u4:{x}"} {
				assertStoredEqualsMemory(t, origins, mem, user)
			}
		})
	}
}

// assertStoredEqualsMemory checks that user's profile in Redis is the memory store's, and that
// every origin's cache entry that claims to be that stored profile (same v, c, e) is it exactly.
func assertStoredEqualsMemory(t *testing.T, origins []*Store, mem *memory.Store, user string) {
	t.Helper()
	ctx := context.Background()
	m, err := origins[0].c.HGetAll(ctx, origins[0].keys(user)[0]).Result()
	if err != nil {
		t.Fatal(err)
	}
	stored, err := decodeState(user, hashPairs(m))
	if err != nil {
		t.Fatal(err)
	}
	want, err := mem.Get(ctx, user)
	if err != nil {
		want = profile.New(user)
	}
	if d := profileDiff(stored.p, want); d != "" {
		t.Errorf("user %s in Redis: %s", user, d)
	}
	current := 0
	for n, o := range origins {
		o.users.mu.Lock()
		c, ok := o.users.cached[user]
		o.users.mu.Unlock()
		if !ok || c.p.Version != stored.p.Version || !c.p.Created.Equal(stored.p.Created) || c.last != stored.last {
			continue
		}
		current++
		if d := profileDiff(c.p, stored.p); d != "" {
			t.Errorf("user %s in the cache of origin %d: %s", user, n, d)
		}
	}
	if current == 0 && stored.p.Version > 0 {
		t.Errorf("user %s: no origin's cache holds the stored profile (version %d)", user, stored.p.Version)
	}
	got, err := origins[0].Get(ctx, user)
	if stored.p.Version == 0 {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if d := profileDiff(got, stored.p); d != "" {
		t.Errorf("Get(%s): %s", user, d)
	}
}

// Another origin writes a user this store has cached (a lease moved and came back): the next
// apply notices from the compare-and-set, recomputes from the stored profile and is right. The
// other origin's events are add_to_cart, this one's page_view.
func TestStaleCacheEntryIsNoticed(t *testing.T) {
	ctx, spec := context.Background(), storetest.Spec()
	for _, tc := range []struct {
		name string
		// between runs on the other origin after this one cached the user at version 2
		between func(t *testing.T, other *Store, clock *storetest.Clock)
		// version and page views after this origin's third event
		version, views int64
	}{
		{"WrittenByAnother", func(t *testing.T, other *Store, _ *storetest.Clock) {
			mustApply(t, other, "b1", "u", "add_to_cart")
		}, 4, 3},
		{"DeletedAndRecreatedLater", func(t *testing.T, other *Store, clock *storetest.Clock) {
			// Version 2 again, the last event a2 again (redelivered after the erasure), but
			// created later: only c tells.
			if err := other.Delete(ctx, "u"); err != nil {
				t.Fatal(err)
			}
			clock.Advance(time.Second)
			mustApply(t, other, "b1", "u", "add_to_cart")
			mustApply(t, other, "a2", "u", "add_to_cart")
		}, 3, 1},
		{"DeletedAndRecreatedInTheSameMillisecond", func(t *testing.T, other *Store, _ *storetest.Clock) {
			// Version 2 and the same creation time: only the last event id (e) tells.
			if err := other.Delete(ctx, "u"); err != nil {
				t.Fatal(err)
			}
			mustApply(t, other, "b1", "u", "add_to_cart")
			mustApply(t, other, "b2", "u", "add_to_cart")
		}, 3, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := storetest.NewClock(t0)
			opts := store.Options{Now: clock.Now}
			s := newTestStore(t, opts)
			other := sibling(t, s, opts)
			mustApply(t, s, "a1", "u", "page_view")
			mustApply(t, s, "a2", "u", "page_view")
			tc.between(t, other, clock)
			p, applied, err := s.Apply(ctx, event.Event{ID: "a3", UserID: "u", Type: "page_view", TS: clock.Now()}, spec)
			if err != nil || !applied {
				t.Fatalf("a3: applied %v, %v", applied, err)
			}
			views := profile.Feature{Kind: profile.FeatureCount, Name: "page_view", Window: 90 * 24 * time.Hour}
			if v, _ := p.Value(views, clock.Now()); p.Version != tc.version || v.Int != tc.views {
				t.Errorf("after a3: version %d, %d page views; want %d and %d", p.Version, v.Int, tc.version, tc.views)
			}
			stored, err := other.Get(ctx, "u")
			if err != nil {
				t.Fatal(err)
			}
			if d := profileDiff(stored, p); d != "" {
				t.Errorf("stored profile differs from a3's result: %s", d)
			}
		})
	}
}

func mustApply(t *testing.T, s *Store, id, user, typ string) *profile.Profile {
	t.Helper()
	p, applied, err := s.Apply(context.Background(), event.Event{ID: id, UserID: user, Type: typ, TS: s.opts.Now()}, storetest.Spec())
	if err != nil || !applied {
		t.Fatalf("%s: applied %v, %v", id, applied, err)
	}
	return p
}

// A cached profile that Redis expired (retention) is not resurrected: the next event starts a
// new profile, and an event id of the expired one is new again.
func TestExpiredCachedProfileStartsAfresh(t *testing.T) {
	s := newTestStore(t, store.Options{Retention: time.Second})
	ctx, spec := context.Background(), storetest.Spec()
	mustApply(t, s, "e1", "u", "page_view")
	mustApply(t, s, "e2", "u", "page_view")
	if s.users.cachedLen() != 1 {
		t.Fatalf("%d users cached, want 1", s.users.cachedLen())
	}
	time.Sleep(1500 * time.Millisecond)
	for _, id := range []string{"e1", "e3"} {
		p, applied, err := s.Apply(ctx, event.Event{ID: id, UserID: "u", Type: "page_view", TS: time.Now()}, spec)
		if err != nil || !applied {
			t.Fatalf("%s after expiry: applied %v, %v", id, applied, err)
		}
		if id == "e1" && (p.Version != 1 || time.Since(p.Created) > time.Second) {
			t.Errorf("e1 after expiry: version %d created %v; want a new profile", p.Version, p.Created)
		}
	}
}

// A message redelivered after a crash holds events of one user that were applied (all, or the
// first part): each is found a duplicate (or applied) in a few rounds, not one round per event,
// which would run out of rounds and fail them. Applied by the origin that cached the user and by
// one that did not (another origin, or this one restarted).
func TestRedeliveredEventsOfOneUserTakeFewRounds(t *testing.T) {
	ctx, spec := context.Background(), storetest.Spec()
	clock := storetest.NewClock(t0)
	opts := store.Options{Now: clock.Now}
	s := newTestStore(t, opts)
	var evs []event.Event
	for i := range 50 {
		evs = append(evs, event.Event{ID: "m" + strconv.Itoa(i), UserID: "burst", Type: "page_view", TS: t0.Add(time.Duration(i) * time.Millisecond)})
		if i%10 == 0 {
			evs = append(evs, event.Event{ID: "o" + strconv.Itoa(i), UserID: "other", Type: "add_to_cart", TS: t0})
		}
	}
	rounds := countPipelines(s)
	check := func(name string, r *Store, evs []event.Event, applied func(i int) bool, maxPipelines int64) {
		t.Helper()
		rounds.Store(0) // r shares s's client
		res, err := r.ApplyBatch(ctx, evs, spec)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for i, x := range res {
			if x.Err != nil || x.Applied != applied(i) {
				t.Fatalf("%s: event %d (%s): applied %v err %v, want applied %v", name, i, evs[i].ID, x.Applied, x.Err, applied(i))
			}
		}
		if n := rounds.Load(); n > maxPipelines {
			t.Errorf("%s: %d round trips, want at most %d", name, n, maxPipelines)
		}
	}
	if err := casScript.Load(ctx, s.c).Err(); err != nil {
		t.Fatal(err)
	}
	half := len(evs) / 2
	check("first half", s, evs[:half], func(int) bool { return true }, 2)
	// Cached users: the first duplicate breaks the chain, the rest are looked up, one more write.
	check("whole message, cached", s, evs, func(i int) bool { return i >= half }, 3)
	check("again, cached", s, evs, func(int) bool { return false }, 3)
	// Not cached: the ids are looked up with the profiles, one write.
	check("again, not cached", sibling(t, s, opts), evs, func(int) bool { return false }, 2)
	p, err := s.Get(ctx, "burst")
	if err != nil || p.Version != 50 {
		t.Fatalf("burst: %v, %v; want version 50", p, err)
	}
}

// countPipelines counts the pipelines (round trips) s sends from now on, other than the ones
// go-redis sends to set a new connection up.
func countPipelines(s *Store) *atomic.Int64 {
	n := &atomic.Int64{}
	s.c.AddHook(pipelineCounter{n})
	return n
}

type pipelineCounter struct{ n *atomic.Int64 }

func (pipelineCounter) DialHook(next goredis.DialHook) goredis.DialHook          { return next }
func (pipelineCounter) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook { return next }
func (h pipelineCounter) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		if name := cmds[0].Name(); name != "client" && name != "hello" {
			h.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

// The point of the cache: an event of a cached user is one round trip (the compare-and-set);
// without the cache, or for a user not cached, the profile is read first.
func TestCachedUserCostsOneRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name        string
		cache       int
		first, next int64
	}{{"Cached", 0, 2, 1}, {"Uncached", -1, 2, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t, store.Options{CacheProfiles: tc.cache})
			ctx := context.Background()
			if err := casScript.Load(ctx, s.c).Err(); err != nil {
				t.Fatal(err)
			}
			n := countPipelines(s)
			mustApply(t, s, "e1", "u", "page_view")
			if got := n.Swap(0); got != tc.first {
				t.Errorf("first event: %d round trips, want %d", got, tc.first)
			}
			mustApply(t, s, "e2", "u", "page_view")
			if got := n.Load(); got != tc.next {
				t.Errorf("second event: %d round trips, want %d", got, tc.next)
			}
		})
	}
}

// Get reads the stored profile, so it refreshes the cache: after another origin wrote the user,
// a Get spares the next apply its stale round. Delete drops the entry.
func TestGetRefreshesAndDeleteDropsTheCacheEntry(t *testing.T) {
	s := newTestStore(t, store.Options{})
	other := sibling(t, s, store.Options{})
	ctx := context.Background()
	if err := casScript.Load(ctx, s.c).Err(); err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, "a1", "u", "page_view")
	mustApply(t, other, "b1", "u", "add_to_cart")
	if p, err := s.Get(ctx, "u"); err != nil || p.Version != 2 {
		t.Fatalf("Get: %v, %v; want version 2", p, err)
	}
	n := countPipelines(s)
	if p := mustApply(t, s, "a2", "u", "page_view"); p.Version != 3 {
		t.Errorf("a2: version %d, want 3", p.Version)
	}
	if got := n.Load(); got != 1 {
		t.Errorf("a2 after Get: %d round trips, want 1 (the cache entry is current)", got)
	}
	if err := s.Delete(ctx, "u"); err != nil {
		t.Fatal(err)
	}
	if got := s.users.cachedLen(); got != 0 {
		t.Errorf("%d users cached after Delete, want 0", got)
	}
}

func TestCacheIsBounded(t *testing.T) {
	for _, tc := range []struct {
		max, want int
	}{{3, 3}, {-1, 0}} {
		us := newUsers(tc.max)
		for i := range 10 {
			chains := []*chain{{user: "u" + strconv.Itoa(i), base: &state{p: profile.New("x")}}}
			if err := us.begin(context.Background(), chains); err != nil {
				t.Fatal(err)
			}
			us.end(chains)
		}
		if got := us.cachedLen(); got != tc.want {
			t.Errorf("max %d: %d users cached after 10, want %d", tc.max, got, tc.want)
		}
	}
}

// A batch waits for another batch of this process that holds one of its users, and a cancelled
// context ends the wait.
func TestBatchesOfOneUserTakeTurns(t *testing.T) {
	us := newUsers(10)
	a := []*chain{{user: "u"}, {user: "v"}}
	if err := us.begin(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := us.begin(ctx, []*chain{{user: "v"}}); err == nil {
		t.Fatal("a second batch of user v began while the first held it")
	}
	if err := us.begin(context.Background(), []*chain{{user: "w"}}); err != nil {
		t.Fatalf("a batch of another user waited: %v", err)
	}
	began := make(chan error)
	go func() { began <- us.begin(context.Background(), []*chain{{user: "u"}}) }()
	select {
	case <-began:
		t.Fatal("began before the first batch ended")
	case <-time.After(20 * time.Millisecond):
	}
	us.end(a)
	if err := <-began; err != nil {
		t.Fatal(err)
	}
}

func TestFloatsRoundTripExactly(t *testing.T) {
	for _, f := range []float64{0, 1, -3, 12.5, 0.1, 0.1 + 0.2, 1e6, 1e15, 1e15 - 1, 1e21, -1e-7, 5e-324, 1.7976931348623157e308} {
		s := string(appendFloat(nil, f))
		got, err := strconv.ParseFloat(s, 64)
		if err != nil || got != f {
			t.Errorf("%v → %q → %v, %v", f, s, got, err)
		}
	}
	if s := string(appendFloat(nil, 1e6)); s != "1000000" {
		t.Errorf("1e6 → %q, want 1000000", s)
	}
}
