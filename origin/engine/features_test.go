package engine

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/origin/members"
)

// planRules reads two features at the edge, the trait "plan" and the add_to_cart count of the
// last 30 minutes, and puts a user with a cart in "carted".
type planRules struct{ spec *profile.Spec }

var planFeature = profile.Feature{Kind: profile.FeatureTrait, Name: "plan"}

func newPlanRules(t *testing.T) *planRules {
	spec, err := profile.NewSpec([]profile.Feature{cartFeature, planFeature}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &planRules{spec: spec}
}

func (r *planRules) Version() uint64     { return 1 }
func (r *planRules) Spec() *profile.Spec { return r.spec }
func (r *planRules) EdgeFeatures() []profile.Feature {
	return []profile.Feature{planFeature, cartFeature}
}
func (r *planRules) Segments(_ context.Context, p *profile.Profile, now time.Time, dst []string) ([]string, error) {
	if v, _ := p.Value(cartFeature, now); v.Int > 0 {
		dst = append(dst, "carted")
	}
	return dst, nil
}

// features returns d's features by key.
func featureMap(d *delta.Delta) map[string]profile.Value {
	m := map[string]profile.Value{}
	for _, f := range d.Features {
		m[f.Key] = f.Value
	}
	return m
}

func sameFeatures(got, want map[string]profile.Value) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

const (
	planKey = "trait:plan"
	cartKey = "count:add_to_cart:30m0s"
)

// A user's first delta carries every edge feature; the next ones only what changed since the
// delta before, and an event that changes no edge feature and no membership publishes nothing.
func TestDeltasCarryOnlyTheEdgeFeaturesThatChanged(t *testing.T) {
	rules := newPlanRules(t)
	r := newRigWithConfig(t, func(c *Config) { c.Rules = func() Rules { return rules } })
	at := func() time.Time { return r.clk.Now() }

	steps := []struct {
		name  string
		ev    *event.Event // nil: the clock moves 32 minutes instead
		base  uint64
		feats map[string]profile.Value
		gone  []string
		none  bool // no delta
	}{
		{name: "first delta: whole", ev: &event.Event{Type: "identify", Props: map[string]any{"plan": "pro"}},
			feats: map[string]profile.Value{planKey: profile.StringValue("pro"), cartKey: profile.IntValue(0)}},
		{name: "the count changed, the plan did not", ev: &event.Event{Type: "add_to_cart"},
			base: 1, feats: map[string]profile.Value{cartKey: profile.IntValue(1)}},
		{name: "nothing the edge reads changed", ev: &event.Event{Type: "page_view"}, none: true},
		{name: "the same plan again", ev: &event.Event{Type: "identify", Props: map[string]any{"plan": "pro"}}, none: true},
		{name: "the plan removed", ev: &event.Event{Type: "identify", Props: map[string]any{"plan": nil}},
			base: 2, feats: map[string]profile.Value{}, gone: []string{planKey}},
		{name: "a new plan", ev: &event.Event{Type: "identify", Props: map[string]any{"plan": "team"}},
			base: 3, feats: map[string]profile.Value{planKey: profile.StringValue("team")}},
		{name: "the window passes: the count changes with the membership",
			base: 4, feats: map[string]profile.Value{cartKey: profile.IntValue(0)}},
	}
	version := uint64(0)
	for i, st := range steps {
		if st.ev == nil {
			r.clk.Add(32 * time.Minute)
		} else {
			ev := *st.ev
			ev.ID, ev.UserID, ev.TS = "e"+string(rune('a'+i)), "alice", at()
			r.send(t, ev)
		}
		if st.none {
			r.none(t, 300*time.Millisecond)
			continue
		}
		d := r.next(t)
		version++
		if d.Version != version || d.Base != st.base || !sameFeatures(featureMap(d), st.feats) || !slices.Equal(d.Gone, st.gone) {
			t.Fatalf("%s: delta version %d base %d features %v gone %v; want version %d base %d features %v gone %v",
				st.name, d.Version, d.Base, featureMap(d), d.Gone, version, st.base, st.feats, st.gone)
		}
		r.clk.Add(time.Second) // traits are last-writer-wins by ts: keep them apart
	}
}

// A delta left out because DELTAS already holds its version (an origin redoing work another
// attempt published) may carry other values than the edges hold: the user's next delta carries
// every feature.
func TestTheDeltaAfterOneLeftOutCarriesEveryFeature(t *testing.T) {
	rules := newPlanRules(t)
	r := newRigWithConfig(t, func(c *Config) { c.Rules = func() Rules { return rules } })
	r.send(t, event.Event{ID: "e1", UserID: "alice", Type: "identify", Props: map[string]any{"plan": "pro"}, TS: r.clk.Now()})
	if d := r.next(t); d.Version != 1 || d.Base != 0 {
		t.Fatalf("first delta = %+v", d)
	}
	waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(10*time.Second))

	// The worker learns that version 2 is already on DELTAS (as it would reading back another
	// attempt's flush): its own version 2 is left out.
	p := event.Partition("alice", r.n.Topology.Partitions)
	r.eng.tail.learn(p, map[string]uint64{"alice": 2})
	r.send(t, event.Event{ID: "e2", UserID: "alice", Type: "add_to_cart", TS: r.clk.Now()})
	r.none(t, 300*time.Millisecond)

	r.send(t, event.Event{ID: "e3", UserID: "alice", Type: "add_to_cart", TS: r.clk.Now()})
	d := r.next(t)
	want := map[string]profile.Value{planKey: profile.StringValue("pro"), cartKey: profile.IntValue(2)}
	if d.Version != 3 || d.Base != 0 || !sameFeatures(featureMap(d), want) {
		t.Fatalf("delta after one left out: version %d base %d features %v; want version 3, whole, %v", d.Version, d.Base, featureMap(d), want)
	}
}

// scoreRules reads the cart count and a decayed score at the edge.
type scoreRules struct{ spec *profile.Spec }

var scoreFeature = profile.Feature{Kind: profile.FeatureScore, Name: "engagement"}

func (r *scoreRules) Version() uint64     { return 1 }
func (r *scoreRules) Spec() *profile.Spec { return r.spec }
func (r *scoreRules) EdgeFeatures() []profile.Feature {
	return []profile.Feature{cartFeature, scoreFeature}
}
func (r *scoreRules) Segments(_ context.Context, p *profile.Profile, now time.Time, dst []string) ([]string, error) {
	if v, _ := p.Value(cartFeature, now); v.Int > 0 {
		dst = append(dst, "carted")
	}
	return dst, nil
}

// A decayed score changes with time alone. An event publishes its new value; a re-evaluation
// without an event (a rescan, an expiry) publishes nothing for it alone, and carries it along when
// something else changed.
func TestAScoreThatOnlyDecayedIsPublishedWithAnEventOrAnotherChangeOnly(t *testing.T) {
	spec, err := profile.NewSpec([]profile.Feature{cartFeature, scoreFeature},
		map[string]profile.ScoreSpec{"engagement": {HalfLife: time.Hour, Weights: map[string]float64{"add_to_cart": 10}}})
	if err != nil {
		t.Fatal(err)
	}
	rules := &scoreRules{spec: spec}
	r := newRigWithConfig(t, func(c *Config) { c.Rules = func() Rules { return rules } })
	r.send(t, event.Event{ID: "e1", UserID: "alice", Type: "add_to_cart", TS: r.clk.Now()})
	if d := r.next(t); d.Version != 1 || d.Base != 0 || len(d.Features) != 2 {
		t.Fatalf("first delta = %+v, want whole with 2 features", d)
	}
	waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(10*time.Second))

	r.clk.Add(time.Minute)
	r.send(t, event.Event{ID: "e2", UserID: "alice", Type: "page_view", TS: r.clk.Now()})
	if d := r.next(t); d.Version != 2 || d.Base != 1 || len(d.Features) != 1 || d.Features[0].Key != "score:engagement" {
		t.Fatalf("after an event that only let the score decay: %+v, want the score alone", d)
	}
	waitNothingPending(context.Background(), t, r.n.JS, r.n.Topology.EventsStream(), time.Now().Add(10*time.Second))

	r.clk.Add(5 * time.Minute)
	if err := r.eng.Reevaluate(context.Background(), "alice", delta.CauseRuleset); err != nil {
		t.Fatal(err)
	}
	r.none(t, 300*time.Millisecond)

	r.clk.Add(32 * time.Minute) // the cart leaves its window
	d := r.next(t)
	got := featureMap(d)
	if d.Cause != delta.CauseExpiry || d.Version != 3 || d.Base != 0 || got[cartKey] != profile.IntValue(0) || got["score:engagement"].Kind != profile.KindDouble {
		t.Fatalf("expiry delta %+v, want version 3 with the count at 0 and the score (both changed: whole)", d)
	}
}

func TestDiffFeatures(t *testing.T) {
	pro, two := delta.FeatureValue{Key: planKey, Value: profile.StringValue("pro")}, delta.FeatureValue{Key: cartKey, Value: profile.IntValue(2)}
	team, three := delta.FeatureValue{Key: planKey, Value: profile.StringValue("team")}, delta.FeatureValue{Key: cartKey, Value: profile.IntValue(3)}
	score := func(v float64) delta.FeatureValue {
		return delta.FeatureValue{Key: "score:engagement", Value: profile.DoubleValue(v)}
	}
	known := func(v uint64, fs ...delta.FeatureValue) members.Record {
		return members.Record{Version: v, Features: fs, FeaturesKnown: true}
	}
	for _, tc := range []struct {
		name          string
		prev          members.Record
		cur           []delta.FeatureValue
		event         bool
		send          []delta.FeatureValue
		gone          []string
		partial, same bool
	}{
		{"a new user with features", members.Record{}, []delta.FeatureValue{pro}, true, []delta.FeatureValue{pro}, nil, false, false},
		{"a new user without", members.Record{}, nil, true, nil, nil, false, true},
		{"unknown features: whole, never the same", members.Record{Version: 6}, []delta.FeatureValue{pro}, false, []delta.FeatureValue{pro}, nil, false, false},
		{"unknown features, none now: still not the same", members.Record{Version: 6}, nil, true, nil, nil, false, false},
		{"nothing changed", known(3, pro, two), []delta.FeatureValue{pro, two}, true, nil, nil, true, true},
		{"one changed", known(3, pro, two), []delta.FeatureValue{pro, three}, true, []delta.FeatureValue{three}, nil, true, false},
		{"one new, one gone", known(3, pro), []delta.FeatureValue{two}, true, []delta.FeatureValue{two}, []string{planKey}, true, false},
		{"all gone: a whole delta of none", known(3, pro, two), nil, true, nil, nil, false, false},
		{"all changed: whole, as brief", known(3, pro, two), []delta.FeatureValue{team, three}, false, []delta.FeatureValue{team, three}, nil, false, false},
		{"a score that decayed, after an event", known(3, score(9), pro), []delta.FeatureValue{score(8), pro}, true, []delta.FeatureValue{score(8)}, nil, true, false},
		{"a score that decayed, without an event", known(3, score(9), pro), []delta.FeatureValue{score(8), pro}, false, []delta.FeatureValue{score(8)}, nil, true, true},
		{"a score new to the ruleset, without an event", known(3, pro), []delta.FeatureValue{score(8), pro}, false, []delta.FeatureValue{score(8)}, nil, true, false},
	} {
		send, gone, partial, same := diffFeatures(tc.prev, tc.cur, tc.event)
		if !slices.Equal(send, tc.send) || !slices.Equal(gone, tc.gone) || partial != tc.partial || same != tc.same {
			t.Errorf("%s: send %v gone %v partial %v same %v; want %v %v %v %v", tc.name, send, gone, partial, same, tc.send, tc.gone, tc.partial, tc.same)
		}
	}
}

// Every wholeEvery-th version carries every feature, whatever the one before it.
func TestEverySixteenthDeltaOfAUserIsWhole(t *testing.T) {
	rules := newPlanRules(t)
	r := newRigWithConfig(t, func(c *Config) { c.Rules = func() Rules { return rules } })
	r.send(t, event.Event{ID: "e0", UserID: "alice", Type: "identify", Props: map[string]any{"plan": "pro"}, TS: r.clk.Now()})
	r.next(t)
	for v := 2; v <= wholeEvery+1; v++ {
		r.send(t, event.Event{ID: "e" + string(rune('a'+v)), UserID: "alice", Type: "add_to_cart", TS: r.clk.Now()})
		d := r.next(t)
		whole := d.Version%wholeEvery == 0
		if int(d.Version) != v || (d.Base == 0) != whole || (len(d.Features) == 2) != whole {
			t.Fatalf("version %d: base %d, %d features; want whole = %v", d.Version, d.Base, len(d.Features), whole)
		}
	}
}
