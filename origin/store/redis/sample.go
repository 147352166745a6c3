package redis

import (
	"context"
	"fmt"

	goredis "github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/profile"
)

// A Sample walks at most maxSampleScans SCAN calls of COUNT ≥ minSampleCount (about a million
// keys), so a sparse keyspace (profiles among many other keys) costs bounded work: in a database
// of more keys than that where profiles are rare, it may return fewer than n.
const (
	maxSampleScans = 1024
	minSampleCount = 1000
)

// Sample implements store.Store: SCAN with COUNT over the profile keys (every master of a
// Cluster in turn) until it has n ids, then one pipeline of HGETALL. Profiles that expire or are
// deleted in between are left out.
func (s *Store) Sample(ctx context.Context, n int) ([]*profile.Profile, error) {
	if n <= 0 {
		return nil, nil
	}
	var ids []string
	cursor := ""
	for scans := 0; len(ids) < n && scans < maxSampleScans; scans++ {
		batch, next, err := s.Scan(ctx, cursor, max(n-len(ids), minSampleCount))
		if err != nil {
			return nil, fmt.Errorf("sample profiles: %w", err)
		}
		ids = append(ids, batch...)
		if cursor = next; cursor == "" {
			break
		}
	}
	ids = dedupe(ids)
	if len(ids) > n {
		ids = ids[:n]
	}
	if len(ids) == 0 {
		return nil, nil
	}
	cmds := make([]*goredis.MapStringStringCmd, len(ids))
	_, err := s.c.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HGetAll(ctx, s.keys(id)[0])
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sample profiles: %w", err)
	}
	out := make([]*profile.Profile, 0, len(ids))
	for i, cmd := range cmds {
		m := cmd.Val()
		if len(m) == 0 {
			continue // expired or deleted since the scan
		}
		fields := make([]any, 0, 2*len(m))
		for k, v := range m {
			fields = append(fields, k, v)
		}
		p, err := decodeProfile(ids[i], fields)
		if err != nil {
			return nil, fmt.Errorf("sample profiles: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}

// dedupe drops repeated ids (SCAN may return a key twice), keeping the first.
func dedupe(ids []string) []string {
	seen := make(map[string]bool, len(ids))
	out := ids[:0]
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}
