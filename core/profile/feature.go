package profile

import "time"

// FeatureKind says which aggregate of a profile a rule reads.
type FeatureKind uint8

const (
	// FeatureTrait is a trait set by events: trait("plan").
	FeatureTrait FeatureKind = iota + 1
	// FeatureCount is the number of events of a type in a trailing window: count("add_to_cart", "30m").
	FeatureCount
	// FeatureSum is the sum of a numeric prop over events of a type in a window: sum("purchase_completed", "amount", "7d").
	FeatureSum
	// FeatureSince is the number of seconds since the last event of a type: since("page_view").
	FeatureSince
	// FeatureScore is an exponentially decayed score: score("engagement").
	FeatureScore
)

// Feature names one value that rules read from a profile. It is comparable, so it can key maps.
type Feature struct {
	Kind   FeatureKind
	Name   string        // trait name, event type (count, sum, since) or score name
	Prop   string        // the numeric prop summed (FeatureSum only)
	Window time.Duration // trailing window (FeatureCount, FeatureSum only)
}
