package ruleset

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
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

var _ = strings.Contains
