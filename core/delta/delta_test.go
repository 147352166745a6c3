package delta

import (
	"testing"
	"time"

	"github.com/segedge/segedge/core/profile"
)

func TestFeatureKeyRoundTrips(t *testing.T) {
	for _, f := range []profile.Feature{
		{Kind: profile.FeatureTrait, Name: "plan"},
		{Kind: profile.FeatureCount, Name: "add_to_cart", Window: 30 * time.Minute},
		{Kind: profile.FeatureSum, Name: "purchase_completed", Prop: "amount", Window: 7 * 24 * time.Hour},
		{Kind: profile.FeatureSince, Name: "page_view"},
		{Kind: profile.FeatureScore, Name: "engagement"},
	} {
		k := FeatureKey(f)
		got, err := ParseFeatureKey(k)
		if err != nil || got != f {
			t.Errorf("ParseFeatureKey(%q) = %+v, %v; want %+v", k, got, err, f)
		}
	}
	for _, bad := range []string{"", "count:x", "count:x:soon", "sum:a:b", "nope:x", "count:x:-1m"} {
		if _, err := ParseFeatureKey(bad); err == nil {
			t.Errorf("ParseFeatureKey(%q) accepted", bad)
		}
	}
}

func TestEncodeDecode(t *testing.T) {
	d := &Delta{UserID: "u1", Version: 7, Ruleset: 3, Cause: CauseEvent, Members: []string{"a"}, Entered: []string{"a"},
		Features: []FeatureValue{
			{Key: "score:engagement", Value: profile.DoubleValue(81.5)},
			{Key: "score:loyalty", Value: profile.DoubleValue(42)},
			{Key: "count:add_to_cart:30m0s", Value: profile.IntValue(3)},
			{Key: "trait:plan", Value: profile.StringValue("pro")},
			{Key: "trait:beta", Value: profile.BoolValue(true)},
		}, AcceptedAt: 1700000000000}
	b, err := Encode(d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.UserID != "u1" || got.Version != 7 || got.Entered[0] != "a" || len(got.Features) != len(d.Features) {
		t.Fatalf("round trip = %+v", got)
	}
	for i, f := range d.Features {
		if got.Features[i] != f {
			t.Errorf("feature %d = %+v, want %+v (kind kept)", i, got.Features[i], f)
		}
	}
	for _, bad := range []string{`{`, `{"version":1}`, `{"user_id":"u"}`} {
		if _, err := Decode([]byte(bad)); err == nil {
			t.Errorf("Decode(%s) accepted", bad)
		}
	}
}
