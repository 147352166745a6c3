package rulesets

import (
	"testing"
	"time"

	"github.com/segedge/segedge/core/profile"
)

func TestTheEventTypesARulesetReads(t *testing.T) {
	count := profile.Feature{Kind: profile.FeatureCount, Name: "add_to_cart", Window: 30 * time.Minute}
	sum := profile.Feature{Kind: profile.FeatureSum, Name: "purchase", Prop: "amount", Window: 24 * time.Hour}
	trait := profile.Feature{Kind: profile.FeatureTrait, Name: "plan"}
	since := profile.Feature{Kind: profile.FeatureSince, Name: "page_view"}
	score := profile.Feature{Kind: profile.FeatureScore, Name: "engagement"}
	tests := []struct {
		name     string
		features []profile.Feature
		reads    []string // types that must be read
		ignores  []string // types that must not be
	}{
		{"windows read their types", []profile.Feature{count, sum}, []string{"add_to_cart", "purchase"}, []string{"page_view", "identify"}},
		{"traits are set by identify", []profile.Feature{trait}, []string{"identify"}, []string{"add_to_cart"}},
		{"since() changes with time: every type", []profile.Feature{count, since}, []string{"add_to_cart", "page_view", "anything"}, nil},
		{"a decayed score changes with time: every type", []profile.Feature{score}, []string{"anything"}, nil},
		{"no profile feature: no type", nil, nil, []string{"add_to_cart", "identify"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			types, all := eventTypesRead(tt.features)
			v := &Version{reads: types, readsAll: all}
			for _, typ := range tt.reads {
				if !v.ReadsEventType(typ) {
					t.Errorf("ReadsEventType(%q) = false, want true", typ)
				}
			}
			for _, typ := range tt.ignores {
				if v.ReadsEventType(typ) {
					t.Errorf("ReadsEventType(%q) = true, want false", typ)
				}
			}
		})
	}
}
