// Package bench holds what scripts/bench-edge.sh and scripts/bench-origin.sh need besides the
// upstream program: the rulesets they upload. This test keeps those files valid as the rules
// vocabulary evolves, so a benchmark never silently measures without a ruleset because of a
// stale file.
package bench

import (
	"os"
	"testing"

	"github.com/segedge/segedge/core/rules"
)

func TestBenchRulesetsCompileAndPassTheirTests(t *testing.T) {
	for _, tc := range []struct {
		file string
		// slots: the edge benchmark's upstream page has hero, promo and footer (0: not checked);
		// features: at least this many profile values, which every delta carries to the edges.
		slots, features int
	}{
		{file: "rules.yaml", slots: 3},
		{file: "rules-edge-features.yaml", features: 3}, // bench-origin.sh's changed-only deltas
	} {
		t.Run(tc.file, func(t *testing.T) {
			data, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			f, err := rules.Parse(tc.file, data)
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
			if tc.slots > 0 && len(f.Slots) != tc.slots {
				t.Errorf("slots = %d, want %d (hero, promo, footer: the upstream page's slots)", len(f.Slots), tc.slots)
			}
			if got := len(rs.Manifest.Features()); got < tc.features {
				t.Errorf("%d profile features, want at least %d", got, tc.features)
			}
		})
	}
}
