package ruleset

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/wasm"
)

func TestSmoke(t *testing.T) {
	f := &rules.File{
		Scores: []rules.ScoreDef{{Name: "engagement", HalfLife: time.Hour, Weights: map[string]float64{"page_view": 1}}},
		Segments: []rules.SegmentDef{
			{Name: "high", Rule: `score("engagement") > 80.0`},
			{Name: "cart", Rule: `count("add_to_cart", "30m") > 0 && count("purchase_completed", "30m") == 0`},
			{Name: "de_mobile", Rule: `request.country == "DE" && request.device == "mobile" && segment("high")`},
			{Name: "pro", Rule: `trait("plan") in ["pro", "team"]`},
			{Name: "path", Rule: `request.path.startsWith("/shop") && size(request.path) > 5`},
			{Name: "div", Rule: `10 / (count("add_to_cart", "30m") - 2) > 1`},
			{Name: "q", Rule: `request.query("utm") == trait("plan") || request.header("X-A").contains("b")`},
		},
		Slots: []rules.SlotDef{{Name: "hero", Variants: []rules.VariantDef{{When: "cart"}, {When: "high"}}}},
	}
	rs, err := rules.Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	ev, err := Load(ctx, rt, "smoke", rs)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	ref, err := rules.NewReference(&rs.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	prof := testProfile{
		{Kind: profile.FeatureScore, Name: "engagement"}:                            profile.DoubleValue(90),
		{Kind: profile.FeatureCount, Name: "add_to_cart", Window: 30 * time.Minute}: profile.IntValue(2),
		{Kind: profile.FeatureTrait, Name: "plan"}:                                  profile.StringValue("pro"),
	}
	req := &testRequest{path: "/shop/x", country: "DE", device: "mobile", query: map[string]string{"utm": "pro"}}
	got, want := ev.NewResult(), ev.NewResult()
	if err := ev.Evaluate(ctx, prof, req, time.Now(), got); err != nil {
		t.Fatal(err)
	}
	ref.Evaluate(prof, req, time.Now(), want)
	for i, s := range rs.Manifest.Segments {
		t.Logf("%-10s wasm member=%v err=%v  ref member=%v err=%v", s.Name, got.IsMember(i), got.IsError(i), want.IsMember(i), want.IsError(i))
	}
	t.Logf("variants %v %v", got.Variants, want.Variants)
	t.Log(ref.Explain(prof, req, time.Now()))
}
