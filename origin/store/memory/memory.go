// Package memory is the in-process profile store: the embedded default when no REDIS_URL is
// set, with the same semantics as the Redis store (the conformance suite in store/storetest runs
// against both).
//
// Bounds: it holds every profile applied within the retention and nothing older — an idle
// profile expires retention after its last event, is invisible from then on, and its memory is
// reclaimed by a sweep of its shard that runs every few thousand applies (and by any access).
// There is no cap on the number of live profiles: size the retention (or use Redis) for the
// traffic. Profiles do not survive a restart.
package memory

import (
	"context"
	"fmt"
	"hash/maphash"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/origin/store"
)

const (
	shards = 64
	// sweepEvery is how many applies to a shard trigger a sweep of its expired profiles.
	sweepEvery = 4096
	// dedupSweepEvery is how many applies to a profile trigger pruning of its old event ids.
	dedupSweepEvery = 256
)

// Store is the in-memory profile store. Profiles are copied on write: Apply builds a new
// profile and Get returns the current one without copying, so the profiles it returns are shared
// and must be treated as read-only (they never change under the caller).
type Store struct {
	opts   store.Options
	seed   maphash.Seed
	shards [shards]shard
}

type shard struct {
	mu      sync.Mutex
	users   map[string]*entry
	applies int
}

type entry struct {
	p       *profile.Profile
	seen    map[string]time.Time // event id → when it was applied
	expires time.Time
	applies int
}

var _ store.Store = (*Store)(nil)

// New returns an empty store.
func New(opts store.Options) *Store {
	s := &Store{opts: opts.WithDefaults(), seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].users = map[string]*entry{}
	}
	return s
}

func (s *Store) shard(userID string) *shard {
	return &s.shards[maphash.String(s.seed, userID)%shards]
}

// ApplyBatch implements store.Store: Apply for each event in order (nothing to pipeline in memory).
func (s *Store) ApplyBatch(ctx context.Context, evs []event.Event, spec *profile.Spec) ([]store.Result, error) {
	res := make([]store.Result, len(evs))
	for i, ev := range evs {
		res[i].Profile, res[i].Applied, res[i].Err = s.Apply(ctx, ev, spec)
	}
	return res, nil
}

// Apply implements store.Store.
func (s *Store) Apply(ctx context.Context, ev event.Event, spec *profile.Spec) (*profile.Profile, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, fmt.Errorf("apply event %q: %w", ev.ID, err)
	}
	if ev.UserID == "" || ev.ID == "" {
		return nil, false, fmt.Errorf("apply event %q: missing event or user id", ev.ID)
	}
	now := s.opts.Now()
	u := spec.Plan(ev, now) // outside the lock: it only reads the event and the spec
	sh := s.shard(ev.UserID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.applies++
	if sh.applies%sweepEvery == 0 {
		sh.sweep(now)
	}
	e := sh.users[ev.UserID]
	if e != nil && !now.Before(e.expires) {
		delete(sh.users, ev.UserID)
		e = nil
	}
	if e == nil {
		e = &entry{p: profile.New(ev.UserID), seen: map[string]time.Time{}}
		sh.users[ev.UserID] = e
	}
	if at, ok := e.seen[ev.ID]; ok && now.Sub(at) < s.opts.DedupWindow {
		return e.p, false, nil
	}
	e.applies++
	if e.applies%dedupSweepEvery == 0 {
		for id, at := range e.seen {
			if now.Sub(at) >= s.opts.DedupWindow {
				delete(e.seen, id)
			}
		}
	}
	e.seen[ev.ID] = now
	// Copy on write: profiles already handed out stay as they were.
	next := e.p.With(u)
	e.p = next
	e.expires = now.Add(s.opts.Retention)
	return next, true, nil
}

func (sh *shard) sweep(now time.Time) {
	for id, e := range sh.users {
		if !now.Before(e.expires) {
			delete(sh.users, id)
		}
	}
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, userID string) (*profile.Profile, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get profile: %w", err)
	}
	now := s.opts.Now()
	sh := s.shard(userID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.users[userID]
	if e == nil {
		return nil, store.ErrNotFound
	}
	if !now.Before(e.expires) {
		delete(sh.users, userID)
		return nil, store.ErrNotFound
	}
	return e.p, nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, userID string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete profile: %w", err)
	}
	sh := s.shard(userID)
	sh.mu.Lock()
	delete(sh.users, userID)
	sh.mu.Unlock()
	return nil
}

// Scan implements store.Store. The cursor is the next shard number; a call returns whole shards
// until it has at least count ids.
func (s *Store) Scan(ctx context.Context, cursor string, count int) ([]string, string, error) {
	start := 0
	if cursor != "" {
		n, err := strconv.Atoi(cursor)
		if err != nil || n < 0 || n >= shards {
			return nil, "", fmt.Errorf("scan profiles: bad cursor %q", cursor)
		}
		start = n
	}
	count = max(count, 1)
	now := s.opts.Now()
	var ids []string
	for i := start; i < shards; i++ {
		if err := ctx.Err(); err != nil {
			return nil, "", fmt.Errorf("scan profiles: %w", err)
		}
		sh := &s.shards[i]
		sh.mu.Lock()
		from := len(ids)
		for id, e := range sh.users {
			if now.Before(e.expires) {
				ids = append(ids, id)
			}
		}
		sh.mu.Unlock()
		slices.Sort(ids[from:])
		if len(ids) >= count && i+1 < shards {
			return ids, strconv.Itoa(i + 1), nil
		}
	}
	return ids, "", nil
}

// Len returns the number of live (unexpired) profiles.
func (s *Store) Len() int {
	now := s.opts.Now()
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, e := range sh.users {
			if now.Before(e.expires) {
				n++
			}
		}
		sh.mu.Unlock()
	}
	return n
}

// Close implements store.Store; the memory store has nothing to release.
func (s *Store) Close() error { return nil }
