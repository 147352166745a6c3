package testenv

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The cluster is a real one: three masters share the slots, keys of different slots land on
// different masters and a multi-key command across slots is refused; and its servers are gone
// once the test that started it has ended.
func TestRedisClusterIsARealClusterAndStops(t *testing.T) {
	var addrs []string
	t.Run("cluster", func(t *testing.T) {
		rc := StartRedisCluster(t)
		addrs = rc.Addrs
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if len(rc.Addrs) != 3 || rc.URL != "redis+cluster://"+strings.Join(rc.Addrs, ",") {
			t.Fatalf("addrs %v, url %q", rc.Addrs, rc.URL)
		}
		shards, err := rc.Client.ClusterShards(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(shards) != 3 {
			t.Fatalf("%d shards, want 3: %+v", len(shards), shards)
		}
		masters := map[string]bool{}
		for i := range 30 {
			key := rc.Prefix + "{u:" + strconv.Itoa(i) + "}:k"
			if err := rc.Client.Set(ctx, key, "v", time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
			m, err := rc.Client.MasterForKey(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			masters[m.Options().Addr] = true
		}
		if len(masters) != 3 {
			t.Errorf("30 users' keys on masters %v, want all 3", masters)
		}
		err = rc.Client.MGet(ctx, rc.Prefix+"{u:1}:k", rc.Prefix+"{u:2}:k").Err()
		if err == nil || !strings.HasPrefix(err.Error(), "CROSSSLOT") {
			t.Errorf("MGET across slots: %v, want CROSSSLOT", err)
		}
	})
	if len(addrs) == 0 {
		return // skipped or failed above
	}
	for _, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1, DialTimeout: time.Second})
		if err := c.Ping(context.Background()).Err(); err == nil {
			t.Errorf("redis-server on %s still answers after its test ended", addr)
		}
		c.Close()
	}
}
