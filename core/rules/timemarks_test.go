package rules

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/segedge/segedge/core/profile"
)

// TestTimeMarks: a comparison of since() or score() with a number literal, on either side and
// inside && / || / !, records where its answer turns; other uses record nothing.
func TestTimeMarks(t *testing.T) {
	for _, tc := range []struct {
		rule  string
		since map[string][]int64
		score map[string][]float64
	}{
		{rule: `since("page_view") < 3600`, since: map[string][]int64{"page_view": {3600}}},
		{rule: `since("page_view") >= 3600`, since: map[string][]int64{"page_view": {3600}}},
		{rule: `since("page_view") <= 3600`, since: map[string][]int64{"page_view": {3601}}},
		{rule: `since("purchase") > 2592000`, since: map[string][]int64{"purchase": {2592001}}},
		{rule: `2592000 < since("purchase")`, since: map[string][]int64{"purchase": {2592001}}},
		{rule: `3600 > since("page_view")`, since: map[string][]int64{"page_view": {3600}}},
		{rule: `since("page_view") == 60`, since: map[string][]int64{"page_view": {60, 61}}},
		{rule: `since("page_view") != 60`, since: map[string][]int64{"page_view": {60, 61}}},
		{rule: `since("page_view") < 59.5`, since: map[string][]int64{"page_view": {60}}},
		{rule: `since("page_view") > 59.5`, since: map[string][]int64{"page_view": {60}}},
		{rule: `since("page_view") >= 0 && since("page_view") > -5`}, // always true
		{rule: `since("a") < 60 && !(since("b") > 10) || since("a") < 3600`,
			since: map[string][]int64{"a": {60, 3600}, "b": {11}}},
		{rule: `score("engagement") > 80`, score: map[string][]float64{"engagement": {80}}},
		{rule: `score("engagement") > 80.5 || 10 > score("engagement")`, score: map[string][]float64{"engagement": {10, 80.5}}},
		{rule: `score("engagement") < -3.0 && score("engagement") != 0.0`, score: map[string][]float64{"engagement": {-3}}},
		{rule: `score("engagement") >= 80 && since("page_view") < 600`,
			since: map[string][]int64{"page_view": {600}}, score: map[string][]float64{"engagement": {80}}},
		// Not reducible to feature-vs-literal: nothing recorded.
		{rule: `since("page_view") / 60 < 5`},
		{rule: `since("page_view") < since("purchase")`},
		{rule: `since("page_view") < request.hour`},
		{rule: `score("engagement") * 2.0 > 80.0`},
		{rule: `score("engagement") > sum("purchase", "amount", "7d")`},
		{rule: `count("add_to_cart", "30m") > 0 && trait("age") > 18`},
	} {
		f := &File{Scores: []ScoreDef{{Name: "engagement", HalfLife: time.Hour}},
			Segments: []SegmentDef{{Name: "s", Rule: tc.rule}}}
		rs, err := Compile(f)
		if err != nil {
			t.Errorf("%s: %v", tc.rule, err)
			continue
		}
		m := &rs.Manifest
		if !reflect.DeepEqual(m.SinceMarks, tc.since) || !reflect.DeepEqual(m.ScoreMarks, tc.score) {
			t.Errorf("%s: since marks %v, score marks %v; want %v, %v", tc.rule, m.SinceMarks, m.ScoreMarks, tc.since, tc.score)
		}
	}
}

// TestSinceMarksAreWhereTheAnswerTurns holds the since() marks to the evaluator: evaluated at
// every whole second, the rule's answer changes exactly at the marks.
func TestSinceMarksAreWhereTheAnswerTurns(t *testing.T) {
	for _, rule := range []string{
		`since("a") < 30`, `since("a") <= 30`, `since("a") > 30`, `since("a") >= 30`,
		`since("a") == 30`, `since("a") != 30`, `30 < since("a")`, `30 >= since("a")`,
		`since("a") < 29.5`, `since("a") >= 29.5`, `since("a") > 29.5 && since("a") <= 45`,
	} {
		rs, err := Compile(&File{Segments: []SegmentDef{{Name: "s", Rule: rule}}})
		if err != nil {
			t.Fatalf("%s: %v", rule, err)
		}
		ref, err := NewReference(&rs.Manifest)
		if err != nil {
			t.Fatal(err)
		}
		res := rs.Manifest.NewResult()
		member := func(v int64) bool {
			ref.Evaluate(TestFeatures{{Kind: profile.FeatureSince, Name: "a"}: profile.IntValue(v)}, nil, time.Now(), res)
			return res.IsMember(0)
		}
		var turns []int64
		for v := int64(1); v <= 60; v++ {
			if member(v) != member(v-1) {
				turns = append(turns, v)
			}
		}
		if got := rs.Manifest.SinceMarks["a"]; !reflect.DeepEqual(got, turns) {
			t.Errorf("%s: since marks %v, but the answer turns at %v", rule, got, turns)
		}
	}
}

// TestTimeMarksInTheManifestJSON: marks travel with the stored manifest, and a manifest
// without any (every one stored before marks existed) reads as it did.
func TestTimeMarksInTheManifestJSON(t *testing.T) {
	rs, err := Compile(&File{Scores: []ScoreDef{{Name: "e", HalfLife: time.Hour}},
		Segments: []SegmentDef{{Name: "s", Rule: `since("a") < 60 && score("e") > 8.5`}, {Name: "c", Rule: `count("a", "1h") > 0`}}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(rs.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	var back Manifest
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if got := back.TimeMarks(); !maps.EqualFunc(got.Since, map[string][]int64{"a": {60}}, slicesEqual) ||
		!maps.EqualFunc(got.Score, map[string][]float64{"e": {8.5}}, slicesEqual) {
		t.Errorf("marks after a JSON round trip: %+v", got)
	}
	spec, err := profile.NewSpec(back.Features(), back.ScoreSpecs(), back.TimeMarks())
	if err != nil || !reflect.DeepEqual(spec.SinceMarks, map[string][]int64{"a": {60}}) {
		t.Errorf("spec from the manifest: %v, %+v", err, spec)
	}

	rs, err = Compile(&File{Segments: []SegmentDef{{Name: "c", Rule: `count("a", "1h") > 0`}}})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ = json.Marshal(rs.Manifest); strings.Contains(string(b), "marks") {
		t.Errorf("a ruleset without marks writes them: %s", b)
	}
}

func slicesEqual[T comparable](a, b []T) bool { return reflect.DeepEqual(a, b) }

// A file may compare one since() or score() with at most MaxTimeMarks distinct constants: the
// origin looks for the next one after every evaluation. One more is a compile error naming the
// feature; MaxTimeMarks is fine.
func TestTimeMarksPerFeatureAreBounded(t *testing.T) {
	rule := func(fn string, n int) string {
		var parts []string
		for i := 1; i <= n; i++ {
			parts = append(parts, fmt.Sprintf("%s < %d", fn, i*10))
		}
		return strings.Join(parts, " || ")
	}
	for _, tc := range []struct {
		fn    string
		n     int
		fails bool
	}{
		{`since("page_view")`, MaxTimeMarks, false},
		{`since("page_view")`, MaxTimeMarks + 1, true},
		{`score("engagement")`, MaxTimeMarks, false},
		{`score("engagement")`, MaxTimeMarks + 1, true},
	} {
		f := &File{Scores: []ScoreDef{{Name: "engagement", HalfLife: time.Hour}},
			Segments: []SegmentDef{{Name: "s", Rule: rule(tc.fn, tc.n)}}}
		_, err := Compile(f)
		if (err != nil) != tc.fails || (err != nil && !strings.Contains(err.Error(), "more than 256 distinct constants")) {
			t.Errorf("%s with %d constants: err = %v, want failure %v", tc.fn, tc.n, err, tc.fails)
		}
	}
}
