package redis

import (
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
)

// benchSpec is shaped like scripts/bench/rules.yaml's profile needs: count("page_view", "30d"),
// plus a trait and a decayed score.
func benchSpec(b *testing.B) *profile.Spec {
	s, err := profile.NewSpec([]profile.Feature{
		{Kind: profile.FeatureCount, Name: "page_view", Window: 30 * 24 * time.Hour},
		{Kind: profile.FeatureTrait, Name: "plan"},
		{Kind: profile.FeatureScore, Name: "engagement"},
	}, map[string]profile.ScoreSpec{
		"engagement": {HalfLife: 7 * 24 * time.Hour, Weights: map[string]float64{"page_view": 1, "add_to_cart": 5}},
	})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

const (
	benchUsers   = 10000
	benchBatch   = 16
	benchWorkers = 8 // the origin's partition workers: each owns its users, as leases make them
)

// benchEvent is event n of worker w: a user of the worker's share of the users, as skewed as
// scripts/loadgen's (Zipf s=1.1, v=50: the most active user sends ~0.5% of the events), and
// its event mix (page views, carts, identifies with three traits, purchases, searches,
// checkouts), timestamped within the last minute.
func benchEvent(w int, n uint64, rng *rand.Rand, zipf *rand.Zipf) event.Event {
	user := int(zipf.Uint64())*benchWorkers + w
	ev := event.Event{ID: "b" + strconv.Itoa(w) + "-" + strconv.FormatUint(n, 36), UserID: "user-" + strconv.Itoa(user),
		Type: "page_view", TS: time.Now().Add(-time.Duration(rng.IntN(60000)) * time.Millisecond)}
	switch k := rng.IntN(100); {
	case k < 70:
	case k < 85:
		ev.Type = "add_to_cart"
	case k < 90:
		ev.Type, ev.Props = "identify", map[string]any{"plan": []string{"free", "pro", "team"}[rng.IntN(3)], "country": "DE", "newsletter": rng.IntN(2) == 0}
	case k < 95:
		ev.Type, ev.Props = "purchase_completed", map[string]any{"amount": float64(rng.IntN(50000)) / 100}
	case k < 98:
		ev.Type = "search"
	default:
		ev.Type = "checkout_started"
	}
	return ev
}

// BenchmarkApplyBatch measures what one event costs the origin and Redis when the origin's 8
// workers apply batches of 16 events over 10,000 Zipf-distributed users (each worker its own
// users), after every user has a profile (steady state). One op is one event. Besides ns/op and
// allocs/op it reports, per event: the Go process's CPU (redis client, encoding, computing),
// Redis's CPU (INFO cpu) and the time Redis spent in scripts (INFO commandstats, EVALSHA and
// EVAL), and the microseconds per script call. Use a Redis of its own (REDIS_URL): the Redis
// figures are server-wide.
func BenchmarkApplyBatch(b *testing.B) {
	for _, v := range benchVariants() {
		b.Run(v.name, func(b *testing.B) {
			s := newTestStore(b, v.opts)
			ctx, spec := context.Background(), benchSpec(b)
			warm := make([]event.Event, 0, benchBatch)
			for u := range benchUsers {
				warm = append(warm, event.Event{ID: "warm", UserID: "user-" + strconv.Itoa(u), Type: "page_view", TS: time.Now()})
				if len(warm) == benchBatch || u == benchUsers-1 {
					if _, err := s.ApplyBatch(ctx, warm, spec); err != nil {
						b.Fatal(err)
					}
					warm = warm[:0]
				}
			}
			before := readRedisCost(b, s.c)
			cpu := processCPU()
			var worker atomic.Int64
			b.SetParallelism((benchWorkers + 1) / 2) // × GOMAXPROCS (2 here) goroutines
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				w := int(worker.Add(1)-1) % benchWorkers
				rng := rand.New(rand.NewPCG(uint64(w), 1))
				zipf := rand.NewZipf(rng, 1.1, 50, benchUsers/benchWorkers-1)
				evs := make([]event.Event, 0, benchBatch)
				flush := func() {
					res, err := s.ApplyBatch(ctx, evs, spec)
					if err != nil {
						b.Error(err)
					}
					for _, r := range res {
						if r.Err != nil {
							b.Error(r.Err)
						}
					}
					evs = evs[:0]
				}
				for n := uint64(0); pb.Next(); n++ {
					if evs = append(evs, benchEvent(w, n, rng, zipf)); len(evs) == benchBatch {
						flush()
					}
				}
				if len(evs) > 0 {
					flush()
				}
			})
			b.StopTimer()
			after := readRedisCost(b, s.c)
			perEvent := func(d float64) float64 { return d / float64(b.N) }
			b.ReportMetric(perEvent(float64(processCPU()-cpu)/1e3), "go-cpu-µs/event")
			b.ReportMetric(perEvent(after.cpuUs-before.cpuUs), "redis-cpu-µs/event")
			b.ReportMetric(perEvent(after.scriptUs-before.scriptUs), "redis-script-µs/event")
			if calls := after.scriptCalls - before.scriptCalls; calls > 0 {
				b.ReportMetric((after.scriptUs-before.scriptUs)/calls, "µs/script-call")
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// redisCost is Redis's server-wide CPU and script time so far.
type redisCost struct {
	cpuUs                 float64 // used_cpu_user+sys
	scriptUs, scriptCalls float64 // EVALSHA and EVAL (commandstats usec includes the calls the scripts make)
}

func readRedisCost(b *testing.B, c goredis.UniversalClient) redisCost {
	var rc redisCost
	ctx := context.Background()
	cpu, err := c.Info(ctx, "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(cpu, "\r\n") {
		k, v, _ := strings.Cut(line, ":")
		if k == "used_cpu_user" || k == "used_cpu_sys" {
			f, _ := strconv.ParseFloat(v, 64)
			rc.cpuUs += f * 1e6
		}
	}
	stats, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(stats, "\r\n") {
		name, fields, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		if name != "evalsha" && name != "eval" {
			continue
		}
		var calls, usec float64
		for kv := range strings.SplitSeq(fields, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "calls":
				calls, _ = strconv.ParseFloat(v, 64)
			case "usec":
				usec, _ = strconv.ParseFloat(v, 64)
			}
		}
		rc.scriptUs += usec
		rc.scriptCalls += calls
	}
	return rc
}

// processCPU returns the CPU time (user+system) this process used so far, in ns.
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
