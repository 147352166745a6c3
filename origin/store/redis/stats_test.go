package redis

import (
	"testing"

	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/storetest"
)

// The cache counts say what happened: a first event reads the profile (miss), the next starts
// from memory (hit), and one after another origin wrote the user is refused once (stale).
func TestCacheStatsCountHitsMissesAndStaleWrites(t *testing.T) {
	clock := storetest.NewClock(t0)
	opts := store.Options{Now: clock.Now}
	s := newTestStore(t, opts)
	other := sibling(t, s, opts)
	mustApply(t, s, "a1", "u", "page_view")
	if got := s.CacheStats(); got != (CacheStats{Misses: 1}) {
		t.Fatalf("after the first event: %+v, want one miss", got)
	}
	mustApply(t, s, "a2", "u", "page_view")
	if got := s.CacheStats(); got != (CacheStats{Hits: 1, Misses: 1}) {
		t.Fatalf("after the second event: %+v, want a hit", got)
	}
	mustApply(t, other, "b1", "u", "page_view")
	mustApply(t, s, "a3", "u", "page_view")
	if got := s.CacheStats(); got != (CacheStats{Hits: 2, Misses: 1, Stale: 1}) {
		t.Fatalf("after another origin's write: %+v, want a hit refused as stale", got)
	}
}
