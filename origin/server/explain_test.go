package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
	"github.com/segedge/segedge/wasm"
	"github.com/segedge/segedge/wasm/ruleset"
)

const explainTestRules = `
segments:
  - name: cart_abandoner
    rule: count("add_to_cart", "30m") > 0 && count("purchase_completed", "30m") == 0
  - name: buyer
    rule: count("purchase_completed", "90d") > 0
  - name: mobile_visitor
    rule: request.device == "mobile"
`

// testRuleset is a loaded ruleset as the origin's explain needs it (rulesets.Version in the program).
type testRuleset struct {
	ev   *ruleset.Evaluator
	spec *profile.Spec
}

func (r *testRuleset) Version() uint64                 { return 7 }
func (r *testRuleset) Spec() *profile.Spec             { return r.spec }
func (r *testRuleset) EdgeFeatures() []profile.Feature { return nil }
func (r *testRuleset) Manifest() *rules.Manifest       { return r.ev.Manifest() }
func (r *testRuleset) Evaluator() *ruleset.Evaluator   { return r.ev }
func (r *testRuleset) Segments(context.Context, *profile.Profile, time.Time, []string) ([]string, error) {
	return nil, nil
}

// explainOrigin is an origin with an in-memory store, a loaded ruleset and its HTTP routes.
type explainOrigin struct {
	o   *origin
	url string
	reg *prometheus.Registry
	log *bytes.Buffer
}

// newExplainOrigin loads a ruleset whose manifest (rules, inputs) comes from manifestSrc and whose
// compiled module from moduleSrc: the same source for a healthy ruleset, another one to stand for
// a compiler bug.
func newExplainOrigin(t *testing.T, manifestSrc, moduleSrc string) *explainOrigin {
	t.Helper()
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) })
	compile := func(src string) *rules.Ruleset {
		f, err := rules.Parse("rules.yaml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		rs, err := rules.Compile(f)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	man, mod := compile(manifestSrc), compile(moduleSrc)
	ev, err := ruleset.Load(ctx, rt, "explain-test", &rules.Ruleset{Module: mod.Module, Manifest: man.Manifest})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ev.Close)
	spec, err := profile.NewSpec(man.Manifest.Features(), man.Manifest.ScoreSpecs())
	if err != nil {
		t.Fatal(err)
	}
	v := &testRuleset{ev: ev, spec: spec}
	var logs bytes.Buffer
	o := &origin{cfg: Config{AdminToken: "at", ReadKey: "rk"}, reg: reg, log: slog.New(slog.NewJSONHandler(&logs, nil)),
		store: memory.New(store.Options{Retention: time.Hour}), members: members.NewMemory()}
	o.rules.Store(&activeRuleset{Rules: v, segments: []string{"cart_abandoner", "buyer", "mobile_visitor"}})
	mux := http.NewServeMux()
	o.routes(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &explainOrigin{o: o, url: srv.URL, reg: reg, log: &logs}
}

func (x *explainOrigin) apply(t *testing.T, user string, types ...string) {
	t.Helper()
	spec := x.o.rules.Load().Spec()
	for i, typ := range types {
		ev := event.Event{ID: user + "-" + typ + string(rune('a'+i)), UserID: user, Type: typ, TS: time.Now()}
		if _, _, err := x.o.store.Apply(context.Background(), ev, spec); err != nil {
			t.Fatal(err)
		}
	}
}

func (x *explainOrigin) get(t *testing.T, path, token string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", x.url+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: not JSON: %q", path, b)
	}
	return res.StatusCode, m
}

func TestExplainAtTheOrigin(t *testing.T) {
	x := newExplainOrigin(t, explainTestRules, explainTestRules)
	x.apply(t, "alice", "add_to_cart", "add_to_cart", "page_view")
	if err := x.o.members.Put(context.Background(), "alice", members.Record{Members: []string{"cart_abandoner"}, Version: 3}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, token string
		status            int
		check             func(t *testing.T, m map[string]any)
	}{
		{"member, and why", "/v1/users/alice/explain?segment=cart_abandoner", "at", 200, func(t *testing.T, m map[string]any) {
			want(t, m, "result", "true")
			want(t, m, "agree", true)
			want(t, m, "ruleset", 7.0)
			want(t, m, "rule", `count("add_to_cart", "30m") > 0 && count("purchase_completed", "30m") == 0`)
			mod := m["module"].(map[string]any)
			want(t, mod, "member", true)
			want(t, mod, "error", false)
			want(t, m["stored"].(map[string]any), "member", true)
			in := m["inputs"].([]any)
			if len(in) != 2 || in[0].(map[string]any)["expr"] != `count("add_to_cart", "30m")` || in[0].(map[string]any)["value"] != 2.0 ||
				in[1].(map[string]any)["value"] != 0.0 {
				t.Errorf("inputs = %v", in)
			}
			steps := m["steps"].([]any)
			last := steps[len(steps)-1].(map[string]any)
			if last["expr"] != m["rule"] || last["value"] != true {
				t.Errorf("last step = %v", last)
			}
		}},
		{"not a member", "/v1/users/alice/explain?segment=buyer", "at", 200, func(t *testing.T, m map[string]any) {
			want(t, m, "result", "false")
			want(t, m, "agree", true)
			want(t, m["module"].(map[string]any), "member", false)
			want(t, m["stored"].(map[string]any), "member", false)
		}},
		{"request segment: the edge's to explain", "/v1/users/alice/explain?segment=mobile_visitor", "at", 200, func(t *testing.T, m map[string]any) {
			want(t, m, "result", "error: needs a request")
			want(t, m, "agree", true)
			want(t, m["module"].(map[string]any), "error", true)
			if h, _ := m["hint"].(string); !strings.Contains(h, "/user/explain") {
				t.Errorf("hint = %q", h)
			}
		}},
		{"unknown segment", "/v1/users/alice/explain?segment=nope", "at", 404, func(t *testing.T, m map[string]any) {
			if segs, _ := m["segments"].([]any); len(segs) != 3 {
				t.Errorf("segments = %v", m["segments"])
			}
		}},
		{"no segment", "/v1/users/alice/explain", "at", 400, nil},
		{"unknown user", "/v1/users/bob/explain?segment=buyer", "at", 404, nil},
		{"read key is not enough", "/v1/users/alice/explain?segment=buyer", "rk", 403, nil},
		{"no token", "/v1/users/alice/explain?segment=buyer", "", 401, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, m := x.get(t, tc.path, tc.token)
			if code != tc.status {
				t.Fatalf("status = %d, want %d: %v", code, tc.status, m)
			}
			if tc.check != nil {
				tc.check(t, m)
			}
		})
	}
	if n := counterValue(t, x.reg, "segedge_origin_explain_disagreements_total"); n != 0 {
		t.Errorf("disagreements = %v, want 0", n)
	}
}

// A module that computes something else than its rule says (a compiler bug) is reported: in the
// answer, the metric, and an error log that does not name the user.
func TestExplainReportsDisagreement(t *testing.T) {
	bug := strings.Replace(explainTestRules, `count("add_to_cart", "30m") > 0 &&`, `count("add_to_cart", "30m") == 0 &&`, 1)
	x := newExplainOrigin(t, explainTestRules, bug)
	x.apply(t, "alice@example.com", "add_to_cart")
	code, m := x.get(t, "/v1/users/alice@example.com/explain?segment=cart_abandoner", "at")
	if code != 200 {
		t.Fatalf("status = %d: %v", code, m)
	}
	want(t, m, "result", "true")
	want(t, m, "agree", false)
	want(t, m["module"].(map[string]any), "member", false)
	if d, _ := m["disagreement"].(string); !strings.Contains(d, "says true") || !strings.Contains(d, "module says false") {
		t.Errorf("disagreement = %q", d)
	}
	if n := counterValue(t, x.reg, "segedge_origin_explain_disagreements_total"); n != 1 {
		t.Errorf("disagreements = %v, want 1", n)
	}
	logs := x.log.String()
	if !strings.Contains(logs, "disagree") || !strings.Contains(logs, `"user":"`+ops.UserRef("alice@example.com")+`"`) {
		t.Errorf("no error log with the hashed user: %s", logs)
	}
	if strings.Contains(logs, "alice@example.com") {
		t.Errorf("raw user id in the log: %s", logs)
	}
	// The segment the bug does not touch still agrees.
	if _, m := x.get(t, "/v1/users/alice@example.com/explain?segment=buyer", "at"); m["agree"] != true {
		t.Errorf("buyer: %v", m)
	}
}

func want(t *testing.T, m map[string]any, key string, v any) {
	t.Helper()
	if m[key] != v {
		t.Errorf("%s = %#v, want %#v", key, m[key], v)
	}
}

func counterValue(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("%s not registered", name)
	return 0
}
