package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/edge/identity"
	"github.com/segedge/segedge/edge/replica"
	"github.com/segedge/segedge/wasm"
	wruleset "github.com/segedge/segedge/wasm/ruleset"
)

const edgeExplainRules = `
segments:
  - name: mobile_visitor
    rule: request.device == "mobile"
  - name: spring_campaign
    rule: request.query("utm") == "spring" && request.path.startsWith("/shop")
`

// newExplainEdge is an edge with a ruleset whose manifest (rules) comes from manifestSrc and
// whose compiled module from moduleSrc: another source stands for a compiler bug.
func newExplainEdge(t *testing.T, manifestSrc, moduleSrc string) (*edge, *prometheus.Registry, *bytes.Buffer) {
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
	ev, err := wruleset.Load(ctx, rt, "explain-test", &rules.Ruleset{Module: mod.Module, Manifest: man.Manifest})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ev.Close)
	rep, err := replica.New(replica.Config{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := identity.NewSigner(identity.RandomKey())
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	e := &edge{cfg: Config{DebugToken: "dbg", CountryHeader: "CF-IPCountry"}, log: slog.New(slog.NewJSONHandler(&logs, nil)),
		replica: rep, signer: signer, explain: newExplainer(reg)}
	e.rs.Store(&edgeRuleset{version: 5, ev: ev, man: ev.Manifest(), featIDs: make([]uint16, len(ev.Manifest().Inputs))})
	return e, reg, &logs
}

func explainRequestCtx(uri, ua string) *fasthttp.RequestCtx {
	var ctx fasthttp.RequestCtx
	ctx.Request.SetRequestURI(uri)
	ctx.Request.Header.Set("Segedge-Debug", "dbg")
	ctx.Request.Header.Set("User-Agent", ua)
	ctx.Request.Header.Set("CF-IPCountry", "DE")
	return &ctx
}

func TestEdgeExplain(t *testing.T) {
	const iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
	e, _, _ := newExplainEdge(t, edgeExplainRules, edgeExplainRules)
	for _, tc := range []struct {
		name, uri, ua string
		status        int
		result        string
		req           map[string]any
	}{
		{"phone", "/user/explain?segment=mobile_visitor&user_id=u1", iphone, 200, "true", map[string]any{"device": "mobile", "country": "DE", "path": "/"}},
		{"desktop", "/user/explain?segment=mobile_visitor", "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0", 200, "false", map[string]any{"device": "desktop"}},
		{"page path and its query", "/user/explain?segment=spring_campaign&path=%2Fshop%2Fshoes%3Futm%3Dspring", iphone, 200, "true", map[string]any{"path": "/shop/shoes"}},
		{"the explain request's own query is not the page's", "/user/explain?segment=spring_campaign&utm=spring&path=/shop", iphone, 200, "error:", nil},
		{"bad path", "/user/explain?segment=mobile_visitor&path=shop", iphone, 400, "", nil},
		{"unknown segment", "/user/explain?segment=nope", iphone, 404, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := explainRequestCtx(tc.uri, tc.ua)
			e.explain.serve(e, ctx)
			if ctx.Response.StatusCode() != tc.status {
				t.Fatalf("status %d, want %d: %s", ctx.Response.StatusCode(), tc.status, ctx.Response.Body())
			}
			if cc := string(ctx.Response.Header.Peek("Cache-Control")); cc != "private, no-store" {
				t.Errorf("Cache-Control %q", cc)
			}
			if tc.status != 200 {
				return
			}
			var m map[string]any
			if err := json.Unmarshal(ctx.Response.Body(), &m); err != nil {
				t.Fatal(err)
			}
			if r, _ := m["result"].(string); !strings.HasPrefix(r, tc.result) {
				t.Errorf("result %q, want %q", r, tc.result)
			}
			if m["agree"] != true {
				t.Errorf("agree = %v: %s", m["agree"], ctx.Response.Body())
			}
			for k, v := range tc.req {
				if got := m["request"].(map[string]any)[k]; got != v {
					t.Errorf("request.%s = %v, want %v", k, got, v)
				}
			}
		})
	}
	if n := testutil.ToFloat64(e.explain.disagreements); n != 0 {
		t.Errorf("disagreements = %v", n)
	}
}

// A module that computes something else than its rule says is reported: in the answer, the
// metric and an error log naming the user by hash only.
func TestEdgeExplainReportsDisagreement(t *testing.T) {
	bug := strings.Replace(edgeExplainRules, `request.device == "mobile"`, `request.device != "mobile"`, 1)
	e, _, logs := newExplainEdge(t, edgeExplainRules, bug)
	ctx := explainRequestCtx("/user/explain?segment=mobile_visitor&user_id=bob@example.com", "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0")
	e.explain.serve(e, ctx)
	var m map[string]any
	if err := json.Unmarshal(ctx.Response.Body(), &m); err != nil {
		t.Fatalf("%v: %s", err, ctx.Response.Body())
	}
	if m["agree"] != false || m["result"] != "false" || !strings.Contains(m["disagreement"].(string), "module says true") {
		t.Errorf("answer: %s", ctx.Response.Body())
	}
	if n := testutil.ToFloat64(e.explain.disagreements); n != 1 {
		t.Errorf("disagreements = %v, want 1", n)
	}
	if l := logs.String(); !strings.Contains(l, `"user":"`+ops.UserRef("bob@example.com")+`"`) || strings.Contains(l, "bob@example.com") {
		t.Errorf("log: %s", l)
	}
}
