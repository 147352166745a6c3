package engine

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ingest"
	"github.com/segedge/segedge/core/profile"
)

func TestNewRulesetRescanFillsSegmentsWithoutEvents(t *testing.T) {
	r := newRig(t)
	users := []string{"u1", "u2", "u3", "u4", "u5"}
	for _, u := range users {
		r.send(t, event.Event{ID: "e-" + u, UserID: u, Type: "add_to_cart", TS: r.clk.Now()})
	}
	for range users {
		r.next(t)
	}
	next := newCartRules(t)
	next.name, next.version = "cart_fan", 8
	r.rules.Store(next)
	rs := NewRescanner(r.eng, 1000, prometheus.NewRegistry())
	rs.Start(8)
	defer rs.Stop()
	seen := map[string]bool{}
	for range users {
		d := r.next(t)
		if d.Cause != delta.CauseRuleset || d.Ruleset != 8 || !slices.Equal(d.Entered, []string{"cart_fan"}) || !slices.Equal(d.Exited, []string{"cart_abandoner"}) {
			t.Fatalf("rescan delta = %+v", d)
		}
		seen[d.UserID] = true
	}
	if len(seen) != len(users) {
		t.Fatalf("rescanned %v, want every user", seen)
	}
	deadline := time.Now().Add(5 * time.Second)
	for rs.Status().Running && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := rs.Status(); st.Running || st.Done != int64(len(users)) || st.Failed != 0 || st.PartitionsDone != r.n.Topology.Partitions {
		t.Fatalf("status = %+v", st)
	}
}

// countingRules is cartRules counting its evaluations per user: how often each profile was
// re-evaluated under one ruleset version, whichever origin did it.
type countingRules struct {
	cartRules
	mu    sync.Mutex
	evals map[string]int
}

func (r *countingRules) Segments(ctx context.Context, p *profile.Profile, now time.Time, dst []string) ([]string, error) {
	r.mu.Lock()
	r.evals[p.UserID]++
	r.mu.Unlock()
	return r.cartRules.Segments(ctx, p, now, dst)
}

func (r *countingRules) evaluations() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.evals)
}

// rescanRig is origins sharing NATS and one profile store (as real origins share Redis), with
// the ruleset they evaluate switched by the test, as the ruleset manager switches it.
type rescanRig struct {
	*shared
	active atomic.Pointer[countingRules]
	users  []string
}

func newRescanRig(t *testing.T) *rescanRig {
	t.Helper()
	r := &rescanRig{shared: newShared(t)}
	r.load(t, 7)
	for u := range 40 {
		r.users = append(r.users, fmt.Sprintf("r%02d", u))
	}
	return r
}

// load makes a ruleset of version v active and returns it.
func (r *rescanRig) load(t *testing.T, v uint64) *countingRules {
	rules := &countingRules{cartRules: *newCartRules(t), evals: map[string]int{}}
	rules.version = v
	r.active.Store(rules)
	return rules
}

// start runs an origin evaluating the rig's active ruleset.
func (r *rescanRig) start(t *testing.T, id string) *origin {
	t.Helper()
	nc, err := nats.Connect(r.n.URL)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	eng, err := New(Config{
		JS: js, Topology: r.n.Topology, Store: r.store, Members: r.mem, Schedule: r.sched,
		Rules: func() Rules { return r.active.Load() }, Registerer: reg, OriginID: id, LeaseTTL: testLeaseTTL,
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

// seed stores a profile for every user (one event each) and waits until all are evaluated.
func (r *rescanRig) seed(t *testing.T) {
	t.Helper()
	rules := r.active.Load()
	pub := ingest.NewPublisher(r.n.JS, r.n.Topology, "origin", prometheus.NewRegistry())
	var evs []event.Event
	for _, u := range r.users {
		evs = append(evs, event.Event{ID: "e-" + u, UserID: u, Type: "add_to_cart", TS: time.Now()})
	}
	for i, err := range pub.Publish(context.Background(), evs, time.Now()) {
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(rules.evaluations()) < len(r.users) {
		if time.Now().After(deadline) {
			t.Fatalf("evaluated %d of %d users", len(rules.evaluations()), len(r.users))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// twoOrigins starts origins a and b, waits until they hold half the partitions each, and
// stores a profile for every user.
func (r *rescanRig) twoOrigins(t *testing.T) (a, b *origin) {
	t.Helper()
	P := r.n.Topology.Partitions
	a = r.start(t, "origin-a")
	waitReady(t, a.eng)
	b = r.start(t, "origin-b")
	waitHeld(t, P, 3*testLeaseTTL, []*origin{a, b}, P/2, P/2)
	r.seed(t)
	return a, b
}

// rescanners starts a new Rescanner (as a starting origin does) for version on each origin.
func rescanners(t *testing.T, version uint64, os ...*origin) []*Rescanner {
	t.Helper()
	var rs []*Rescanner
	for _, o := range os {
		r := NewRescanner(o.eng, 1000, prometheus.NewRegistry())
		r.poll = 50 * time.Millisecond
		r.Start(version)
		t.Cleanup(r.Stop)
		rs = append(rs, r)
	}
	return rs
}

// waitRescanned waits until the rescanners together report every partition done, and a few
// polls more (so that a re-evaluation that should not happen has had its chance). It returns
// their re-evaluations.
func waitRescanned(t *testing.T, partitions int, rs ...*Rescanner) int64 {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		done, running := 0, false
		for _, r := range rs {
			st := r.Status()
			done += st.PartitionsDone
			running = running || st.Running
		}
		if done == partitions && !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d partitions rescanned, running %v", done, partitions, running)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	var n int64
	for _, r := range rs {
		st := r.Status()
		if st.Failed != 0 || st.Error != "" {
			t.Fatalf("rescan status %+v", st)
		}
		n += st.Done
	}
	return n
}

// evaluatedEach fails unless rules evaluated every user want times (0: none).
func (r *rescanRig) evaluatedEach(t *testing.T, rules *countingRules, want int) {
	t.Helper()
	got := rules.evaluations()
	for _, u := range r.users {
		if got[u] != want {
			t.Fatalf("ruleset %d evaluated user %s %d times, want %d (all: %v)", rules.version, u, got[u], want, got)
		}
	}
}

// Two origins sharing the partitions re-evaluate each profile once between them after a
// ruleset change: each only the users of the partitions it holds.
func TestTwoOriginsRescanEachProfileOnce(t *testing.T) {
	r := newRescanRig(t)
	P := r.n.Topology.Partitions
	a, b := r.twoOrigins(t)

	v8 := r.load(t, 8)
	rs := rescanners(t, 8, a, b)
	n := waitRescanned(t, P, rs...)
	r.evaluatedEach(t, v8, 1)
	if n != int64(len(r.users)) {
		t.Fatalf("%d re-evaluations by the two origins, want %d", n, len(r.users))
	}
	t.Logf("2 origins, %d users: %d re-evaluations (a %d, b %d)", len(r.users), n, rs[0].Status().Done, rs[1].Status().Done)
}

// The per-partition markers outlive the Rescanner: a restart with the same ruleset rescans
// nothing; a newer ruleset, or going back to an older one, rescans every profile once.
func TestRescanMarkersSayWhatIsLeftAfterARestart(t *testing.T) {
	r := newRescanRig(t)
	P := r.n.Topology.Partitions
	a, b := r.twoOrigins(t)

	for _, step := range []struct {
		name    string
		version uint64
		want    int // re-evaluations per user
	}{
		{"a new ruleset rescans every profile", 8, 1},
		{"a restart with the same ruleset rescans nothing", 8, 0},
		{"a newer ruleset rescans every profile again", 9, 1},
		{"going back to an older version rescans every profile", 8, 1},
	} {
		rules := r.load(t, step.version)
		rs := rescanners(t, step.version, a, b)
		n := waitRescanned(t, P, rs...)
		for _, rs := range rs {
			rs.Stop()
		}
		if n != int64(step.want*len(r.users)) {
			t.Fatalf("%s: %d re-evaluations, want %d", step.name, n, step.want*len(r.users))
		}
		r.evaluatedEach(t, rules, step.want)
	}
}

// A partition taken from an origin that never completed its rescan (here: it ran none) is
// rescanned by its new holder, which keeps looking for partitions while the ruleset is active;
// the partitions it had rescanned already are not rescanned again.
func TestPartitionTakenLaterIsRescanned(t *testing.T) {
	r := newRescanRig(t)
	P := r.n.Topology.Partitions
	a, b := r.twoOrigins(t)
	var ofB []string // the users of b's partitions
	for _, u := range r.users {
		if slices.Contains(b.eng.Held(), event.Partition(u, P)) {
			ofB = append(ofB, u)
		}
	}
	if len(ofB) == 0 || len(ofB) == len(r.users) {
		t.Fatalf("origin b's partitions hold %d of %d users; want some", len(ofB), len(r.users))
	}

	v8 := r.load(t, 8)
	rs := rescanners(t, 8, a)[0] // b runs no rescan: it stops before it would have finished
	deadline := time.Now().Add(10 * time.Second)
	for st := rs.Status(); st.PartitionsDone != P/2 || st.Running; st = rs.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("origin a did not rescan its partitions: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := rs.Status().Done; got != int64(len(r.users)-len(ofB)) {
		t.Fatalf("origin a re-evaluated %d users, want the %d of its partitions", got, len(r.users)-len(ofB))
	}

	b.stop()
	waitHeld(t, P, 3*testLeaseTTL, []*origin{a}, P)
	if n := waitRescanned(t, P, rs); n != int64(len(r.users)) {
		t.Fatalf("origin a re-evaluated %d users in all, want %d", n, len(r.users))
	}
	r.evaluatedEach(t, v8, 1)
}

// A newer ruleset while a pass is re-evaluating (slowly: 5 profiles a second) cancels it and
// starts over at once; before, Start waited for the pass with the lock the pass needed to
// report progress, and the ruleset swap hung.
func TestNewerRulesetCancelsARunningPass(t *testing.T) {
	r := newRescanRig(t)
	a := r.start(t, "origin-a")
	waitReady(t, a.eng)
	r.seed(t)
	r.load(t, 8)
	rs := NewRescanner(a.eng, 5, prometheus.NewRegistry())
	rs.Start(8)
	defer rs.Stop()
	for rs.Status().Done == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	started := make(chan struct{})
	go func() {
		r.load(t, 9)
		rs.Start(9)
		close(started)
	}()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("Start of a newer ruleset still waits for the running pass")
	}
	if st := rs.Status(); st.Ruleset != 9 || !st.Running {
		t.Fatalf("status after the newer ruleset = %+v", st)
	}
}

// A marker that cannot be read counts as not done: its partition is rescanned (and the marker
// written again), the error counted; the others are not rescanned.
func TestUnreadableMarkerMeansRescan(t *testing.T) {
	r := newRescanRig(t)
	P := r.n.Topology.Partitions
	a := r.start(t, "origin-a")
	waitReady(t, a.eng)
	r.seed(t)
	r.load(t, 8)
	waitRescanned(t, P, rescanners(t, 8, a)...)

	kv, err := r.n.JS.KeyValue(context.Background(), r.n.Topology.RescanBucket())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(context.Background(), rescanKey(0), []byte("not a version")); err != nil {
		t.Fatal(err)
	}
	inP0 := 0
	for _, u := range r.users {
		if event.Partition(u, P) == 0 {
			inP0++
		}
	}
	rs := rescanners(t, 8, a)[0]
	if n := waitRescanned(t, P, rs); n != int64(inP0) {
		t.Fatalf("%d re-evaluations, want the %d users of partition 0", n, inP0)
	}
	if got := testutil.ToFloat64(rs.markerErrors); got != 1 {
		t.Fatalf("marker errors = %v, want 1", got)
	}
	if en, err := kv.Get(context.Background(), rescanKey(0)); err != nil || string(en.Value()) != "8" {
		t.Fatalf("marker of partition 0 after its rescan: %v %v", en, err)
	}
}

// Progress reads the markers, so every origin answers the same about every partition: done
// when its marker names the active version, whichever origin rescanned it.
func TestRescanProgressIsTheSameFromEveryOrigin(t *testing.T) {
	r := newRescanRig(t)
	P := r.n.Topology.Partitions
	a, b := r.twoOrigins(t)

	r.load(t, 8)
	rs := rescanners(t, 8, a, b)
	waitRescanned(t, P, rs...)
	held := 0
	for i, rsc := range rs {
		p, err := rsc.Progress(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if p.Ruleset != 8 || !p.Complete || p.PartitionsDone != P || len(p.Partitions) != P {
			t.Fatalf("origin %d: progress = %+v, want ruleset 8 complete on %d partitions", i, p, P)
		}
		for _, pr := range p.Partitions {
			if pr.Rescanned != 8 || !pr.Done {
				t.Fatalf("origin %d: partition %+v, want rescanned under 8", i, pr)
			}
			if pr.Held {
				held++
			}
		}
	}
	if held != P {
		t.Fatalf("the two origins say they hold %d partitions, want %d", held, P)
	}

	// Version 9 on origin a only, slowly: b's partitions keep the marker of 8, and nobody
	// says the rescan is complete.
	r.load(t, 9)
	slow := NewRescanner(a.eng, 1, prometheus.NewRegistry())
	slow.Start(9)
	t.Cleanup(slow.Stop)
	p, err := rs[1].Progress(context.Background()) // b's view: its own rescanner still says 8
	if err != nil {
		t.Fatal(err)
	}
	if p.Ruleset != 8 {
		t.Fatalf("b's progress is for ruleset %d, want 8 (b has not loaded 9)", p.Ruleset)
	}
	p, err = slow.Progress(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stale := 0
	for _, pr := range p.Partitions {
		if pr.Done != (pr.Rescanned == 9) {
			t.Fatalf("partition %+v: done must mean rescanned under 9", pr)
		}
		if pr.Rescanned == 8 {
			stale++
		}
	}
	if p.Ruleset != 9 || p.Complete || stale < P/2 {
		t.Fatalf("progress under 9 = %+v, want incomplete with at least b's %d partitions still at 8", p, P/2)
	}
}
