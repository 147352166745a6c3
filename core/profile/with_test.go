package profile

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/segedge/segedge/core/event"
)

// With must give exactly what Clone then Apply gives, for every kind of update, and must never
// change the profile it starts from (stores hand that one out).
func TestWithEqualsCloneThenApplyAndLeavesTheOriginalAlone(t *testing.T) {
	spec := mustSpec(t, []Feature{
		count("page_view", 30*time.Minute), count("page_view", 7*24*time.Hour), count("add_to_cart", time.Hour),
		sum("purchase", "amount", 24*time.Hour),
	}, map[string]ScoreSpec{"engagement": {HalfLife: time.Hour, Weights: map[string]float64{"page_view": 1, "purchase": 10}}})
	types := []string{"page_view", "add_to_cart", "purchase", TraitEventType, "other"}
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 7))
		viaClone, viaWith := New("u"), New("u")
		now := t0
		for i := range 200 {
			now = now.Add(time.Duration(rng.IntN(int(20 * time.Minute))))
			// events up to two hours late, so buckets are pruned and scores decay both ways
			ts := now.Add(-time.Duration(rng.IntN(int(2 * time.Hour))))
			typ := types[rng.IntN(len(types))]
			props := map[string]any{"amount": float64(rng.IntN(100))}
			if typ == TraitEventType {
				props = map[string]any{fmt.Sprint("t", rng.IntN(3)): rng.IntN(5), "plan": []string{"free", "pro"}[rng.IntN(2)]}
			}
			u := spec.Plan(event.Event{ID: fmt.Sprint(i), UserID: "u", Type: typ, TS: ts, Props: props}, now)

			before := viaWith.Clone()
			next := viaWith.With(u)
			if !reflect.DeepEqual(viaWith, before) {
				t.Fatalf("seed %d event %d (%s): With changed the profile it started from:\n%+v\nwas\n%+v", seed, i, typ, viaWith, before)
			}
			viaWith = next
			viaClone = viaClone.Clone()
			viaClone.Apply(u)
			if !reflect.DeepEqual(viaWith, viaClone) {
				t.Fatalf("seed %d event %d (%s): With gave\n%+v\nClone+Apply gave\n%+v", seed, i, typ, viaWith, viaClone)
			}
		}
	}
}

func BenchmarkNextProfile(b *testing.B) {
	spec, err := NewSpec([]Feature{count("page_view", 30*24*time.Hour), count("add_to_cart", 30*time.Minute)},
		map[string]ScoreSpec{"engagement": {HalfLife: time.Hour, Weights: map[string]float64{"page_view": 1}}})
	if err != nil {
		b.Fatal(err)
	}
	p := New("u")
	now := t0
	for i, typ := range []string{"page_view", "add_to_cart", "product_view", "search", TraitEventType} {
		p.Apply(spec.Plan(event.Event{ID: fmt.Sprint(i), UserID: "u", Type: typ, TS: now, Props: map[string]any{"plan": "pro"}}, now))
	}
	u := spec.Plan(event.Event{ID: "x", UserID: "u", Type: "page_view", TS: now}, now)
	b.Run("impl=clone+apply", func(b *testing.B) {
		for b.Loop() {
			c := p.Clone()
			c.Apply(u)
		}
	})
	b.Run("impl=with", func(b *testing.B) {
		for b.Loop() {
			_ = p.With(u)
		}
	})
}
