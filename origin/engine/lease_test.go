package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
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

// testLeaseTTL keeps takeovers short in tests; production uses DefaultLeaseTTL.
const testLeaseTTL = 2 * time.Second

// orderStore is the real memory store that records, per user, the ids of the events it applied
// (not the duplicates it recognised), in the order it applied them, whichever engine asked.
type orderStore struct {
	store.Store
	mu      sync.Mutex
	applied map[string][]string
}

func (s *orderStore) ApplyBatch(ctx context.Context, evs []event.Event, spec *profile.Spec) ([]store.Result, error) {
	s.mu.Lock() // one apply at a time, so the record is the real order
	defer s.mu.Unlock()
	res, err := s.Store.ApplyBatch(ctx, evs, spec)
	if err != nil {
		return res, err
	}
	for i, r := range res {
		if r.Err == nil && r.Applied {
			s.applied[evs[i].UserID] = append(s.applied[evs[i].UserID], evs[i].ID)
		}
	}
	return res, nil
}

// everyEventRules publishes a delta for every event: the cart count is an edge feature, so
// each delta records the order in which the engines handled the user's events.
type everyEventRules struct{ cartRules }

func (r *everyEventRules) EdgeFeatures() []profile.Feature { return []profile.Feature{cartFeature} }

// shared is what the origins of one test share, as real origins share Redis and NATS.
type shared struct {
	n     *testenv.NATS
	store *orderStore
	mem   members.Store
	sched schedule.Schedule
	rules Rules
}

func newShared(t *testing.T) *shared {
	t.Helper()
	n := testenv.StartNATS(t)
	if err := bus.EnsureStreams(context.Background(), n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return &shared{
		n:     n,
		store: &orderStore{Store: memory.New(store.Options{}), applied: map[string][]string{}},
		mem:   members.NewMemory(),
		sched: schedule.NewMemory(),
		rules: &everyEventRules{*newCartRules(t)},
	}
}

// origin is one engine with a NATS connection of its own, so that the test can cut it off as a
// crash would.
type origin struct {
	eng    *Engine
	reg    *prometheus.Registry
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan struct{}
}

func (s *shared) start(t *testing.T, id string) *origin {
	t.Helper()
	nc, err := nats.Connect(s.n.URL)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	eng, err := New(Config{
		JS: js, Topology: s.n.Topology, Store: s.store, Members: s.mem, Schedule: s.sched,
		Rules: func() Rules { return s.rules }, Registerer: reg, OriginID: id, LeaseTTL: testLeaseTTL,
		DuePoll: 10 * time.Millisecond, Batch: 16,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	o := &origin{eng: eng, reg: reg, nc: nc, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		_ = eng.Run(ctx)
	}()
	t.Cleanup(func() { o.stop(); nc.Close() })
	return o
}

// stop shuts the origin down cleanly: workers stopped, leases released.
func (o *origin) stop() {
	o.cancel()
	<-o.done
}

// crash cuts the origin off NATS before stopping it, so it releases nothing: its leases stay
// until they expire, as after kill -9.
func (o *origin) crash() {
	o.nc.Close()
	o.stop()
}

func (o *origin) changes(change string) float64 {
	return testutil.ToFloat64(o.eng.lm.changes.WithLabelValues(change))
}

// waitHeld waits until each origin holds want[i] partitions and together they hold every
// partition exactly once; it returns how long that took.
func waitHeld(t *testing.T, partitions int, within time.Duration, os []*origin, want ...int) time.Duration {
	t.Helper()
	t0 := time.Now()
	var last string
	for time.Since(t0) < within {
		var all []int
		ok := true
		last = ""
		for i, o := range os {
			h := o.eng.Held()
			all = append(all, h...)
			ok = ok && len(h) == want[i]
			last += fmt.Sprintf(" origin %d holds %v;", i, h)
		}
		slices.Sort(all)
		if ok && len(slices.Compact(all)) == partitions && len(all) == partitions {
			return time.Since(t0)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("after %s:%s want %v", within, last, want)
	return 0
}

// TestOriginsSplitThePartitionsAndTakeOverFromACrashedOne: one origin takes every partition
// before it says ready; a second one gets half within a few renewals; a crashed one's half goes
// back to the survivor within the lease TTL plus a renewal; a cleanly stopped one's at once.
func TestOriginsSplitThePartitionsAndTakeOverFromACrashedOne(t *testing.T) {
	s := newShared(t)
	P := s.n.Topology.Partitions
	a := s.start(t, "origin-a")
	waitReady(t, a.eng)
	if got := a.eng.Held(); len(got) != P {
		t.Fatalf("alone and ready, origin a holds %v, want all %d partitions", got, P)
	}

	b := s.start(t, "origin-b")
	took := waitHeld(t, P, 3*testLeaseTTL, []*origin{a, b}, P/2, P/2)
	t.Logf("second origin has its half after %s", took.Round(time.Millisecond))
	if got := a.changes("released"); got != float64(P/2) {
		t.Errorf("origin a released %v leases, want %d", got, P/2)
	}
	if got := testutil.ToFloat64(b.eng.lm.held); got != float64(P/2) {
		t.Errorf("origin b partitions held gauge = %v, want %d", got, P/2)
	}

	b.crash()
	took = waitHeld(t, P, testLeaseTTL+testLeaseTTL/3+time.Second, []*origin{a}, P)
	t.Logf("survivor holds every partition %s after the crash (TTL %s)", took.Round(time.Millisecond), testLeaseTTL)
	if took < testLeaseTTL/2 {
		t.Errorf("took over after %s, before the crashed origin's leases could have expired", took)
	}

	c := s.start(t, "origin-c")
	waitHeld(t, P, 3*testLeaseTTL, []*origin{a, c}, P/2, P/2)
	c.stop()
	took = waitHeld(t, P, testLeaseTTL, []*origin{a}, P)
	t.Logf("after a clean stop the survivor holds every partition after %s", took.Round(time.Millisecond))
	if c.changes("lost") != 0 || a.changes("lost") != 0 {
		t.Errorf("leases lost: c %v, a %v; want none (nobody missed a renewal)", c.changes("lost"), a.changes("lost"))
	}
}

func waitReady(t *testing.T, e *Engine) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for e.Ready(context.Background()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("engine not ready within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestUserOrderHoldsWhilePartitionsChangeHands sends a steady stream of events for many users
// while a second origin joins (partitions move to it), crashes (they come back after the TTL,
// with the events it had fetched and not acknowledged), and a third joins and leaves cleanly.
// Every event is applied exactly once and, per user, in the order it was sent; every user's
// deltas carry versions 1, 2, 3 … in stream order.
func TestUserOrderHoldsWhilePartitionsChangeHands(t *testing.T) {
	s := newShared(t)
	a := s.start(t, "origin-a")
	waitReady(t, a.eng)

	const users = 24
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pub := ingest.NewPublisher(s.n.JS, s.n.Topology, "origin", prometheus.NewRegistry())
	sent := make([]int, users)
	var sendErr error
	sending := make(chan struct{})
	go func() {
		defer close(sending)
		tick := time.NewTicker(4 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ctx.Err() == nil; i++ {
			var evs []event.Event
			for u := range users { // one event per user per tick
				evs = append(evs, event.Event{ID: fmt.Sprintf("u%02d-%05d", u, sent[u]), UserID: fmt.Sprintf("u%02d", u), Type: "add_to_cart", TS: time.Now()})
				sent[u]++
			}
			for _, err := range pub.Publish(context.Background(), evs, time.Now()) {
				if err != nil {
					sendErr = err
					return
				}
			}
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}()

	time.Sleep(300 * time.Millisecond)
	b := s.start(t, "origin-b")
	waitHeld(t, s.n.Topology.Partitions, 3*testLeaseTTL, []*origin{a, b}, 2, 2)
	time.Sleep(500 * time.Millisecond) // b is applying events
	b.crash()
	waitHeld(t, s.n.Topology.Partitions, testLeaseTTL+testLeaseTTL/3+time.Second, []*origin{a}, 4)
	c := s.start(t, "origin-c")
	waitHeld(t, s.n.Topology.Partitions, 3*testLeaseTTL, []*origin{a, c}, 2, 2)
	time.Sleep(300 * time.Millisecond)
	c.stop()
	time.Sleep(300 * time.Millisecond)
	cancel()
	<-sending
	if sendErr != nil {
		t.Fatalf("publish: %v", sendErr)
	}
	total := 0
	for _, n := range sent {
		total += n
	}

	// Wait until every event is applied, then check the order.
	deadline := time.Now().Add(15 * time.Second)
	for {
		s.store.mu.Lock()
		n := 0
		for _, ids := range s.store.applied {
			n += len(ids)
		}
		s.store.mu.Unlock()
		if n >= total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events applied after 15s", n, total)
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.store.mu.Lock()
	for u := range users {
		user := fmt.Sprintf("u%02d", u)
		ids := s.store.applied[user]
		if len(ids) != sent[u] {
			t.Errorf("user %s: %d events applied, %d sent", user, len(ids), sent[u])
		}
		for i, id := range ids {
			if want := fmt.Sprintf("%s-%05d", user, i); id != want {
				t.Errorf("user %s: event %s applied in place %d, want %s (out of order or twice)", user, id, i, want)
				break
			}
		}
	}
	s.store.mu.Unlock()
	checkVersions(t, s.n, users, sent)
	if !t.Failed() {
		t.Logf("%d events of %d users applied once each, in order, across two rebalances and a crash", total, users)
	}
}

// checkVersions reads DELTAS: per user, versions 1, 2, 3 … in stream order, the last one with
// the user's count of events.
func checkVersions(t *testing.T, n *testenv.NATS, users int, sent []int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The last deltas are published just before the last events are acknowledged: wait for them.
	want := make(map[string]int64, users)
	for u := range users {
		want[fmt.Sprintf("u%02d", u)] = int64(sent[u])
	}
	for {
		count, err := readDeltaVersions(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		ok := true
		for u, c := range want {
			ok = ok && count[u] == c
		}
		if ok {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("last delta counts %v, want %v", count, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readDeltaVersions reads the whole DELTAS stream, fails on a version that is not the user's
// previous one plus one, and returns each user's cart count in their last delta.
func readDeltaVersions(ctx context.Context, n *testenv.NATS) (map[string]int64, error) {
	cons, err := n.JS.OrderedConsumer(ctx, n.Topology.DeltasStream(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, err
	}
	last, count := map[string]uint64{}, map[string]int64{}
	for seen := uint64(0); seen < info.NumPending; {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, err
		}
		for m := range batch.Messages() {
			seen++
			ds, err := decodeDeltas(m.Data())
			if err != nil {
				return nil, fmt.Errorf("delta at %d: %w", seen, err)
			}
			for _, d := range ds {
				if d.Version != last[d.UserID]+1 {
					return nil, fmt.Errorf("user %s: delta version %d after %d: out of order, repeated or skipped", d.UserID, d.Version, last[d.UserID])
				}
				last[d.UserID] = d.Version
				for _, f := range d.Features {
					if f.Key == delta.FeatureKey(cartFeature) {
						count[d.UserID] = f.Value.Int
					}
				}
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return nil, err
		}
	}
	return count, nil
}

// decodeDeltas reads a DELTAS message: one delta, or a JSON array of them.
func decodeDeltas(b []byte) ([]delta.Delta, error) {
	if len(b) > 0 && b[0] == '[' {
		var ds []delta.Delta
		err := json.Unmarshal(b, &ds)
		return ds, err
	}
	d, err := delta.Decode(b)
	if err != nil {
		return nil, err
	}
	return []delta.Delta{*d}, nil
}

// TestReevaluateAndEraseReachTheHolder: an origin that holds none of the partitions re-evaluates
// and erases users through the origin that holds them.
func TestReevaluateAndEraseReachTheHolder(t *testing.T) {
	s := newShared(t)
	a := s.start(t, "origin-a")
	waitReady(t, a.eng)
	pub := ingest.NewPublisher(s.n.JS, s.n.Topology, "origin", prometheus.NewRegistry())
	for i, err := range pub.Publish(context.Background(), []event.Event{{ID: "e1", UserID: "zoe", Type: "add_to_cart", TS: time.Now()}}, time.Now()) {
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	// A second engine that never runs holds no partition: everything it is asked goes to a.
	nc, err := nats.Connect(s.n.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	other, err := New(Config{JS: js, Topology: s.n.Topology, Store: s.store, Members: s.mem, Schedule: s.sched,
		Rules: func() Rules { return s.rules }, OriginID: "origin-x", LeaseTTL: testLeaseTTL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for { // wait for the event's delta (version 1)
		if r, err := s.mem.Get(ctx, "zoe"); err == nil && r.Version == 1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("event not applied")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := other.Reevaluate(ctx, "zoe", delta.CauseRuleset); err != nil {
		t.Fatalf("re-evaluate through the holder: %v", err)
	}
	if err := other.Erase(ctx, "zoe"); err != nil {
		t.Fatalf("erase through the holder: %v", err)
	}
	if _, err := s.store.Get(ctx, "zoe"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("profile after erase through the holder: %v", err)
	}
	r, err := s.mem.Get(ctx, "zoe")
	if err != nil || len(r.Members) != 0 || r.Version < 2 {
		t.Fatalf("membership after erase: %+v, %v", r, err)
	}

	// With no holder at all, the request fails after two TTLs instead of hanging.
	a.stop()
	t0 := time.Now()
	err = other.Reevaluate(ctx, "zoe", delta.CauseRuleset)
	if !errors.Is(err, ErrNoHolder) {
		t.Fatalf("re-evaluate with no holder: %v, want ErrNoHolder", err)
	}
	if took := time.Since(t0); took > 2*testLeaseTTL+time.Second {
		t.Fatalf("gave up after %s", took)
	}
}

// TestOriginID: the default id is valid and differs per call; configured ids are checked.
func TestOriginID(t *testing.T) {
	a, b := DefaultOriginID(), DefaultOriginID()
	if err := CheckOriginID(a); err != nil || a == b {
		t.Fatalf("default ids %q %q: %v", a, b, err)
	}
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"origin-1", true},
		{"pod_7-abc", true},
		{"", false},
		{"has.dot", false},
		{"has space", false},
		{strings.Repeat("x", 65), false},
		{strconv.Itoa(42), true},
	} {
		if err := CheckOriginID(tc.id); (err == nil) != tc.ok {
			t.Errorf("CheckOriginID(%q) = %v, want ok %v", tc.id, err, tc.ok)
		}
	}
}

// TestTaskRequestsAreChecked: a task another origin sends is refused with a clear error unless
// it names a user of this partition and a known cause.
func TestTaskRequestsAreChecked(t *testing.T) {
	const partitions = 4
	p := event.Partition("zoe", partitions)
	for _, tc := range []struct {
		name, body, err string
	}{
		{"re-evaluation", `{"user":"zoe","cause":"ruleset"}`, ""},
		{"erasure", `{"user":"zoe","cause":"erase"}`, ""},
		{"not JSON", `zoe`, "decode task"},
		{"no user", `{"cause":"erase"}`, "user id must be"},
		{"user too long", `{"user":"` + strings.Repeat("z", 129) + `","cause":"erase"}`, "user id must be"},
		{"unknown cause", `{"user":"zoe","cause":"event"}`, "unknown cause"},
		{"other partition", `{"user":"zoe","cause":"erase"}`, "not in partition"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at := p
			if tc.name == "other partition" {
				at = (p + 1) % partitions
			}
			_, err := decodeTaskRequest([]byte(tc.body), at, partitions)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("decodeTaskRequest(%s) = %v, want %q", tc.body, err, tc.err)
			}
		})
	}
}

// FuzzTaskRequest: whatever arrives on the task subject, decoding never panics, and what it
// accepts is a valid task for the partition.
func FuzzTaskRequest(f *testing.F) {
	f.Add([]byte(`{"user":"zoe","cause":"ruleset"}`), 1)
	f.Add([]byte(`{"user":"","cause":"erase"}`), 0)
	f.Add([]byte(`{"user":"a","cause":"expiry","x":[1,2]}`), 3)
	f.Add([]byte(`null`), 2)
	f.Fuzz(func(t *testing.T, b []byte, p int) {
		req, err := decodeTaskRequest(b, p, 4)
		if err != nil {
			return
		}
		if req.User == "" || len(req.User) > event.DefaultMaxIDLen || event.Partition(req.User, 4) != p {
			t.Fatalf("accepted %q for partition %d: %+v", b, p, req)
		}
	})
}
