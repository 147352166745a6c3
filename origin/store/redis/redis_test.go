package redis

import (
	"testing"

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

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts store.Options) store.Store { return newTestStore(t, opts) })
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
