package rulesets

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/wasm"
)

// promoRulesV is promoRules without tests (a module failing on every call cannot pass any) and
// with the slot's HTML marked by version, so an evaluation shows which version answered.
func promoRulesV(mark string) string {
	src := strings.ReplaceAll(promoRules, "html: promo", "html: promo-"+mark)
	src = strings.ReplaceAll(src, "html: shop", "html: shop-"+mark)
	return src[:strings.Index(src, "tests:")]
}

func readWasm(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitLoaded waits for onSwap with version want.
func (e *apiEnv) waitLoaded(want uint64) *Version {
	e.t.Helper()
	for {
		select {
		case l := <-e.loaded:
			if l.Version() == want {
				return l.(*Version)
			}
		case <-time.After(15 * time.Second):
			e.t.Fatalf("version %d never made active", want)
		}
	}
}

func (e *apiEnv) putModule(rulesSrc, module string) uint64 {
	e.t.Helper()
	body, ct := multipartBody(part{"rules", "promo.yaml", rulesSrc}, part{"module", "mods/pathpromo.wasm", module})
	code, ans := e.do("PUT", "/v1/rulesets", body, ct)
	if code != http.StatusCreated || ans["live"] != true {
		e.t.Fatalf("PUT: %d %v", code, ans)
	}
	return uint64(ans["version"].(float64))
}

// evalPromo evaluates v for a request carrying a valid promo code on a shop path: the module
// answers valid_promo, the CEL rule shopper. It returns the hero slot's HTML ("" = default)
// and fails the test if the evaluation as a whole failed or the CEL segment is wrong.
func evalPromo(t *testing.T, v *Version) (hero string, promo, promoErr bool) {
	t.Helper()
	_, req, _ := (&rules.TestDef{Request: &rules.TestRequest{Path: "/shop/a/b", Query: map[string]string{"promo": "79927398713"}}}).Sources()
	m := v.Manifest()
	res := m.NewResult()
	if err := v.Evaluator().Evaluate(context.Background(), nil, req, time.Now(), res); err != nil {
		t.Fatalf("version %d: the evaluation failed as a whole: %v", v.Version(), err)
	}
	if i := m.Segment("shopper"); !res.IsMember(i) || res.IsError(i) {
		t.Fatalf("version %d: shopper (CEL) member %v error %v", v.Version(), res.IsMember(i), res.IsError(i))
	}
	if c := res.Variants[0]; c >= 0 {
		hero = m.Slots[0].Variants[c].HTML
	}
	i := m.Segment("valid_promo")
	return hero, res.IsMember(i), res.IsError(i)
}

// A version whose hand-written module keeps failing (a real infinite loop, memory bomb,
// unreachable trap) is quarantined after QuarantineAfter evaluations and the origin falls back
// to the previous good version: onSwap gets it again (the engine evaluates with it, its
// results are that version's), GET /v1/rulesets says so, the metrics count it, and every
// evaluation meanwhile kept its CEL segments. A fixed upload then becomes active as usual.
func TestQuarantinedVersionFallsBackToThePreviousGoodOne(t *testing.T) {
	const after = 4
	good := readWasm(t, "../../wasm/ruleset/testdata/promo.wasm")
	for _, tt := range []struct{ module, reason string }{
		{"loop.wasm", "deadline"},
		{"membomb.wasm", "memory"},
		{"unreachable.wasm", "unreachable"},
	} {
		t.Run(tt.module, func(t *testing.T) {
			timeout := 20 * time.Millisecond
			if tt.module == "membomb.wasm" {
				timeout = 5 * time.Second // the bomb must reach the memory cap before its deadline
			}
			e := newAPIWith(t, wasm.Config{EvalTimeout: timeout, QuarantineAfter: after, MemoryLimitPages: 64})
			v1 := e.putModule(promoRulesV("v1"), good)
			e.waitLoaded(v1)
			v2 := e.putModule(promoRulesV("v2"), readWasm(t, "../../wasm/testdata/"+tt.module))
			bad := e.waitLoaded(v2)

			for i := range after {
				hero, promo, promoErr := evalPromo(t, bad)
				if hero != "shop-v2" || promo || !promoErr {
					t.Fatalf("evaluation %d of the failing version: hero %q valid_promo %v error %v; want shop-v2 (CEL) and the module's segment failing closed", i+1, hero, promo, promoErr)
				}
			}
			back := e.waitLoaded(v1)
			if a := e.mgr.Active(); a != back {
				t.Fatalf("active version %d after the fallback, want %d", a.Version(), v1)
			}
			if hero, promo, _ := evalPromo(t, back); hero != "promo-v1" || !promo {
				t.Fatalf("after the fallback: hero %q valid_promo %v; want version 1's answer promo-v1", hero, promo)
			}
			st := e.mgr.Status()
			if st.Version != v1 || !st.Fallback || st.Quarantined == nil || st.Quarantined.Version != v2 || st.Quarantined.Fallback != v1 ||
				st.Quarantined.Module != "mods/pathpromo.wasm" || !strings.Contains(st.Quarantined.Reason, tt.reason) {
				t.Fatalf("status %+v %+v", st, st.Quarantined)
			}
			if !e.mgr.Settled(v2) {
				t.Fatal("Settled(current) false in fallback: readiness would fail on every origin at once")
			}
			code, ans := e.do("GET", "/v1/rulesets", nil, "")
			active, _ := ans["active"].(map[string]any)
			if code != 200 || ans["current"] != float64(v2) || active["version"] != float64(v1) || active["fallback"] != true {
				t.Fatalf("GET /v1/rulesets: %d %v", code, ans)
			}
			if got := testutil.ToFloat64(e.mgr.quarantines.WithLabelValues("fallback")); got != 1 {
				t.Fatalf("quarantines{fallback} = %v", got)
			}
			if testutil.ToFloat64(e.mgr.fallbackG) != 1 || testutil.ToFloat64(e.mgr.version) != float64(v1) {
				t.Fatal("fallback gauge or version gauge not set to the fallback")
			}

			// The operator pushes a fixed version: active as usual, fallback state cleared.
			v3 := e.putModule(promoRulesV("v3"), good)
			fixed := e.waitLoaded(v3)
			if hero, promo, _ := evalPromo(t, fixed); hero != "promo-v3" || !promo {
				t.Fatalf("fixed version: hero %q valid_promo %v", hero, promo)
			}
			if st := e.mgr.Status(); st.Version != v3 || st.Fallback || st.Quarantined != nil {
				t.Fatalf("status after the fix %+v", st)
			}
			if testutil.ToFloat64(e.mgr.fallbackG) != 0 || testutil.ToFloat64(e.mgr.quarantined) != 0 {
				t.Fatal("fallback gauges still set after the fix")
			}
		})
	}
}

// The first version has no previous good version to fall back to: it stays active, its module
// is no longer run and its segments fail closed while the rest of the ruleset works; the status
// and the metrics say so. Activating it again retries it (a fresh load).
func TestQuarantineWithoutFallbackFailsClosed(t *testing.T) {
	const after = 3
	e := newAPIWith(t, wasm.Config{QuarantineAfter: after})
	v1 := e.putModule(promoRulesV("v1"), readWasm(t, "../../wasm/testdata/unreachable.wasm"))
	bad := e.waitLoaded(v1)
	for range after + 5 {
		if hero, promo, promoErr := evalPromo(t, bad); hero != "shop-v1" || promo || !promoErr {
			t.Fatalf("hero %q valid_promo %v error %v; want shop-v1 with the module's segment failing closed", hero, promo, promoErr)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.mgr.Status().Quarantined == nil {
		if time.Now().After(deadline) {
			t.Fatal("never quarantined")
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := e.mgr.Status()
	if st.Version != v1 || st.Fallback || st.Quarantined.Version != v1 || st.Quarantined.Fallback != 0 || e.mgr.Active() != Loaded(bad) {
		t.Fatalf("status %+v %+v", st, st.Quarantined)
	}
	if got := testutil.ToFloat64(e.mgr.quarantines.WithLabelValues("fail_closed")); got != 1 || testutil.ToFloat64(e.mgr.quarantined) != 1 {
		t.Fatalf("quarantines{fail_closed} = %v", got)
	}
	if code, ans := e.do("POST", "/v1/rulesets/1/activate", nil, ""); code != 200 || ans["live"] != true {
		t.Fatalf("activate again: %d %v", code, ans)
	}
	again := e.waitLoaded(v1)
	if again == bad || again.Quarantine() != nil || e.mgr.Status().Quarantined != nil {
		t.Fatal("activating the quarantined version again did not load it afresh")
	}
}
