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

// The profile store on a real three-master Redis Cluster: the conformance and Sample suites,
// cache on and off, each store opened from the cluster URL the origin takes in REDIS_URL. A
// batch's users sit on different masters, each Scan walks every master.
func TestClusterConformance(t *testing.T) {
	rc := testenv.StartRedisCluster(t)
	newStore := func(cache int) storetest.NewStore {
		return func(t *testing.T, opts store.Options) store.Store {
			opts.CacheProfiles = cache
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := Open(ctx, rc.URL, testenv.Prefix(t), opts)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := s.c.(*goredis.ClusterClient); !ok {
				t.Fatalf("Open(%q) made a %T, want a cluster client", rc.URL, s.c)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
	}
	for _, tc := range []struct {
		name  string
		cache int
	}{{"Cached", 0}, {"Uncached", -1}} {
		t.Run(tc.name, func(t *testing.T) { storetest.Run(t, newStore(tc.cache)) })
	}
	t.Run("Sample", func(t *testing.T) {
		storetest.RunSample(t, newStore(0))
		t.Run("Expiry", func(t *testing.T) { storetest.RunSampleExpiry(t, newStore(0)) })
	})
}

// TestClusterApplyBatchAfterScriptFlush: every master forgot the script (SCRIPT FLUSH, or a
// failover to a replica that never ran it); a batch whose users sit on all masters gets NOSCRIPT
// from each, is sent again with EVAL, and every event is applied once, in order.
func TestClusterApplyBatchAfterScriptFlush(t *testing.T) {
	rc := testenv.StartRedisCluster(t)
	s, err := New(rc.Client, rc.Prefix, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var evs []event.Event
	masters := map[string]bool{}
	now := time.Now()
	for i := range 12 {
		user := "flush-" + strconv.Itoa(i)
		m, err := rc.Client.MasterForKey(ctx, s.keys(user)[0])
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Options().Addr] = true
		evs = append(evs, event.Event{ID: "1", UserID: user, Type: "page_view", TS: now},
			event.Event{ID: "2", UserID: user, Type: "page_view", TS: now},
			event.Event{ID: "1", UserID: user, Type: "page_view", TS: now})
	}
	if len(masters) != 3 {
		t.Fatalf("the batch's users sit on masters %v, want all 3", masters)
	}
	// Loaded everywhere first, so that the flush is what makes the batch fail.
	if err := rc.Client.ForEachMaster(ctx, func(ctx context.Context, c *goredis.Client) error {
		if err := casScript.Load(ctx, c).Err(); err != nil {
			return err
		}
		return c.ScriptFlush(ctx).Err()
	}); err != nil {
		t.Fatal(err)
	}
	res, err := s.ApplyBatch(ctx, evs, storetest.Spec())
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		want := []struct {
			applied bool
			version int64
		}{{true, 1}, {true, 2}, {false, 2}}[i%3]
		if r.Err != nil || r.Applied != want.applied || r.Profile == nil || r.Profile.Version != want.version {
			t.Errorf("event %d (%s of %s): applied %v profile %v err %v, want applied %v version %d",
				i, evs[i].ID, evs[i].UserID, r.Applied, r.Profile, r.Err, want.applied, want.version)
		}
	}
}
