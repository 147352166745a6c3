package redis

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/segedge/segedge/core/profile"
)

// state is a profile as stored in Redis, with the identity the compare-and-set checks (cas.lua):
// the profile's Version and Created, and the id of the last event written (hash field e).
type state struct {
	p    *profile.Profile // never modified once in a state: the next state is p.With(update)
	last string           // field e; "" when none (a new profile, or one written before e existed)
}

// users is what the store keeps per user in the process: the batches applying events to each
// user right now, and a cache of the last state seen of recently active users.
//
// Claims: a batch claims its users for its duration, and a batch with a user claimed by another
// waits for that one to end. The origin's partition workers never share users, so this never
// waits there; it keeps two batches of this process from racing on one user, which the
// compare-and-set would get right only after rounds of recomputing (and, with many goroutines
// on one user, not within maxRounds).
//
// Cache: applying an event to a cached user needs no read from Redis; the write's
// compare-and-set tells if the entry was not current after all (another origin wrote the user
// after a lease change, the profile expired or was deleted), and the event is then recomputed
// from the profile Redis returns. An entry is only ever a starting point, never a result by
// itself. The cache is bounded by entries and evicts arbitrary ones when full (Go's map
// iteration order is random, so that is a random choice at no bookkeeping cost).
//
// One mutex, taken once when a batch begins (claim and look up) and once when it ends (store
// and release), not per event.
type users struct {
	// hits and misses count the users of batches that started from a cached profile or not;
	// stale counts the writes refused because the profile was not the one Go started from.
	hits, misses, stale atomic.Uint64

	mu      sync.Mutex
	max     int                      // cache entries at most; <= 0: no cache
	cached  map[string]state         // the cache
	claimed map[string]chan struct{} // user → closed when the batch that claimed it ends
}

func newUsers(max int) *users {
	u := &users{max: max, claimed: map[string]chan struct{}{}}
	if max > 0 {
		u.cached = make(map[string]state, min(max, 1024))
	}
	return u
}

// begin claims the users of chains, waiting while any is claimed by another batch, and sets
// each chain's base to its user's cached state, if any.
func (us *users) begin(ctx context.Context, chains []*chain) error {
	for {
		us.mu.Lock()
		busy := us.busyLocked(chains)
		if busy == nil {
			done := make(chan struct{})
			for _, ch := range chains {
				us.claimed[ch.user] = done
				if st, ok := us.cached[ch.user]; ok {
					ch.base = &st
					us.hits.Add(1)
				} else {
					us.misses.Add(1)
				}
			}
			us.mu.Unlock()
			return nil
		}
		us.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return fmt.Errorf("wait for another batch of the same users: %w", ctx.Err())
		}
	}
}

// busyLocked returns the release channel of a user of chains claimed by another batch, or nil.
func (us *users) busyLocked(chains []*chain) chan struct{} {
	for _, ch := range chains {
		if done, ok := us.claimed[ch.user]; ok {
			return done
		}
	}
	return nil
}

// end caches the state each chain left its user at (a chain whose outcome is unknown, after an
// error, drops its user instead, so that the next batch reads the profile) and releases the
// users begin claimed.
func (us *users) end(chains []*chain) {
	us.mu.Lock()
	done := us.claimed[chains[0].user]
	for _, ch := range chains {
		delete(us.claimed, ch.user)
		if ch.failed || ch.base == nil {
			delete(us.cached, ch.user)
		} else {
			us.cacheLocked(ch.user, *ch.base)
		}
	}
	us.mu.Unlock()
	close(done)
}

// cache caches st for user unless the cache holds a later state of the same profile (a Get that
// read before a batch wrote must not set the entry back).
func (us *users) cache(user string, st state) {
	us.mu.Lock()
	defer us.mu.Unlock()
	if old, ok := us.cached[user]; ok && old.p.Created.Equal(st.p.Created) && old.p.Version > st.p.Version {
		return
	}
	us.cacheLocked(user, st)
}

func (us *users) cacheLocked(user string, st state) {
	if us.max <= 0 {
		return
	}
	if _, ok := us.cached[user]; !ok && len(us.cached) >= us.max {
		for evict := range us.cached {
			delete(us.cached, evict)
			break
		}
	}
	us.cached[user] = st
}

// forget drops user's cache entry (Delete).
func (us *users) forget(user string) {
	us.mu.Lock()
	delete(us.cached, user)
	us.mu.Unlock()
}

// cachedLen returns the number of cached users.
func (us *users) cachedLen() int {
	us.mu.Lock()
	defer us.mu.Unlock()
	return len(us.cached)
}
