package server

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/store/storetest"
)

// The origin's stores opened from REDIS_URL, on one Redis and on a three-master Redis Cluster
// (redis+cluster://…): one client serves all three parts, an event batch, a membership batch and
// due times of users on every master go through, and readiness and the log say which Redis.
func TestStoresOnRedisAndCluster(t *testing.T) {
	ctx := context.Background()
	type target struct {
		url, prefix string
		client      goredis.UniversalClient
		cluster     *testenv.RedisCluster
	}
	tests := []struct {
		name  string
		start func(t *testing.T) target
	}{
		{"Redis", func(t *testing.T) target {
			r := testenv.StartRedis(t)
			return target{url: r.URL, prefix: r.Prefix, client: r.Client}
		}},
		{"Cluster", func(t *testing.T) target {
			rc := testenv.StartRedisCluster(t)
			return target{url: rc.URL, prefix: rc.Prefix, client: rc.Client, cluster: rc}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := tt.start(t)
			var logs bytes.Buffer
			ready := &ops.Readiness{}
			cfg := Config{RedisURL: tg.url, RedisPrefix: tg.prefix, Retention: time.Hour, ProfileCache: 100}
			st, err := openStores(ctx, cfg, slog.New(slog.NewTextHandler(&logs, nil)), prometheus.NewRegistry(), ready)
			if err != nil {
				t.Fatalf("openStores(%s): %v", tg.url, err)
			}
			defer st.close()
			if failed := ready.Check(ctx); len(failed) != 0 {
				t.Fatalf("not ready: %v", failed)
			}
			wantLog := fmt.Sprintf("cluster=%v", tg.cluster != nil)
			if l := logs.String(); !strings.Contains(l, "profile store: redis") || !strings.Contains(l, wantLog) {
				t.Errorf("log %q, want the Redis store with %s", l, wantLog)
			}

			users := make([]string, 12)
			masters := map[string]bool{}
			for i := range users {
				users[i] = fmt.Sprintf("user-%d", i)
				if tg.cluster != nil {
					m, err := tg.cluster.Client.MasterForKey(ctx, tg.prefix+"{u:"+users[i]+"}:p")
					if err != nil {
						t.Fatal(err)
					}
					masters[m.Options().Addr] = true
				}
			}
			if tg.cluster != nil && len(masters) != 3 {
				t.Fatalf("the users sit on masters %v, want all 3", masters)
			}

			// An event batch, as the engine applies it.
			var evs []event.Event
			for _, u := range users {
				evs = append(evs, event.Event{ID: "e1", UserID: u, Type: "page_view", TS: time.Now()})
			}
			res, err := st.profiles.ApplyBatch(ctx, evs, storetest.Spec())
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range res {
				if r.Err != nil || !r.Applied || r.Profile.Version != 1 {
					t.Errorf("event of %s: applied %v err %v", users[i], r.Applied, r.Err)
				}
			}
			// Their memberships, in one batch.
			mb, ok := st.members.(members.Batcher)
			if !ok {
				t.Fatalf("members store %T cannot batch", st.members)
			}
			recs := make([]members.Record, len(users))
			for i := range recs {
				recs[i] = members.Record{Version: 1, Members: []string{"seg-" + users[i]}}
			}
			if err := mb.PutMany(ctx, users, recs); err != nil {
				t.Fatal(err)
			}
			got, err := mb.GetMany(ctx, users)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range got {
				if r.Version != 1 || !slices.Equal(r.Members, recs[i].Members) {
					t.Errorf("membership of %s = %+v", users[i], r)
				}
			}
			// Due times in two partitions (whose sorted sets may sit on different masters).
			due := time.Now().Add(time.Minute)
			for p := range 2 {
				if err := st.schedule.At(ctx, p, users[p], due); err != nil {
					t.Fatal(err)
				}
				taken, err := st.schedule.Due(ctx, p, due, 10)
				if err != nil || len(taken) != 1 || taken[0].User != users[p] {
					t.Errorf("Due(p%d) = %v, %v; want %s", p, taken, err, users[p])
				}
				if err := st.schedule.Done(ctx, p, users[p]); err != nil {
					t.Fatal(err)
				}
			}

			// Everything landed in the Redis the URL named.
			for _, u := range users {
				n, err := tg.client.Exists(ctx, tg.prefix+"{u:"+u+"}:p", tg.prefix+"{u:"+u+"}:m").Result()
				if err != nil || n != 2 {
					t.Errorf("%s: %d of its profile and membership keys in Redis (%v), want 2", u, n, err)
				}
			}

			if tg.cluster != nil {
				// One master gone: the origin is not ready, though the others still answer.
				tg.cluster.StopNode(0)
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				if failed := ready.Check(cctx); failed["store"] == nil {
					t.Errorf("ready with master %s stopped", tg.cluster.Addrs[0])
				}
			}
		})
	}
}
