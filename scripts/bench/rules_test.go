// Package bench holds what scripts/bench-edge.sh needs besides the upstream program: the
// ruleset it uploads. This test keeps that file valid as the rules vocabulary evolves, so the
// benchmark never silently measures an edge without a ruleset because of a stale file.
package bench

import (
	"os"
	"testing"

	"github.com/segedge/segedge/core/rules"
)

func TestBenchRulesetCompilesAndPassesItsTests(t *testing.T) {
	data, err := os.ReadFile("rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := rules.Parse("rules.yaml", data)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	rs, err := rules.Compile(f)
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	if err := rules.RunTests(f, rs); err != nil {
		t.Fatalf("the file's own tests: %v", err)
	}
	if got := len(f.Slots); got != 3 {
		t.Errorf("slots = %d, want 3 (hero, promo, footer: the upstream page's slots)", got)
	}
}

// The ruleset bench-origin.sh measures changed-only deltas with: valid, passing its own tests, and
// really reading profile values in request-scoped rules (else its deltas would carry none).
func TestEdgeFeaturesRulesetCompilesAndReadsProfileValuesAtTheEdge(t *testing.T) {
	data, err := os.ReadFile("rules-edge-features.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := rules.Parse("rules-edge-features.yaml", data)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	rs, err := rules.Compile(f)
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	if err := rules.RunTests(f, rs); err != nil {
		t.Fatalf("the file's own tests: %v", err)
	}
	if got := len(rs.Manifest.Features()); got < 3 {
		t.Errorf("%d profile features, want the plan, the cart count and the purchase sum at least", got)
	}
}
