package redis

import (
	"context"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/event"

	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/storetest"
)

// newTestStore returns a store on the REDIS_URL server under a fresh key prefix, which testenv
// deletes at cleanup (skips without REDIS_URL, fails with SEGEDGE_REQUIRE_SERVICES=1).
func newTestStore(t testing.TB, opts store.Options) *Store {
	r := testenv.StartRedis(t)
	s, err := New(r.Client, r.Prefix, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The suite runs with the profile cache on (the default) and off: the cache must never change
// a result, only save reads.
func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cache int
	}{{"Cached", 0}, {"Uncached", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T, opts store.Options) store.Store {
				opts.CacheProfiles = tc.cache
				return newTestStore(t, opts)
			})
		})
	}
}

func TestKeysShareOneHashTagPerUser(t *testing.T) {
	s, err := New(nil, "segedge:", store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	k := s.keys("user-1")
	if k[0] != "segedge:{u:user-1}:p" || k[1] != "segedge:{u:user-1}:d" {
		t.Errorf("keys = %v", k)
	}
	if _, err := New(nil, "bad{", store.Options{}); err == nil {
		t.Error("a prefix with a brace was accepted")
	}
}

// BenchmarkApply runs 16 goroutines per core: each Apply is one round trip to Redis, so
// throughput comes from requests in flight.
func BenchmarkApply(b *testing.B) {
	storetest.BenchmarkApply(b, newTestStore(b, store.Options{}), 16)
}

// TestApplyBatchAfterScriptFlush: Redis forgot the script (restart, SCRIPT FLUSH); the batch
// is sent again with EVAL and every event is applied once, in order.
func TestApplyBatchAfterScriptFlush(t *testing.T) {
	s := newTestStore(t, store.Options{})
	ctx := context.Background()
	if err := s.c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	evs := []event.Event{
		{ID: "1", UserID: "flush-a", Type: "page_view", TS: now},
		{ID: "2", UserID: "flush-a", Type: "page_view", TS: now},
		{ID: "1", UserID: "flush-a", Type: "page_view", TS: now},
	}
	res, err := s.ApplyBatch(ctx, evs, storetest.Spec())
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		applied bool
		version int64
	}{{true, 1}, {true, 2}, {false, 2}} {
		if r := res[i]; r.Err != nil || r.Applied != want.applied || r.Profile.Version != want.version {
			t.Errorf("event %d: applied %v version %v err %v, want %v %d", i, r.Applied, r.Profile, r.Err, want.applied, want.version)
		}
	}
}

// TestApplyBatchRedisDown: with Redis unreachable the whole batch fails with an error.
func TestApplyBatchRedisDown(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	s, err := New(c, "down:", store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.ApplyBatch(context.Background(), []event.Event{{ID: "1", UserID: "u", Type: "x", TS: time.Now()}}, storetest.Spec())
	if err == nil {
		t.Fatalf("ApplyBatch with Redis down: %v, no error", res)
	}
}

// On a Redis shared with other data, most keys SCAN looks at are not profiles: a rescan must
// still take a handful of round trips, not one per few foreign keys (the conformance suite's
// Scan test failed on a database holding 129k keys of other prefixes, at 10,000 calls).
func TestScanSkipsForeignKeysInFewCalls(t *testing.T) {
	s := newTestStore(t, store.Options{})
	ctx := context.Background()
	foreign := s.prefix + "foreign:"
	pipe := s.c.Pipeline()
	for i := range 20000 {
		pipe.Set(ctx, foreign+strconv.Itoa(i), "x", time.Minute)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		if _, _, err := s.Apply(ctx, event.Event{ID: "e-" + id, UserID: id, Type: "page_view", TS: time.Now()}, nil); err != nil {
			t.Fatal(err)
		}
	}
	got, calls, cursor := map[string]bool{}, 0, ""
	for {
		ids, next, err := s.Scan(ctx, cursor, 7)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			got[id] = true
		}
		calls++
		if next == "" {
			break
		}
		cursor = next
	}
	if len(got) != 3 || calls > 10 {
		t.Fatalf("Scan found %v in %d calls among 20,000 foreign keys; want a, b, c in at most 10", got, calls)
	}
}
