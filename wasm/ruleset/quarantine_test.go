package ruleset

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/wasm"
)

// readMalicious reads one of the sandbox's malicious test modules (wasm/testdata).
func readMalicious(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("../testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// counter reads a counter of reg: name{label=value}, or name if label is "".
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				return m.GetCounter().GetValue()
			}
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func loadModulesFile(t *testing.T, rt *wasm.Runtime, module []byte) (*rules.File, *Evaluator) {
	t.Helper()
	f, rs := compileModulesFile(t)
	if err := rs.AttachModules(f.Name, map[string][]byte{"pathpromo.wasm": module}); err != nil {
		t.Fatal(err)
	}
	ev, err := Load(context.Background(), rt, "modules", rs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ev.Close)
	return f, ev
}

func quarantined(ev *Evaluator) bool {
	select {
	case <-ev.Quarantined():
		return true
	default:
		return false
	}
}

// A ruleset whose hand-written module fails on every call (a real infinite loop, memory bomb,
// unreachable trap) is quarantined after QuarantineAfter evaluations in a row: the host is told
// (Quarantined closes, Quarantine names the module and the failure), the module is no longer
// run (the sandbox's failure counter stops), its segments stay "not member, error" and the CEL
// segment and the slot keep working before, during and after.
func TestRulesetModuleIsQuarantinedAfterRepeatedFailures(t *testing.T) {
	const after = 3
	tests := []struct {
		module  string
		reason  string        // segedge_wasm_eval_failures_total{reason}
		timeout time.Duration // the evaluation deadline: the memory bomb must reach the cap first
	}{
		{"loop.wasm", "timeout", 20 * time.Millisecond},
		{"membomb.wasm", "memory", 5 * time.Second},
		{"unreachable.wasm", "trap", 20 * time.Millisecond},
		{"status.wasm", "status", 20 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.module, func(t *testing.T) {
			ctx := context.Background()
			reg := prometheus.NewRegistry()
			rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: reg, EvalTimeout: tt.timeout, QuarantineAfter: after, MemoryLimitPages: 64})
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Close(ctx)
			f, ev := loadModulesFile(t, rt, readMalicious(t, tt.module))
			m := ev.Manifest()
			_, req, _ := (&rules.TestDef{Request: &rules.TestRequest{Path: "/shop/a/b"}}).Sources()
			res := ev.NewResult()
			check := func(when string) {
				t.Helper()
				if err := ev.Evaluate(ctx, nil, req, time.Now(), res); err != nil {
					t.Fatalf("%s: a failing hand-written module failed the evaluation: %v", when, err)
				}
				if i := m.Segment("shopper"); !res.IsMember(i) || res.IsError(i) {
					t.Fatalf("%s: shopper (CEL) member %v error %v; want member", when, res.IsMember(i), res.IsError(i))
				}
				for _, name := range []string{"deep_browser", "valid_promo"} {
					if i := m.Segment(name); res.IsMember(i) || !res.IsError(i) {
						t.Fatalf("%s: %s member %v error %v; want not member, error", when, name, res.IsMember(i), res.IsError(i))
					}
				}
				if res.Variants[0] != 1 {
					t.Fatalf("%s: hero shows %d, want 1 (shopper)", when, res.Variants[0])
				}
			}
			for i := range after - 1 {
				check("before the threshold")
				if quarantined(ev) || ev.Quarantine() != nil {
					t.Fatalf("quarantined after %d failures; the threshold is %d", i+1, after)
				}
			}
			check("at the threshold")
			if !quarantined(ev) {
				t.Fatalf("not quarantined after %d failures in a row", after)
			}
			q := ev.Quarantine()
			var evalErr *wasm.EvalError
			if q == nil || q.Module != "pathpromo.wasm" || !errors.As(q.Err, &evalErr) || q.At.IsZero() {
				t.Fatalf("Quarantine() = %+v; want pathpromo.wasm with the sandbox's error", q)
			}
			if !strings.Contains(q.String(), `module "pathpromo.wasm" quarantined`) {
				t.Errorf("Quarantine.String() = %q", q.String())
			}
			failures := counter(t, reg, "segedge_wasm_eval_failures_total", "reason", tt.reason)
			if failures != after {
				t.Fatalf("segedge_wasm_eval_failures_total{reason=%q} = %v, want %d", tt.reason, failures, after)
			}
			if got := counter(t, reg, "segedge_wasm_quarantines_total", "", ""); got != 1 {
				t.Fatalf("segedge_wasm_quarantines_total = %v, want 1", got)
			}
			// Quarantined: not run any more (no new failure), still failing closed on its own.
			for range 10 {
				check("quarantined")
			}
			if got := counter(t, reg, "segedge_wasm_eval_failures_total", "reason", tt.reason); got != failures {
				t.Fatalf("a quarantined module still ran: failures %v → %v", failures, got)
			}
			// The file's tests say why its module segments fail.
			if err := ev.RunTests(ctx, f); err == nil || !strings.Contains(err.Error(), `module "pathpromo.wasm": quarantined after repeated failures`) {
				t.Fatalf("RunTests on a quarantined ruleset: %v", err)
			}
			if !ev.HasModules() {
				t.Fatal("HasModules() false for a ruleset with a module")
			}
		})
	}
}

// A module that answers is never quarantined, however many evaluations; nor is a ruleset
// without hand-written modules, whose Quarantined channel never closes.
func TestHealthyRulesetIsNeverQuarantined(t *testing.T) {
	ctx := context.Background()
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: prometheus.NewRegistry(), QuarantineAfter: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	mod, err := os.ReadFile("testdata/promo.wasm")
	if err != nil {
		t.Fatal(err)
	}
	_, ev := loadModulesFile(t, rt, mod)
	_, req, _ := (&rules.TestDef{Request: &rules.TestRequest{Path: "/a/b/c", Query: map[string]string{"promo": "79927398713"}}}).Sources()
	res := ev.NewResult()
	for range 50 {
		if err := ev.Evaluate(ctx, nil, req, time.Now(), res); err != nil {
			t.Fatal(err)
		}
	}
	if i := ev.Manifest().Segment("valid_promo"); !res.IsMember(i) {
		t.Fatal("valid_promo not a member")
	}
	if quarantined(ev) || ev.Quarantine() != nil {
		t.Fatalf("a healthy module was quarantined: %v", ev.Quarantine())
	}

	f, err := rules.Parse("cel.yaml", []byte("segments:\n  - name: a\n    rule: request.bucket > 5\n"))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := rules.Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	cel, err := Load(ctx, rt, "cel", rs)
	if err != nil {
		t.Fatal(err)
	}
	defer cel.Close()
	if cel.HasModules() || quarantined(cel) {
		t.Fatal("a CEL-only ruleset reports modules or a quarantine")
	}
}

// A module whose data segment does not fit its memory never gets as far as quarantine: the
// ruleset is refused at load, with the reason.
func TestRulesetWithHugeDataSegmentIsRefusedAtLoad(t *testing.T) {
	ctx := context.Background()
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	f, rs := compileModulesFile(t)
	if err := rs.AttachModules(f.Name, map[string][]byte{"pathpromo.wasm": readMalicious(t, "bigdata.wasm")}); err != nil {
		t.Fatal(err)
	}
	if ev, err := Load(ctx, rt, "modules", rs); err == nil || !strings.Contains(err.Error(), `module "pathpromo.wasm"`) || !strings.Contains(err.Error(), "out of bounds") {
		if ev != nil {
			ev.Close()
		}
		t.Fatalf("Load with bigdata.wasm: %v; want a load error naming the module", err)
	}
}
