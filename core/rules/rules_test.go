package rules

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/segedge/segedge/core/profile"
)

func mustParse(t *testing.T, name, text string) *File {
	t.Helper()
	f, err := Parse(name, []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestExampleFileCompilesAndPassesItsTests(t *testing.T) {
	data, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := Parse("example.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := RunTests(f, rs); err != nil {
		t.Fatal(err)
	}
	m := rs.Manifest
	if got := m.Segments[2]; !got.NeedsRequest || got.DependsOn[0] != "high_engagement" {
		t.Errorf("german_mobile_vip: %+v", got)
	}
	if m.Segments[0].NeedsRequest || m.Segments[1].NeedsRequest {
		t.Errorf("profile-only segments marked as needing a request: %+v", m.Segments[:2])
	}
	if m.Slots[0].Variants[1].Segment != 0 || m.OutputLen() != 16+4 {
		t.Errorf("slots %+v, output len %d", m.Slots, m.OutputLen())
	}
	// request.country is only compared with constants: interned.
	for _, in := range m.Inputs {
		if in.Request == FieldCountry && (!in.Interned || len(in.Strings) != 1 || in.Strings[0] != "DE") {
			t.Errorf("country input %+v, want interned [DE]", in)
		}
		if in.Request == FieldQuery && in.Interned {
			t.Errorf("query input is used with startsWith, so it must not be interned: %+v", in)
		}
	}
	// The manifest survives JSON.
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var back Manifest
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.OutputLen() != m.OutputLen() || len(back.Inputs) != len(m.Inputs) || back.Inputs[0].Feature != m.Inputs[0].Feature {
		t.Errorf("manifest changed through JSON:\n%s", b)
	}
	if len(f.Modules) != 1 || len(f.Triggers) != 2 || f.Triggers[1].Kind != TriggerThreshold {
		t.Errorf("modules %+v triggers %+v", f.Modules, f.Triggers)
	}
}

func TestFailingFileTest(t *testing.T) {
	f := mustParse(t, "t.yaml", `
segments:
  - {name: a, rule: 'count("x", "1h") > 1'}
tests:
  - profile: {counts: {x/1h: 1}}
    expect: {a: true}
`)
	rs, err := Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	err = RunTests(f, rs)
	if err == nil || !strings.Contains(err.Error(), "t.yaml:5:5: test 1: a is false, want true") {
		t.Fatalf("got %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"segments:\n  - name: a\n    rule: x\n    colour: red\n", `f.yaml:4:5: unknown field "colour" in a segment; use description, name, rule`},
		{"segment: []\n", `f.yaml:1:1: unknown field "segment" in the rules file`},
		{"segments:\n  - name: Bad-Name\n    rule: 'true'\n", `f.yaml:2:11: segment name "Bad-Name" is not a valid name`},
		{"segments:\n  - name: a\n", `f.yaml:2:5: segment has no rule; add it`},
		{"scores:\n  e: {half_life: 30x, weights: {a: 1}}\n", `f.yaml:2:18: half_life: unknown event window "30x"; use s, m, h or d`},
		{"triggers:\n  - {name: t, on: 'enter(\"a\")', webhook: 'ftp://x'}\n", `webhook "ftp://x" is not an http(s) URL`},
		{"slots:\n  - name: s\n    variants:\n      - {when: a, html: x, fragment: /y}\n", `f.yaml:4:9: a variant needs exactly one of html and fragment`},
		{"tests:\n  - request: {hour: 24}\n", `f.yaml:2:21: hour 24 is out of range; use 0 to 23`},
		{"tests:\n  - profile: {counts: {x: 1}}\n", `f.yaml:2:24: counts: key "x": write event_type/window`},
		{"modules:\n  - {path: m.wasm, segments: [a], features: ['count(\"a\", 3)']}\n", `feature "count(\"a\", 3)"`},
		{"segments: {a: 1}\n", `f.yaml:1:11: segments must be a list`},
		{"{", `f.yaml: yaml:`},
		{"", `f.yaml:1:1: the file is empty`},
	} {
		_, err := Parse("f.yaml", []byte(tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q:\n got %v\nwant %s", tc.text, err, tc.want)
		}
	}
}

func TestJSONFile(t *testing.T) {
	f := mustParse(t, "r.json", `{"segments": [{"name": "a", "rule": "request.hour >= 18"}],
  "tests": [{"request": {"hour": 19}, "expect": {"a": true}}, {"request": {"hour": 3}, "expect": {"a": false}}]}`)
	rs, err := Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := RunTests(f, rs); err != nil {
		t.Fatal(err)
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct{ name, rules, want string }{
		{"window unit", `- {name: cart_abandoner, rule: 'count("add_to_cart", "30x") > 0'}`,
			`rule cart_abandoner 1:22: unknown event window "30x"; use s, m, h or d`},
		{"window too short", `- {name: a, rule: 'count("x", "30s") > 0'}`, `event window "30s" is too short; use at least 1m`},
		{"window too long", `- {name: a, rule: 'sum("x", "p", "91d") > 0.0'}`, `event window "91d" is too long; use at most 90d`},
		{"non-literal argument", `- {name: a, rule: 'count(request.path, "1h") > 0'}`, `rule a 1:14: argument 1 of count must be a string literal`},
		{"undeclared", `- {name: a, rule: 'foo > 1'}`, `rule a 1:1: undeclared reference to 'foo'`},
		{"not bool", `- {name: a, rule: '1 + 2'}`, `the rule is of type int; a rule must be a boolean expression`},
		{"unknown segment", `- {name: a, rule: 'segment("b")'}`, `rule a 1:8: unknown segment "b"`},
		{"unknown score", `- {name: a, rule: 'score("nope") > 1.0'}`, `unknown score "nope"; declare it under scores`},
		{"cycle", "- {name: a, rule: 'segment(\"b\")'}\n- {name: b, rule: 'segment(\"c\") || true'}\n- {name: c, rule: 'segment(\"a\")'}",
			`segment cycle a -> b -> c -> a`},
		{"self", `- {name: a, rule: '!segment("a")'}`, `segment cycle a -> a`},
		{"concatenation", `- {name: a, rule: 'request.path + "x" == "y"'}`, `arithmetic on strings (concatenation) is not supported`},
		{"regex", `- {name: a, rule: 'request.path.matches("x")'}`, `function matches is not supported`},
		{"map", `- {name: a, rule: '{"a": 1}["a"] == 1'}`, `is not supported`},
		{"in non-literal", `- {name: a, rule: 'request.path in ["a"] == ("b" in ["b"])'}`, ``},
		{"duplicate", "- {name: a, rule: 'true'}\n- {name: a, rule: 'false'}", `segment "a" is defined twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := mustParse(t, "r.yaml", "scores: {e: {half_life: 1d, weights: {x: 1}}}\nsegments:\n"+tc.rules+"\n")
			_, err := Compile(f)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v\nwant %s", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "r.yaml:") {
				t.Errorf("error without file position: %v", err)
			}
		})
	}
}

func TestParseWindow(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"1m", time.Minute, false}, {"60s", time.Minute, false}, {"30m", 30 * time.Minute, false},
		{"24h", 24 * time.Hour, false}, {"90d", 90 * 24 * time.Hour, false}, {"59s", 0, true},
		{"91d", 0, true}, {"", 0, true}, {"5", 0, true}, {"1w", 0, true}, {"-1h", 0, true},
		{"99999999999999999999d", 0, true}, {"1.5h", 0, true},
	} {
		got, err := ParseWindow(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseWindow(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestParseFeature(t *testing.T) {
	for in, want := range map[string]Input{
		`count("add_to_cart", "30m")`:         {Feature: profile.Feature{Kind: profile.FeatureCount, Name: "add_to_cart", Window: 30 * time.Minute}},
		`sum("purchase", "amount", "7d")`:     {Feature: profile.Feature{Kind: profile.FeatureSum, Name: "purchase", Prop: "amount", Window: 7 * 24 * time.Hour}},
		`trait("plan")`:                       {Feature: profile.Feature{Kind: profile.FeatureTrait, Name: "plan"}},
		`score("engagement")`:                 {Feature: profile.Feature{Kind: profile.FeatureScore, Name: "engagement"}},
		`request.country`:                     {Request: FieldCountry},
		`request.header("X-Forwarded-Proto")`: {Request: FieldHeader, Key: "x-forwarded-proto"},
	} {
		got, err := ParseFeature(in)
		if err != nil || got.Request != want.Request || got.Key != want.Key || got.Feature != want.Feature {
			t.Errorf("ParseFeature(%s) = %+v, %v", in, got, err)
		}
	}
	for _, bad := range []string{`1`, `count("a")`, `segment("x")`, `trait("a") + 1`, `)`} {
		if _, err := ParseFeature(bad); err == nil {
			t.Errorf("ParseFeature(%s): no error", bad)
		}
	}
}

type fixedRequest struct{}

func (fixedRequest) Path() string                   { return "/shop/item" }
func (fixedRequest) Country() string                { return "DE" }
func (fixedRequest) Device() string                 { return "mobile" }
func (fixedRequest) Hour() int                      { return 20 }
func (fixedRequest) Bucket() int                    { return 42 }
func (fixedRequest) Query(string) (string, bool)    { return "newsletter", true }
func (fixedRequest) Header(string) (string, bool)   { return "", false }
func (fixedRequest) Cookie(n string) (string, bool) { return "c-" + n, true }

// TestVocabulary: one row per function, evaluated by the reference evaluator on a fixed
// profile and request. The module agrees with the reference on the whole vocabulary: see the
// differential test and TestFileTestsOnModule in wasm/ruleset.
func TestVocabulary(t *testing.T) {
	prof := TestFeatures{
		{Kind: profile.FeatureTrait, Name: "plan"}:                                               profile.StringValue("pro"),
		{Kind: profile.FeatureTrait, Name: "age"}:                                                profile.IntValue(30),
		{Kind: profile.FeatureCount, Name: "add_to_cart", Window: 30 * time.Minute}:              profile.IntValue(2),
		{Kind: profile.FeatureSum, Name: "purchase", Prop: "amount", Window: 7 * 24 * time.Hour}: profile.DoubleValue(120.5),
		{Kind: profile.FeatureSince, Name: "page_view"}:                                          profile.IntValue(90),
		{Kind: profile.FeatureScore, Name: "e"}:                                                  profile.DoubleValue(81),
	}
	for _, tc := range []struct {
		rule        string
		member, err bool
	}{
		{`trait("plan") == "pro"`, true, false},
		{`trait("age") >= 18`, true, false},
		{`trait("age") > 18.5`, true, false},
		{`trait("missing") == "x"`, false, true},
		{`hasTrait("missing")`, false, false},
		{`score("e") > 80.0`, true, false},
		{`count("add_to_cart", "30m") == 2`, true, false},
		{`count("never", "1h") == 0`, true, false},
		{`sum("purchase", "amount", "7d") > 100.0`, true, false},
		{`since("page_view") < 120`, true, false},
		{`since("never") < 120`, false, true},
		{`since("never") < 120 || true`, true, false},
		{`request.path.startsWith("/shop")`, true, false},
		{`request.path.endsWith("item") && request.path.contains("op/it")`, true, false},
		{`size(request.path) == 10`, true, false},
		{`request.country in ["DE", "AT"]`, true, false},
		{`request.device == "mobile" && request.hour >= 18 && request.bucket < 50`, true, false},
		{`request.query("utm_source") == "newsletter"`, true, false},
		{`request.header("x") == ""`, false, true},
		{`request.hasHeader("x")`, false, false},
		{`request.cookie("ab") == "c-ab"`, true, false},
		{`9223372036854775807 + count("add_to_cart", "30m") > 0`, false, true},
		{`10 / (count("add_to_cart", "30m") - 2) > 0`, false, true},
		{`10 % (count("add_to_cart", "30m") - 2) > 0`, false, true},
		{`1.0 / 0.0 > 1e308`, true, false},
		{`count("add_to_cart", "30m") > 1 ? trait("plan") == "pro" : false`, true, false},
		{`hasTrait("plan") && trait("plan").endsWith("ro")`, true, false},
		{`request.header("Accept-Language").startsWith("de")`, false, true},
		{`trait("age") + 1 == 31`, true, false},
		{`trait("plan") + 1 == 31`, false, true},
		{`segment("x") || true`, true, false},
		{`segment("x") && true`, false, true},
		{`1.0 / 0.0 * 0.0 < 1.0`, false, false},
		{`size("héllo") == 5`, true, false},
	} {
		f := &File{Scores: []ScoreDef{{Name: "e", HalfLife: time.Hour}},
			Segments: []SegmentDef{{Name: "s", Rule: tc.rule}, {Name: "x", Rule: `trait("missing") == 1`}}}
		rs, err := Compile(f)
		if err != nil {
			t.Errorf("%s: %v", tc.rule, err)
			continue
		}
		ref, err := NewReference(&rs.Manifest)
		if err != nil {
			t.Fatal(err)
		}
		res := rs.Manifest.NewResult()
		ref.Evaluate(prof, fixedRequest{}, time.Now(), res)
		if res.IsMember(0) != tc.member || res.IsError(0) != tc.err {
			t.Errorf("%s: member=%v error=%v, want %v %v (%v)", tc.rule, res.IsMember(0), res.IsError(0), tc.member, tc.err,
				ref.Explain(prof, fixedRequest{}, time.Now()))
		}
	}
}

func TestNoRequest(t *testing.T) {
	f := &File{Segments: []SegmentDef{
		{Name: "p", Rule: `count("x", "1h") == 0`},
		{Name: "r", Rule: `request.hasQuery("a") || true`},
		{Name: "d", Rule: `segment("r") || true`},
	}}
	rs, err := Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := NewReference(&rs.Manifest)
	res := rs.Manifest.NewResult()
	ref.Evaluate(nil, nil, time.Now(), res)
	if !res.IsMember(0) || res.IsError(0) || res.IsMember(1) || !res.IsError(1) || res.IsMember(2) || !res.IsError(2) {
		t.Fatalf("member %b error %b", res.Member[0], res.Error[0])
	}
}

func TestEncodeInputDoesNotAllocate(t *testing.T) {
	data, _ := os.ReadFile("testdata/example.yaml")
	f, _ := Parse("example.yaml", data)
	rs, err := Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	prof := TestFeatures{{Kind: profile.FeatureTrait, Name: "plan"}: profile.StringValue("pro")}
	buf := make([]byte, 0, rs.Manifest.InputCap)
	now := time.Now()
	if n := testing.AllocsPerRun(100, func() { buf = rs.Manifest.EncodeInput(buf[:0], prof, fixedRequest{}, now) }); n != 0 {
		t.Errorf("EncodeInput: %v allocs", n)
	}
}

func FuzzParse(f *testing.F) {
	data, _ := os.ReadFile("testdata/example.yaml")
	f.Add(data)
	f.Add([]byte(`{"segments": [{"name": "a", "rule": "true"}]}`))
	f.Add([]byte("segments:\n  - &a {name: a, rule: x}\n  - *a\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Parse("f", b)
		if err != nil {
			return
		}
		if rs, err := Compile(file); err == nil {
			_ = RunTests(file, rs)
		}
	})
}

func FuzzCompileRule(f *testing.F) {
	for _, r := range []string{`count("a", "1h") > 0`, `trait("x") in [1, "a", 2.0]`, `request.path.contains("x") ? 1 : 2`,
		`-(1 - 2) * 3 / 4 % 5 == 0`, `segment("s")`, `size("é") == 1`, `!request.hasCookie("c")`, `score("e") <= -1e308`} {
		f.Add(r)
	}
	f.Fuzz(func(t *testing.T, rule string) {
		file := &File{Scores: []ScoreDef{{Name: "e", HalfLife: time.Hour}},
			Segments: []SegmentDef{{Name: "s0", Rule: "true"}, {Name: "s", Rule: rule}}}
		rs, err := Compile(file)
		if err != nil {
			return
		}
		ref, err := NewReference(&rs.Manifest)
		if err != nil {
			t.Fatalf("compiled but the reference rejects it: %v", err)
		}
		res := rs.Manifest.NewResult()
		ref.Evaluate(nil, fixedRequest{}, time.Now(), res)
	})
}
