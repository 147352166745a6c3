package memory

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/segedge/segedge/core/profile"
)

// Sample implements store.Store: it walks the shards from a random one, taking live profiles
// until it has n. Each shard is locked only while it is read.
func (s *Store) Sample(ctx context.Context, n int) ([]*profile.Profile, error) {
	if n <= 0 {
		return nil, nil
	}
	now := s.opts.Now()
	out := make([]*profile.Profile, 0, min(n, 1024))
	start := rand.IntN(shards)
	for k := 0; k < shards && len(out) < n; k++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("sample profiles: %w", err)
		}
		sh := &s.shards[(start+k)%shards]
		sh.mu.Lock()
		for _, e := range sh.users {
			if len(out) == n {
				break
			}
			if now.Before(e.expires) {
				out = append(out, e.p)
			}
		}
		sh.mu.Unlock()
	}
	return out, nil
}
