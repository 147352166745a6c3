// Package members keeps, per user, the segment membership last published in a delta and that
// delta's version. The engine diffs a new evaluation against it to know what entered and exited,
// and takes the next version from it, so versions increase strictly per user across restarts.
//
// Only the worker that owns a user's partition writes the user's record, so plain reads and
// writes suffice (no compare-and-set on the hot path).
package members

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/delta"
)

// Record is what was last published for a user.
type Record struct {
	Version uint64   `json:"v"`
	Members []string `json:"m"` // sorted
	// Thresholds are the threshold triggers whose condition held at that version (sorted); the
	// engine fires one when its name appears here (origin/trigger).
	Thresholds []string `json:"t,omitempty"`
	// Features are the values of the ruleset's edge features that the user's replica on an edge
	// holds at Version: the engine publishes in the next delta only those that differ. They mean
	// something only when FeaturesKnown is set: a record written before features were recorded,
	// or after a delta that was left out because DELTAS already held that version (its features
	// may differ from what was computed this time), has none, and the next delta carries them all.
	Features      []delta.FeatureValue `json:"f,omitempty"`
	FeaturesKnown bool                 `json:"fk,omitempty"`
}

// Batcher is implemented by stores that read and write many records in one round trip; the
// engine uses it for a batch of events.
type Batcher interface {
	// GetMany returns the records of users, out[i] for users[i].
	GetMany(ctx context.Context, users []string) ([]Record, error)
	// PutMany replaces the records of users[i] with rs[i].
	PutMany(ctx context.Context, users []string, rs []Record) error
}

// Store keeps records.
type Store interface {
	// Get returns the user's record; a user never published has the zero Record.
	Get(ctx context.Context, user string) (Record, error)
	// Put replaces the user's record; it expires after the retention unless put again.
	Put(ctx context.Context, user string, r Record) error
	// Delete forgets the user.
	Delete(ctx context.Context, user string) error
	// Count adds one member to each entered segment and removes one from each exited one.
	Count(ctx context.Context, entered, exited []string) error
	// Counts returns the number of members of each segment.
	Counts(ctx context.Context) (map[string]int64, error)
}

// Memory is the in-process Store.
type Memory struct {
	mu     sync.RWMutex
	m      map[string]Record
	counts map[string]int64
}

// NewMemory returns an empty store.
func NewMemory() *Memory { return &Memory{m: map[string]Record{}, counts: map[string]int64{}} }

// Count implements Store.
func (s *Memory) Count(_ context.Context, entered, exited []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range entered {
		s.counts[n]++
	}
	for _, n := range exited {
		s.counts[n]--
	}
	return nil
}

// Counts implements Store.
func (s *Memory) Counts(context.Context) (map[string]int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]int64, len(s.counts))
	for k, v := range s.counts {
		out[k] = v
	}
	return out, nil
}

// Get implements Store.
func (s *Memory) Get(_ context.Context, user string) (Record, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.m[user], nil
}

// Put implements Store.
func (s *Memory) Put(_ context.Context, user string, r Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[user] = r
	return nil
}

// GetMany implements Batcher.
func (s *Memory) GetMany(_ context.Context, users []string) ([]Record, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Record, len(users))
	for i, u := range users {
		out[i] = s.m[u]
	}
	return out, nil
}

// PutMany implements Batcher.
func (s *Memory) PutMany(_ context.Context, users []string, rs []Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, u := range users {
		s.m[u] = rs[i]
	}
	return nil
}

// Delete implements Store.
func (s *Memory) Delete(_ context.Context, user string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, user)
	return nil
}

// Redis keeps each record as a JSON string under <prefix>{u:<user>}:m, hash-tagged like the
// profile so both live on one Redis Cluster slot.
type Redis struct {
	c         redis.UniversalClient
	prefix    string
	retention time.Duration
}

// NewRedis returns a store whose keys start with prefix and expire after retention.
func NewRedis(c redis.UniversalClient, prefix string, retention time.Duration) *Redis {
	return &Redis{c: c, prefix: prefix, retention: retention}
}

func (s *Redis) key(user string) string { return s.prefix + "{u:" + user + "}:m" }

// Get implements Store.
func (s *Redis) Get(ctx context.Context, user string) (Record, error) {
	b, err := s.c.Get(ctx, s.key(user)).Bytes()
	if errors.Is(err, redis.Nil) {
		return Record{}, nil
	}
	if err != nil {
		return Record{}, fmt.Errorf("read membership: %w", err)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, fmt.Errorf("read membership: %w", err)
	}
	return r, nil
}

// Put implements Store.
func (s *Redis) Put(ctx context.Context, user string, r Record) error {
	b, _ := json.Marshal(r)
	if err := s.c.Set(ctx, s.key(user), b, s.retention).Err(); err != nil {
		return fmt.Errorf("write membership: %w", err)
	}
	return nil
}

// GetMany implements Batcher with one pipeline of GETs (the keys of different users may sit on
// different Cluster slots, so not one MGET).
func (s *Redis) GetMany(ctx context.Context, users []string) ([]Record, error) {
	out := make([]Record, len(users))
	if len(users) == 0 {
		return out, nil
	}
	cmds := make([]*redis.StringCmd, len(users))
	_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, u := range users {
			cmds[i] = p.Get(ctx, s.key(u))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read %d memberships: %w", len(users), err)
	}
	for i, c := range cmds {
		b, err := c.Bytes()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read membership: %w", err)
		}
		if err := json.Unmarshal(b, &out[i]); err != nil {
			return nil, fmt.Errorf("read membership: %w", err)
		}
	}
	return out, nil
}

// PutMany implements Batcher with one pipeline of SETs.
func (s *Redis) PutMany(ctx context.Context, users []string, rs []Record) error {
	if len(users) == 0 {
		return nil
	}
	_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, u := range users {
			b, _ := json.Marshal(rs[i])
			p.Set(ctx, s.key(u), b, s.retention)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write %d memberships: %w", len(users), err)
	}
	return nil
}

// Delete implements Store.
func (s *Redis) Delete(ctx context.Context, user string) error {
	if err := s.c.Del(ctx, s.key(user)).Err(); err != nil {
		return fmt.Errorf("delete membership: %w", err)
	}
	return nil
}

func (s *Redis) countsKey() string { return s.prefix + "segment_counts" }

// Count implements Store (one HINCRBY per segment, pipelined).
func (s *Redis) Count(ctx context.Context, entered, exited []string) error {
	if len(entered)+len(exited) == 0 {
		return nil
	}
	pipe := s.c.Pipeline()
	for _, n := range entered {
		pipe.HIncrBy(ctx, s.countsKey(), n, 1)
	}
	for _, n := range exited {
		pipe.HIncrBy(ctx, s.countsKey(), n, -1)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("count segment members: %w", err)
	}
	return nil
}

// Counts implements Store.
func (s *Redis) Counts(ctx context.Context) (map[string]int64, error) {
	m, err := s.c.HGetAll(ctx, s.countsKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("read segment counts: %w", err)
	}
	out := make(map[string]int64, len(m))
	for k, v := range m {
		n, _ := strconv.ParseInt(v, 10, 64)
		out[k] = n
	}
	return out, nil
}
