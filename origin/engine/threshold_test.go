package engine

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
	"github.com/segedge/segedge/origin/trigger"
)

// The origin passes its trigger.Firer as Config.Triggers; it must be a ThresholdSink too.
var _ ThresholdSink = (*trigger.Firer)(nil)

const thresholdRules = `
segments:
  - name: cart_abandoner
    rule: count("add_to_cart", "30m") > 0
scores:
  engagement: {half_life: 7d, weights: {page_view: 1, add_to_cart: 5}}
triggers:
  - name: cart
    on: enter("cart_abandoner")
    webhook: https://hooks.example.com/cart
  - name: engaged
    on: score("engagement") > 10.0
    webhook: https://hooks.example.com/engaged
`

// TestThresholdTriggerFiresOncePerCrossing runs the engine with the real Firer: a threshold
// trigger fires when its condition turns true after an event, not again while it stays true,
// and again after it has turned false (here by decay, noticed at a due re-evaluation) and true.
func TestThresholdTriggerFiresOncePerCrossing(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	firer, err := trigger.NewFirer(ctx, trigger.FirerConfig{JS: n.JS, Topology: n.Topology})
	if err != nil {
		t.Fatal(err)
	}
	if err := firer.SetRulesFile([]byte(thresholdRules)); err != nil {
		t.Fatal(err)
	}
	clk := &clock{now: time.Now()}
	rules := newCartRules(t)
	mem := members.NewMemory()
	eng, err := New(Config{
		JS: n.JS, Topology: n.Topology, Store: memory.New(store.Options{Now: clk.Now}), Members: mem,
		Schedule: schedule.NewMemory(), Rules: func() Rules { return rules }, Now: clk.Now,
		DuePoll: 10 * time.Millisecond, Triggers: firer,
	})
	if err != nil {
		t.Fatal(err)
	}
	go eng.Run(ctx)
	pub := ingest.NewPublisher(n.JS, n.Topology, "origin", prometheus.NewRegistry())
	seq := 0
	send := func(types ...string) {
		t.Helper()
		for _, typ := range types {
			seq++
			evs := []event.Event{{ID: fmt.Sprint("e", seq), UserID: "ada", Type: typ, TS: clk.Now()}}
			for _, err := range pub.Publish(ctx, evs, clk.Now()) {
				if err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	waitVersion := func(v uint64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			r, _ := mem.Get(ctx, "ada")
			if r.Version >= v {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("membership version %d, want %d", r.Version, v)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	fired := func() string {
		t.Helper()
		time.Sleep(100 * time.Millisecond) // the firings of the last evaluation are stored before its ack
		s, err := n.JS.Stream(ctx, strings.ToUpper(n.Topology.Prefix)+"TRIGGERS")
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, m.Header.Get("Nats-Msg-Id"))
		}
		return strings.Join(ids, " ")
	}

	send("page_view", "page_view", "page_view") // engagement 3, no cart: no delta at all
	send("add_to_cart")                         // 8: enters cart_abandoner (v1)
	waitVersion(1)
	if got := fired(); got != "cart/ada/1" {
		t.Fatalf("after engagement 8: fired %q", got)
	}
	send("add_to_cart") // 13: crosses 10 → v2 records the crossing
	waitVersion(2)
	send("page_view", "add_to_cart") // 14, 19: still above, nothing
	time.Sleep(200 * time.Millisecond)
	if got := fired(); got != "cart/ada/1 engaged/ada/2" {
		t.Fatalf("after staying above: fired %q", got)
	}
	if r, _ := mem.Get(ctx, "ada"); r.Version != 2 || len(r.Thresholds) != 1 {
		t.Fatalf("record = %+v, want version 2 with engaged held", r)
	}
	// Five weeks later: the cart window expired (exit delta v3) and engagement decayed to ~0.6.
	clk.Add(5 * 7 * 24 * time.Hour)
	waitVersion(3)
	if r, _ := mem.Get(ctx, "ada"); len(r.Thresholds) != 0 {
		t.Fatalf("after decay, record = %+v, want no threshold held", r)
	}
	send("add_to_cart", "add_to_cart") // 5.6 (enter cart again, v4), 10.6 → crosses again (v5)
	waitVersion(5)
	if got := fired(); got != "cart/ada/1 engaged/ada/2 cart/ada/4 engaged/ada/5" {
		t.Fatalf("after the second crossing: fired %q", got)
	}
}

// TestNewThresholdDoesNotFireForUsersAlreadyAbove: a threshold trigger added by a new ruleset is
// recorded by the background re-evaluation without firing; the user fires only after dropping
// below and crossing again after an event.
func TestNewThresholdDoesNotFireForUsersAlreadyAbove(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	firer, err := trigger.NewFirer(ctx, trigger.FirerConfig{JS: n.JS, Topology: n.Topology})
	if err != nil {
		t.Fatal(err)
	}
	// First without the threshold trigger (but with the score, so profiles keep it).
	noThreshold := strings.Replace(thresholdRules, "  - name: engaged\n    on: score(\"engagement\") > 10.0\n    webhook: https://hooks.example.com/engaged\n", "", 1)
	if err := firer.SetRulesFile([]byte(noThreshold)); err != nil {
		t.Fatal(err)
	}
	spec, _ := compileSpec(t, thresholdRules)
	rules := newCartRules(t)
	rules.spec = spec // profiles maintain the score from the start
	mem := members.NewMemory()
	clk := &clock{now: time.Now()}
	eng, err := New(Config{
		JS: n.JS, Topology: n.Topology, Store: memory.New(store.Options{Now: clk.Now}), Members: mem,
		Schedule: schedule.NewMemory(), Rules: func() Rules { return rules }, Now: clk.Now,
		DuePoll: 10 * time.Millisecond, Triggers: firer,
	})
	if err != nil {
		t.Fatal(err)
	}
	go eng.Run(ctx)
	pub := ingest.NewPublisher(n.JS, n.Topology, "origin", prometheus.NewRegistry())
	for i := range 3 { // engagement 15
		for _, err := range pub.Publish(ctx, []event.Event{{ID: fmt.Sprint("c", i), UserID: "bo", Type: "add_to_cart", TS: clk.Now()}}, clk.Now()) {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for r, _ := mem.Get(ctx, "bo"); r.Version < 1; r, _ = mem.Get(ctx, "bo") {
		if time.Now().After(deadline) {
			t.Fatal("no membership")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if err := firer.SetRulesFile([]byte(thresholdRules)); err != nil {
		t.Fatal(err)
	}
	if err := eng.Reevaluate(ctx, "bo", delta.CauseRuleset); err != nil {
		t.Fatal(err)
	}
	if r, _ := mem.Get(ctx, "bo"); !slices.Equal(r.Thresholds, []string{"engaged"}) {
		t.Fatalf("after the rescan, record = %+v, want engaged held", r)
	}
	for _, err := range pub.Publish(ctx, []event.Event{{ID: "c9", UserID: "bo", Type: "add_to_cart", TS: clk.Now()}}, clk.Now()) {
		if err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	s, err := n.JS.Stream(ctx, strings.ToUpper(n.Topology.Prefix)+"TRIGGERS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if id := m.Header.Get("Nats-Msg-Id"); strings.HasPrefix(id, "engaged/") {
			t.Fatalf("threshold fired for a user already above it: %s", id)
		}
	}
}

// compileSpec returns the profile spec of a rules file's segments and threshold conditions.
func compileSpec(t *testing.T, src string) (*profile.Spec, *trigger.Firer) {
	t.Helper()
	n := testenv.StartNATS(t)
	f, err := trigger.NewFirer(context.Background(), trigger.FirerConfig{JS: n.JS, Topology: n.Topology})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetRulesFile([]byte(src)); err != nil {
		t.Fatal(err)
	}
	return f.ThresholdSpec(), f
}
