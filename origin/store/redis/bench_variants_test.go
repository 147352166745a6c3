package redis

import "github.com/segedge/segedge/origin/store"

// benchVariants are the store configurations BenchmarkApplyBatch compares.
func benchVariants() []struct {
	name string
	opts store.Options
} {
	return []struct {
		name string
		opts store.Options
	}{{"Cached", store.Options{}}, {"Uncached", store.Options{CacheProfiles: -1}}}
}
