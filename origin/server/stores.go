package server

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/schedule"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
	redisstore "github.com/segedge/segedge/origin/store/redis"
)

// stores are where the origin keeps state: profiles, last published memberships, due times.
// All three live in Redis when REDIS_URL is set (one server, or a Redis Cluster with
// redis+cluster://host:port,host:port,…), else in memory.
type stores struct {
	profiles store.Store
	members  members.Store
	schedule schedule.Schedule
	close    func()
}

func openStores(ctx context.Context, cfg Config, log *slog.Logger, reg prometheus.Registerer, ready *ops.Readiness) (*stores, error) {
	opts := store.Options{Retention: cfg.Retention, CacheProfiles: cfg.ProfileCache}
	if cfg.ProfileCache <= 0 {
		opts.CacheProfiles = -1 // off; store.Options reads 0 as the default
	}
	m := store.NewMetrics(reg)
	if cfg.RedisURL == "" {
		log.Info("profile store: in memory (set REDIS_URL for Redis)")
		return &stores{
			profiles: store.Instrument(memory.New(opts), m),
			members:  members.NewMemory(),
			schedule: schedule.NewMemory(),
			close:    func() {},
		}, nil
	}
	// One client for the three parts: a *goredis.Client for one server, a *goredis.ClusterClient
	// for redis+cluster://, which sends each command to the master of its key's slot.
	opt, err := redisstore.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	opt.SetTimeouts(2*time.Second, 2*time.Second, 2*time.Second)
	rdb := opt.NewClient()
	addrs := strings.Join(opt.Addrs(), ",")
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := pingRedis(pctx, rdb); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("connect to Redis at %s: %w", addrs, err)
	}
	prefix := cfg.RedisPrefix
	ps, err := redisstore.New(rdb, prefix, opts)
	if err != nil {
		rdb.Close()
		return nil, fmt.Errorf("profile store: %w", err)
	}
	ready.Add("store", func(ctx context.Context) error { return pingRedis(ctx, rdb) })
	registerCacheMetrics(reg, ps)
	log.Info("profile store: redis", "addr", addrs, "cluster", opt.Cluster != nil, "profile_cache", cfg.ProfileCache)
	return &stores{
		profiles: store.Instrument(ps, m),
		members:  members.NewRedis(rdb, prefix, cfg.Retention),
		schedule: schedule.NewRedis(rdb, prefix),
		close:    func() { ps.Close(); rdb.Close() },
	}, nil
}

// pingRedis checks that Redis answers: the server, or every master of a cluster (a master that
// does not answer fails the users of its slots, so the origin is not ready without it).
func pingRedis(ctx context.Context, c goredis.UniversalClient) error {
	cc, ok := c.(*goredis.ClusterClient)
	if !ok {
		return c.Ping(ctx).Err()
	}
	return cc.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
		if err := m.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("master %s: %w", m.Options().Addr, err)
		}
		return nil
	})
}

// registerCacheMetrics exports the Redis store's profile cache counts.
func registerCacheMetrics(reg prometheus.Registerer, ps *redisstore.Store) {
	for _, result := range []string{"hit", "miss"} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "segedge_origin_profile_cache_lookups_total",
			Help:        "Users of event batches whose profile the Redis store had in memory (hit) or read from Redis (miss).",
			ConstLabels: prometheus.Labels{"result": result},
		}, func() float64 {
			st := ps.CacheStats()
			if result == "hit" {
				return float64(st.Hits)
			}
			return float64(st.Misses)
		}))
	}
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "segedge_origin_profile_cache_stale_total",
		Help: "Profile writes Redis refused because the stored profile was not the one the origin computed from (another origin wrote it, it expired or was deleted); the event was recomputed.",
	}, func() float64 { return float64(ps.CacheStats().Stale) }))
}
