package engine

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
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
	if d.Cause != delta.CauseExpiry || d.Version != 3 || d.Base != 2 || got[cartKey] != profile.IntValue(0) || got["score:engagement"].Kind != profile.KindDouble {
		t.Fatalf("expiry delta %+v, want version 3 relative to 2 with the count at 0 and the score", d)
	}
}
