package rules

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

const explainRules = `
segments:
  - name: cart_abandoner
    rule: count("add_to_cart", "30m") > 0 && count("purchase_completed", "30m") == 0
  - name: high_engagement
    rule: score("engagement") > 20
  - name: gold
    rule: trait("plan") == "gold"
  - name: german_mobile_vip
    rule: request.country == "DE" && request.device == "mobile" && segment("high_engagement")
  - name: campaign
    rule: request.query("utm") == "spring" || request.hasCookie("seen")
scores:
  engagement: {half_life: 7d, weights: {page_view: 1}}
tests:
  # 0: a cart, no purchase, desktop in Germany
  - profile: {counts: {add_to_cart/30m: 2}, scores: {engagement: 50}}
    request: {country: DE, device: desktop, query: {utm: spring}}
  # 1: mobile in Germany, engaged; a gold plan
  - profile: {scores: {engagement: 90}, traits: {plan: gold}}
    request: {country: DE, device: mobile, cookies: {seen: "1"}}
  # 2: no request (the origin)
  - profile: {scores: {engagement: 90}}
`

func TestExplainSegment(t *testing.T) {
	f, err := Parse("explain.yaml", []byte(explainRules))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := NewReference(&rs.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	type val struct {
		expr string
		want string // JSON of the value; "absent"; or "error:" + a part of the message
	}
	for _, tc := range []struct {
		name    string
		test    int
		segment string
		result  string
		inputs  []val
		steps   []val // a subset, in order; the last is the whole rule
		segs    []val
	}{
		{"cart and no purchase", 0, "cart_abandoner", "true",
			[]val{{`count("add_to_cart", "30m")`, "2"}, {`count("purchase_completed", "30m")`, "0"}},
			[]val{{`count("add_to_cart", "30m") > 0`, "true"}, {`count("purchase_completed", "30m") == 0`, "true"},
				{`count("add_to_cart", "30m") > 0 && count("purchase_completed", "30m") == 0`, "true"}}, nil},
		{"desktop is not mobile", 0, "german_mobile_vip", "false",
			[]val{{`request.country`, `"DE"`}, {`request.device`, `"desktop"`}},
			[]val{{`request.country == "DE"`, "true"}, {`request.device == "mobile"`, "false"}, {`segment("high_engagement")`, "true"}},
			[]val{{`segment("high_engagement")`, `"true"`}}},
		{"all three hold", 1, "german_mobile_vip", "true",
			[]val{{`request.country`, `"DE"`}, {`request.device`, `"mobile"`}},
			[]val{{`request.device == "mobile"`, "true"}}, []val{{`segment("high_engagement")`, `"true"`}}},
		{"missing trait is an error", 0, "gold", "error:",
			[]val{{`trait("plan")`, "absent"}},
			[]val{{`trait("plan")`, "error:no value"}, {`trait("plan") == "gold"`, "error:"}}, nil},
		{"trait present", 1, "gold", "true", []val{{`trait("plan")`, `"gold"`}}, []val{{`trait("plan") == "gold"`, "true"}}, nil},
		{"query and cookie: both sides shown", 0, "campaign", "true",
			[]val{{`request.query("utm")`, `"spring"`}, {`request.hasCookie("seen")`, "absent"}},
			[]val{{`request.query("utm") == "spring"`, "true"}, {`request.hasCookie("seen")`, "false"}}, nil},
		{"no request at the origin", 2, "german_mobile_vip", "error: needs a request",
			[]val{{`request.country`, "absent"}, {`request.device`, "absent"}},
			[]val{{`request.country == "DE"`, "error:"}}, []val{{`segment("high_engagement")`, `"true"`}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prof, req, err := f.Tests[tc.test].Sources()
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			ex, err := ref.ExplainSegment(tc.segment, prof, req, now)
			if err != nil {
				t.Fatal(err)
			}
			if ex.Rule != rs.Manifest.Segments[rs.Manifest.Segment(tc.segment)].Rule {
				t.Errorf("rule = %q", ex.Rule)
			}
			if !strings.HasPrefix(ex.Result, tc.result) || (tc.result != "error:" && ex.Result != tc.result) {
				t.Errorf("result = %q, want %q", ex.Result, tc.result)
			}
			// The result is the reference evaluator's, and the compiled-module contract's.
			if want := ref.Explain(prof, req, now)[tc.segment]; ex.Result != want {
				t.Errorf("result %q, Explain says %q", ex.Result, want)
			}
			check := func(kind string, got []ExplainedValue, want []val, ordered bool) {
				t.Helper()
				j := 0
				for _, w := range want {
					found := false
					for ; j < len(got); j++ {
						if got[j].Expr == w.expr {
							found = true
							matchValue(t, kind, got[j], w.want)
							break
						}
						if !ordered {
							continue
						}
					}
					if !found {
						t.Errorf("%s: no %s in %+v", kind, w.expr, got)
					}
					if !ordered {
						j = 0
					}
				}
			}
			check("inputs", ex.Inputs, tc.inputs, false)
			if len(ex.Inputs) != len(tc.inputs) {
				t.Errorf("inputs = %+v, want %d", ex.Inputs, len(tc.inputs))
			}
			check("steps", ex.Steps, tc.steps, true)
			check("segments", ex.Segments, tc.segs, false)
			last := ex.Steps[len(ex.Steps)-1]
			if last.Expr != ex.Rule {
				t.Errorf("last step %q is not the rule %q", last.Expr, ex.Rule)
			}
			if _, err := json.Marshal(ex); err != nil {
				t.Errorf("JSON: %v", err)
			}
		})
	}
	if _, err := ref.ExplainSegment("nope", nil, nil, time.Now()); err == nil {
		t.Error("an unknown segment must be an error")
	}
}

func matchValue(t *testing.T, kind string, got ExplainedValue, want string) {
	t.Helper()
	switch {
	case want == "absent":
		if !got.Absent || got.Value != nil {
			t.Errorf("%s %s = %+v, want absent", kind, got.Expr, got)
		}
	case strings.HasPrefix(want, "error:"):
		if got.Error == "" || !strings.Contains(got.Error, strings.TrimPrefix(want, "error:")) {
			t.Errorf("%s %s = %+v, want an error with %q", kind, got.Expr, got, strings.TrimPrefix(want, "error:"))
		}
	default:
		b, _ := json.Marshal(got.Value)
		if string(b) != want || got.Error != "" || got.Absent {
			t.Errorf("%s %s = %s (%+v), want %s", kind, got.Expr, b, got, want)
		}
	}
}

func TestExplanationAgrees(t *testing.T) {
	for _, tc := range []struct {
		result        string
		member, isErr bool
		want          bool
	}{
		{"true", true, false, true}, {"true", false, false, false}, {"true", true, true, false},
		{"false", false, false, true}, {"false", true, false, false}, {"false", false, true, false},
		{"error: no value", false, true, true}, {"error: no value", false, false, false}, {"error: x", true, true, false},
	} {
		if got := (&Explanation{Result: tc.result}).Agrees(tc.member, tc.isErr); got != tc.want {
			t.Errorf("%q agrees with member=%v error=%v: %v, want %v", tc.result, tc.member, tc.isErr, got, tc.want)
		}
	}
}
