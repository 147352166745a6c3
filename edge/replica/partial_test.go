package replica

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/profile"
)

func fv(key string, v profile.Value) delta.FeatureValue {
	return delta.FeatureValue{Key: key, Value: v}
}

// features returns every feature of user's entry by key, and whether the entry is incomplete.
func features(t *testing.T, r *Replica, user string, keys ...string) (map[string]profile.Value, bool) {
	t.Helper()
	e, ok := r.Get(user)
	if !ok {
		t.Fatalf("%s is not held", user)
	}
	out := map[string]profile.Value{}
	for _, k := range keys {
		if v, ok := r.Feature(e, r.ID(k)); ok {
			out[k] = v
		}
	}
	return out, e.Incomplete()
}

var allKeys = []string{"trait:plan", "trait:nick", "trait:beta", "count:add_to_cart:30m0s", "score:engagement", "trait:long"}

func TestAPartialDeltaChangesOnlyTheFeaturesItListsOrRemoves(t *testing.T) {
	long := string(make([]byte, 100)) // not interned: kept in the entry's own strings
	r, _ := New(Config{})
	r.Apply(&delta.Delta{UserID: "u", Version: 1, Members: []string{"a"}, Features: []delta.FeatureValue{
		fv("trait:plan", profile.StringValue("pro")),
		fv("trait:nick", profile.StringValue("ann")),
		fv("trait:beta", profile.BoolValue(true)),
		fv("count:add_to_cart:30m0s", profile.IntValue(2)),
		fv("trait:long", profile.StringValue(long)),
	}})
	if !r.Apply(&delta.Delta{UserID: "u", Version: 2, Base: 1, Members: []string{"a", "b"},
		Features: []delta.FeatureValue{fv("count:add_to_cart:30m0s", profile.IntValue(3)), fv("score:engagement", profile.DoubleValue(7.5))},
		Gone:     []string{"trait:nick", "trait:never-seen"}}) {
		t.Fatal("partial delta not applied")
	}
	got, incomplete := features(t, r, "u", allKeys...)
	want := map[string]profile.Value{
		"trait:plan":              profile.StringValue("pro"), // carried over (interned)
		"trait:beta":              profile.BoolValue(true),    // carried over
		"trait:long":              profile.StringValue(long),  // carried over (the entry's own strings)
		"count:add_to_cart:30m0s": profile.IntValue(3),        // changed
		"score:engagement":        profile.DoubleValue(7.5),   // new
	}
	if len(got) != len(want) || incomplete {
		t.Fatalf("features %v (incomplete %v), want %v complete", got, incomplete, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if n := len(memberNames(r, "u")); n != 2 {
		t.Errorf("members %v, want a and b", memberNames(r, "u"))
	}
	// The entry a partial delta was merged into is left as it was (requests may hold it).
	e, _ := r.Get("u")
	if e.Version != 2 || testutil.ToFloat64(r.m.partial.WithLabelValues("merged")) != 1 {
		t.Fatalf("version %d, merged %v", e.Version, testutil.ToFloat64(r.m.partial.WithLabelValues("merged")))
	}
}

func TestAPartialDeltaAfterAMissedOneLeavesTheEntryIncompleteUntilTheOriginAnswers(t *testing.T) {
	var fetches atomic.Int32
	var fail atomic.Bool
	r, _ := New(Config{Fetch: func(ctx context.Context, user string) (*delta.Delta, error) {
		fetches.Add(1)
		if fail.Load() {
			return nil, errors.New("origin down")
		}
		return &delta.Delta{UserID: user, Version: 3, Members: []string{"a"}, Features: []delta.FeatureValue{
			fv("trait:plan", profile.StringValue("pro")), fv("count:add_to_cart:30m0s", profile.IntValue(3))}}, nil
	}})
	r.Apply(&delta.Delta{UserID: "u", Version: 1, Members: []string{}, Features: []delta.FeatureValue{fv("trait:plan", profile.StringValue("free"))}})
	// Version 2 never arrives here; version 3 is relative to it.
	r.Apply(&delta.Delta{UserID: "u", Version: 3, Base: 2, Members: []string{"a"},
		Features: []delta.FeatureValue{fv("count:add_to_cart:30m0s", profile.IntValue(3))}})
	got, incomplete := features(t, r, "u", allKeys...)
	if !incomplete || len(got) != 1 || got["count:add_to_cart:30m0s"] != profile.IntValue(3) {
		t.Fatalf("after a gap: %v incomplete %v; want only the listed feature, incomplete (the plan of version 1 may be stale)", got, incomplete)
	}
	if testutil.ToFloat64(r.m.partial.WithLabelValues("gap")) != 1 {
		t.Fatal("gap not counted")
	}
	// A further partial delta on an incomplete entry stays incomplete.
	r.Apply(&delta.Delta{UserID: "u", Version: 4, Base: 3, Members: []string{"a"},
		Features: []delta.FeatureValue{fv("score:engagement", profile.DoubleValue(1))}})
	if _, incomplete := features(t, r, "u"); !incomplete {
		t.Fatal("a partial delta made an incomplete entry complete")
	}

	// The origin cannot answer: the request uses what is held (memberships are right).
	fail.Store(true)
	if e := r.Lookup(context.Background(), "u"); e == nil || e.Version != 4 || !e.Has(r.ID("a")) {
		t.Fatalf("lookup with the origin down = %+v, want the held incomplete entry", e)
	}
	// For a moment after a failure, requests use what is held without asking again.
	fail.Store(false)
	if e := r.Lookup(context.Background(), "u"); e.Version != 4 || fetches.Load() != 1 {
		t.Fatalf("lookup right after a failed one: entry %+v, %d fetches; want the held entry and no new fetch", e, fetches.Load())
	}
	// Then the origin is asked again. It answers an older version (its record lags the delta):
	// still incomplete, kept.
	r.fetchQuiet.Store(0) // the backoff has passed
	if e := r.Lookup(context.Background(), "u"); e.Version != 4 || !e.Incomplete() {
		t.Fatalf("an older answer replaced the entry: %+v", e)
	}
	if fetches.Load() != 2 {
		t.Fatalf("%d fetches, want one per lookup of an incomplete entry once the backoff passed", fetches.Load())
	}
}

func TestAWholeAnswerOfTheSameVersionCompletesAnIncompleteEntry(t *testing.T) {
	var fetches atomic.Int32
	r, _ := New(Config{Fetch: func(ctx context.Context, user string) (*delta.Delta, error) {
		fetches.Add(1)
		return &delta.Delta{UserID: user, Version: 5, Members: []string{"a"}, Features: []delta.FeatureValue{
			fv("trait:plan", profile.StringValue("pro")), fv("count:add_to_cart:30m0s", profile.IntValue(1))}}, nil
	}})
	r.Apply(&delta.Delta{UserID: "u", Version: 5, Base: 4, Members: []string{"a"},
		Features: []delta.FeatureValue{fv("count:add_to_cart:30m0s", profile.IntValue(1))}})
	e := r.Lookup(context.Background(), "u")
	if e.Incomplete() {
		t.Fatal("still incomplete after the origin answered the same version whole")
	}
	if v, ok := r.Feature(e, r.ID("trait:plan")); !ok || v.Str != "pro" {
		t.Fatalf("plan = %v, %v", v, ok)
	}
	r.Lookup(context.Background(), "u")
	if fetches.Load() != 1 {
		t.Fatalf("%d fetches: a complete entry was looked up again", fetches.Load())
	}
	// A whole delta is applied as before, and an older partial one is stale.
	if r.Apply(&delta.Delta{UserID: "u", Version: 5, Base: 4, Members: []string{}}) {
		t.Fatal("a delta of the held version was applied")
	}
}
