package server

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/segedge/segedge/core/purge"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/edge/identity"
	"github.com/segedge/segedge/edge/push"
	"github.com/segedge/segedge/edge/replica"
	"github.com/segedge/segedge/wasm"
	wruleset "github.com/segedge/segedge/wasm/ruleset"
)

// quarantineRules has a CEL segment and a hand-written module's two segments; mark tells the
// versions' slot HTML apart.
func quarantineRules(mark string) string {
	return `segments:
  - name: shopper
    rule: request.path.startsWith("/shop")
modules:
  - path: mods/pathpromo.wasm
    segments: [deep_browser, valid_promo]
    features: ['request.path', 'request.query("promo")']
slots:
  - name: hero
    variants:
      - when: valid_promo
        html: promo-` + mark + `
      - when: shopper
        html: shop-` + mark + `
`
}

type quarantineEdge struct {
	t    *testing.T
	e    *edge
	rt   *wasm.Runtime
	reg  *prometheus.Registry
	logs *bytes.Buffer
}

func newQuarantineEdge(t *testing.T, cfg wasm.Config) *quarantineEdge {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	rt, err := wasm.NewRuntime(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) })
	rep, err := replica.New(replica.Config{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := identity.NewSigner(identity.RandomKey())
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	e := &edge{cfg: Config{CountryHeader: "CF-IPCountry"}, log: slog.New(slog.NewJSONHandler(&logs, nil)),
		replica: rep, signer: signer, rt: rt, push: push.NewHub(4, 16, reg)}
	e.metrics(reg)
	if e.trusted, err = newTrustedUsers("", "", reg); err != nil {
		t.Fatal(err)
	}
	return &quarantineEdge{t: t, e: e, rt: rt, reg: reg, logs: &logs}
}

// load compiles a rules file with one hand-written module (a file of wasm/...) into a version.
func (q *quarantineEdge) load(version uint64, src, modulePath string) *edgeRuleset {
	q.t.Helper()
	mod, err := os.ReadFile(modulePath)
	if err != nil {
		q.t.Fatal(err)
	}
	f, err := rules.Parse("rules.yaml", []byte(src))
	if err != nil {
		q.t.Fatal(err)
	}
	rs, err := rules.Compile(f)
	if err != nil {
		q.t.Fatal(err)
	}
	if err := rs.AttachModules(f.Name, map[string][]byte{"mods/pathpromo.wasm": mod}); err != nil {
		q.t.Fatal(err)
	}
	ev, err := wruleset.Load(context.Background(), q.rt, "v", rs)
	if err != nil {
		q.t.Fatal(err)
	}
	ers := &edgeRuleset{version: version, ev: ev, man: ev.Manifest(), featIDs: make([]uint16, len(ev.Manifest().Inputs))}
	ers.results.New = func() any { return ers.man.NewResult() }
	return ers
}

// request evaluates the active version as a request does (acquire, evaluate) for a shop path
// with a valid promo code, and returns the version and the hero slot's HTML ("" = default).
func (q *quarantineEdge) request() (uint64, string) {
	q.t.Helper()
	var req fasthttp.Request
	req.SetRequestURI("/shop/a/b?promo=79927398713")
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, nil, nil) // a server behind the context, as a real request has
	rs := q.e.acquire()
	defer rs.refs.Done()
	res := rs.results.Get().(*rules.Result)
	defer rs.results.Put(res)
	q.e.evaluate(&ctx, rs, res)
	if i := rs.man.Segment("shopper"); !res.IsMember(i) {
		q.t.Fatalf("version %d: shopper (CEL) not a member: the evaluation failed beyond the module", rs.version)
	}
	if c := res.Variants[0]; c >= 0 {
		return rs.version, rs.man.Slots[0].Variants[c].HTML
	}
	return rs.version, ""
}

func (q *quarantineEdge) waitVersion(want uint64) {
	q.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for q.e.rulesetVersion() != want {
		if time.Now().After(deadline) {
			q.t.Fatalf("evaluating version %d, want %d", q.e.rulesetVersion(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (q *quarantineEdge) waitModulesOpen(want int64) {
	q.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for q.rt.Stats().Modules != want {
		if time.Now().After(deadline) {
			q.t.Fatalf("%d modules open, want %d", q.rt.Stats().Modules, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// At the edge, a version whose hand-written module keeps failing (infinite loop, memory bomb,
// unreachable trap) is quarantined after QuarantineAfter requests and requests are evaluated
// with the previous good version, which stayed loaded meanwhile: its slot HTML, its module's
// answer, its number in segedge_edge_ruleset_version. No request fails beyond the module's own
// segments. A fixed version then goes live as usual.
func TestEdgeFallsBackFromAQuarantinedRuleset(t *testing.T) {
	const after = 4
	for _, tt := range []struct {
		module  string
		timeout time.Duration
	}{
		{"loop.wasm", 20 * time.Millisecond},
		{"membomb.wasm", 5 * time.Second}, // the bomb must reach the memory cap before its deadline
		{"unreachable.wasm", 20 * time.Millisecond},
	} {
		t.Run(tt.module, func(t *testing.T) {
			q := newQuarantineEdge(t, wasm.Config{EvalTimeout: tt.timeout, QuarantineAfter: after, MemoryLimitPages: 64})
			e := q.e
			good := "../../wasm/ruleset/testdata/promo.wasm"
			e.activate(q.load(1, quarantineRules("v1"), good))
			if v, hero := q.request(); v != 1 || hero != "promo-v1" {
				t.Fatalf("version 1: %d %q", v, hero)
			}
			e.activate(q.load(2, quarantineRules("v2"), "../../wasm/testdata/"+tt.module))
			q.waitModulesOpen(4) // version 1 (generated + module) stays loaded beside version 2
			for i := range after {
				if v, hero := q.request(); v != 2 || hero != "shop-v2" {
					t.Fatalf("request %d on the failing version: %d %q; want 2 shop-v2 (the module fails closed)", i+1, v, hero)
				}
			}
			q.waitVersion(1)
			if v, hero := q.request(); v != 1 || hero != "promo-v1" {
				t.Fatalf("after the fallback: version %d hero %q; want version 1's promo-v1", v, hero)
			}
			q.waitModulesOpen(2) // the quarantined version is closed
			if testutil.ToFloat64(e.rulesetGauge) != 1 || testutil.ToFloat64(e.fb.fallback) != 1 || testutil.ToFloat64(e.fb.quarantined) != 1 ||
				testutil.ToFloat64(e.fb.outc.WithLabelValues("fallback")) != 1 {
				t.Fatal("metrics do not show the fallback to version 1")
			}
			if !strings.Contains(q.logs.String(), `"msg":"ruleset module quarantined; falling back to the previous good version","version":2,"fallback":1`) {
				t.Fatalf("no ERROR log naming both versions:\n%s", q.logs)
			}
			// The store still says 2: the watch must not reload 1, nor think 2 is live.
			if !e.isActive(1) || e.isActive(2) {
				t.Fatal("isActive: want 1 (the fallback) active, 2 (quarantined) to be reloaded if made current again")
			}
			if testutil.ToFloat64(e.fb.fallback) != 0 {
				t.Fatal("the fallback made current did not clear the fallback state")
			}

			e.activate(q.load(3, quarantineRules("v3"), good))
			if v, hero := q.request(); v != 3 || hero != "promo-v3" {
				t.Fatalf("fixed version: %d %q", v, hero)
			}
			q.waitModulesOpen(4) // version 1 kept as the previous good version of version 3
		})
	}
}

// With no previous good version (the first one since the edge started), a quarantined version
// stays active: its module is no longer run, its segments fail closed, the rest works.
func TestEdgeQuarantineWithoutFallbackFailsClosed(t *testing.T) {
	const after = 3
	q := newQuarantineEdge(t, wasm.Config{QuarantineAfter: after})
	e := q.e
	e.activate(q.load(1, quarantineRules("v1"), "../../wasm/testdata/unreachable.wasm"))
	for range after + 5 {
		if v, hero := q.request(); v != 1 || hero != "shop-v1" {
			t.Fatalf("version %d hero %q; want 1 shop-v1", v, hero)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(e.fb.outc.WithLabelValues("fail_closed")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("quarantine without fallback not counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if testutil.ToFloat64(e.fb.quarantined) != 1 || testutil.ToFloat64(e.fb.fallback) != 0 || e.rulesetVersion() != 1 {
		t.Fatal("gauges or version wrong after a quarantine without fallback")
	}
	if e.isActive(1) {
		t.Fatal("a quarantined version made current again must be reloaded (retried)")
	}
}

// A purge refreshes the fragments of the version kept to fall back to as well as the active
// one's, so a fallback never brings back purged HTML.
func TestPurgeRefreshesTheKeptVersionsFragments(t *testing.T) {
	var html atomic.Value
	html.Store("old hero")
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(html.Load().(string)))
	}))
	defer up.Close()
	q := newQuarantineEdge(t, wasm.Config{})
	e := q.e
	e.cfg.UpstreamURL = up.URL
	good := "../../wasm/ruleset/testdata/promo.wasm"
	withFragment := func(rs *edgeRuleset) *edgeRuleset {
		rs.fragments = []fragmentRef{{slot: 0, variant: 0, path: "/frag.html"}}
		rs.variants.Store(&variantSet{bytes: [][][]byte{{[]byte("old hero"), []byte("shop")}}})
		return rs
	}
	v1 := withFragment(q.load(1, quarantineRules("v1"), good))
	e.activate(v1)
	v2 := withFragment(q.load(2, quarantineRules("v2"), good))
	e.activate(v2) // v2 has a module: v1 is kept
	html.Store("new hero")
	e.refreshFragments(context.Background(), &purge.Request{URLs: []string{"/frag.html"}})
	for _, rs := range []*edgeRuleset{v2, v1} {
		if got := string(rs.variants.Load().bytes[0][0]); got != "new hero" {
			t.Errorf("version %d after the purge: fragment %q, want the refetched one", rs.version, got)
		}
	}
}
