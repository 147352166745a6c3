package ruleset

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/wasm"
)

func newRuntime(t testing.TB) *wasm.Runtime {
	t.Helper()
	ctx := context.Background()
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(ctx) })
	return rt
}

// differential compiles one generated ruleset, runs the real module in the sandbox and the
// cel-go reference on the same inputs, and reports every disagreement. It returns the number
// of (rule, input) pairs compared.
func differential(t testing.TB, rt *wasm.Runtime, seed uint64, segs, inputs int) int {
	g := &ruleGen{r: rand.New(rand.NewPCG(seed, 0x5e9ed9e))}
	f := g.file(segs)
	rs, err := rules.Compile(f)
	if err != nil {
		t.Fatalf("seed %d: generated rules do not compile: %v", seed, err)
	}
	ctx := context.Background()
	ev, err := Load(ctx, rt, fmt.Sprintf("diff-%d", seed), rs)
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	defer ev.Close()
	ref, err := rules.NewReference(&rs.Manifest)
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	got, want := ev.NewResult(), ev.NewResult()
	now := time.Unix(1_800_000_000, 0)
	fails := 0
	for in := range inputs {
		prof, req := g.profile(), g.request()
		var rs2 rules.RequestSource
		if req != nil {
			rs2 = req
		}
		if err := ev.Evaluate(ctx, prof, rs2, now, got); err != nil {
			t.Fatalf("seed %d input %d: %v", seed, in, err)
		}
		ref.Evaluate(prof, rs2, now, want)
		for i, s := range rs.Manifest.Segments {
			if got.IsMember(i) != want.IsMember(i) || got.IsError(i) != want.IsError(i) {
				fails++
				if fails <= 5 {
					t.Errorf("seed %d input %d segment %s: wasm member=%v error=%v, cel-go member=%v error=%v\nrule: %s\ndepends on: %v\nprofile: %v\nrequest: %+v\nexplain: %s",
						seed, in, s.Name, got.IsMember(i), got.IsError(i), want.IsMember(i), want.IsError(i), s.Rule, s.DependsOn, prof, req,
						ref.Explain(prof, rs2, now)[s.Name])
				}
			}
		}
		for s := range got.Variants {
			if got.Variants[s] != want.Variants[s] {
				t.Errorf("seed %d input %d slot %d: wasm variant %d, cel-go %d", seed, in, s, got.Variants[s], want.Variants[s])
			}
		}
	}
	if fails > 5 {
		t.Errorf("seed %d: %d disagreements in all", seed, fails)
	}
	return segs * inputs
}

// TestDifferential: ≥ 100,000 (rule, input) pairs from fixed seeds; the compiled module in
// the real sandbox must agree with cel-go on every membership, error bit and slot choice.
func TestDifferential(t *testing.T) {
	rt := newRuntime(t)
	modules, segs, inputs := 20, 100, 55
	if testing.Short() {
		modules = 3
	}
	pairs := 0
	for seed := range modules {
		pairs += differential(t, rt, uint64(seed), segs, inputs)
	}
	t.Logf("%d (rule, input) pairs agree", pairs)
}

// FuzzDifferential drives the generator with fuzzed seeds and sizes.
func FuzzDifferential(f *testing.F) {
	rt := newRuntime(f)
	for s := range 8 {
		f.Add(uint64(1000+s), uint8(10))
	}
	f.Fuzz(func(t *testing.T, seed uint64, n uint8) {
		differential(t, rt, seed, 1+int(n)%40, 20)
	})
}

// FuzzRuleText compiles arbitrary rule text; whatever compiles must load, run and agree with
// cel-go on a few fixed inputs. Nothing may panic.
func FuzzRuleText(f *testing.F) {
	rt := newRuntime(f)
	for _, r := range []string{`count("add_to_cart", "30m") > 0`, `trait("plan") in ["pro", 1, 2.5, true]`,
		`request.path.contains("/x") ? size(request.path) > 3 : request.hour < 12`, `-(1 - 2) * 3 / 4 % 5 == 0`,
		`segment("s0") || score("engagement") / 0.0 > 1.0`, `request.cookie("ab") >= trait("plan")`} {
		f.Add(r)
	}
	g := &ruleGen{r: rand.New(rand.NewPCG(1, 2))}
	type input struct {
		p testProfile
		r *testRequest
	}
	var inputs []input
	for range 16 {
		inputs = append(inputs, input{g.profile(), g.request()})
	}
	f.Fuzz(func(t *testing.T, rule string) {
		file := &rules.File{Scores: []rules.ScoreDef{{Name: "engagement", HalfLife: time.Hour}},
			Segments: []rules.SegmentDef{{Name: "s0", Rule: `trait("vip") == true`}, {Name: "s", Rule: rule}}}
		rs, err := rules.Compile(file)
		if err != nil {
			return
		}
		ctx := context.Background()
		ev, err := Load(ctx, rt, "fuzz", rs)
		if err != nil {
			t.Fatalf("compiled module does not load: %v", err)
		}
		defer ev.Close()
		ref, err := rules.NewReference(&rs.Manifest)
		if err != nil {
			t.Fatal(err)
		}
		got, want := ev.NewResult(), ev.NewResult()
		for i, in := range inputs {
			var req rules.RequestSource
			if in.r != nil {
				req = in.r
			}
			if err := ev.Evaluate(ctx, in.p, req, time.Unix(0, 0), got); err != nil {
				t.Fatal(err)
			}
			ref.Evaluate(in.p, req, time.Unix(0, 0), want)
			if got.Member[0] != want.Member[0] || got.Error[0] != want.Error[0] {
				t.Fatalf("input %d: wasm %b/%b, cel-go %b/%b\n%s", i, got.Member[0], got.Error[0], want.Member[0], want.Error[0],
					ref.Explain(in.p, req, time.Unix(0, 0)))
			}
		}
	})
}
