package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/segedge/segedge/origin/store"
)

// RunSample holds a store's Sample to its contract: at most n profiles, each a live profile with
// its current contents, none repeated, none expired, and all of them when n exceeds the count.
func RunSample(t *testing.T, newStore NewStore) {
	const users = 60
	tests := []struct {
		name string
		n    int
		want int
	}{
		{"none", 0, 0},
		{"fewer than stored", 25, 25},
		{"exactly stored", users, users},
		{"more than stored", 1000, users},
	}
	e := setup(t, newStore, store.Options{})
	for i := range users {
		id := fmt.Sprintf("user-%d", i)
		e.apply("e1", id, "page_view", t0, nil)
		e.apply("e2", id, "add_to_cart", t0, nil)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := e.s.Sample(e.ctx, tt.n)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.want {
				t.Fatalf("Sample(%d) returned %d profiles, want %d", tt.n, len(got), tt.want)
			}
			seen := map[string]bool{}
			for _, p := range got {
				if seen[p.UserID] {
					t.Errorf("Sample returned %q twice", p.UserID)
				}
				seen[p.UserID] = true
				v, ok := p.Value(cart30m, e.clock.Now())
				if !ok || v.Int != 1 {
					t.Errorf("sampled profile %q: add_to_cart/1h = %+v, %v; want 1", p.UserID, v, ok)
				}
			}
		})
	}
}

// RunSampleExpiry: a profile past its retention is never sampled (real time passes too: Redis
// expires keys on its own clock).
func RunSampleExpiry(t *testing.T, newStore NewStore) {
	e := setup(t, newStore, store.Options{Retention: time.Second})
	e.apply("1", "gone", "page_view", t0, nil)
	time.Sleep(1500 * time.Millisecond)
	e.clock.Advance(1500 * time.Millisecond)
	got, err := e.s.Sample(e.ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("Sample after retention returned %d profiles, want none", len(got))
	}
}
