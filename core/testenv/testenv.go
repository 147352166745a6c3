// Package testenv gives integration tests the real services they need.
//
// With NATS_URL or REDIS_URL set, tests use those servers (this is what CI does). Without
// NATS_URL a test gets an embedded NATS server of its own; without REDIS_URL a Redis test is
// skipped — unless SEGEDGE_REQUIRE_SERVICES=1, in which case a missing service fails the test,
// so CI can never go green by skipping. Every test gets its own name prefix and cleans up after
// itself, so tests run in parallel against one server and leave nothing behind.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/bus"
)

// RequireServices reports whether missing services must fail tests instead of skipping them.
func RequireServices() bool { return os.Getenv("SEGEDGE_REQUIRE_SERVICES") == "1" }

// Prefix returns a short random name prefix for one test, e.g. "t3fa9c1_".
func Prefix(t testing.TB) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "t" + hex.EncodeToString(b[:]) + "_"
}

// missing skips the test, or fails it when services are required.
func missing(t testing.TB, what string) {
	t.Helper()
	if RequireServices() {
		t.Fatalf("%s is required (SEGEDGE_REQUIRE_SERVICES=1) but not available", what)
	}
	t.Skipf("%s not available; set it to run this test", what)
}

// NATS is a NATS server for one test, with a topology of its own.
type NATS struct {
	URL      string
	Topology bus.Topology
	Conn     *nats.Conn
	JS       jetstream.JetStream
	// Embedded is true when the test runs its own in-process server (no NATS_URL).
	Embedded bool
}

// StartNATS returns the real NATS server from NATS_URL, or starts an embedded one with JetStream
// in a temporary directory. Streams created under the test's prefix are deleted at cleanup.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	n := &NATS{Topology: bus.Topology{Prefix: Prefix(t), Partitions: 4}}
	if url := os.Getenv("NATS_URL"); url != "" {
		n.URL = url
	} else if RequireServices() {
		missing(t, "NATS (NATS_URL)")
	} else {
		e, err := bus.StartEmbedded(bus.EmbeddedOptions{Addr: "127.0.0.1:0", StoreDir: t.TempDir()})
		if err != nil {
			t.Fatalf("start embedded NATS: %v", err)
		}
		t.Cleanup(e.Shutdown)
		n.URL = e.ClientURL()
		n.Embedded = true
	}
	nc, err := nats.Connect(n.URL, nats.Timeout(3*time.Second))
	if err != nil {
		if n.Embedded {
			t.Fatalf("connect to embedded NATS: %v", err)
		}
		missing(t, "NATS at "+n.URL+" ("+err.Error()+")")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	n.Conn, n.JS = nc, js
	t.Cleanup(func() {
		deleteStreams(js, n.Topology.Prefix)
		nc.Close()
	})
	return n
}

// deleteStreams deletes the streams, key-value buckets and object stores whose names start
// with prefix (upper case, as bus.Topology names them); a bucket or object store is the stream
// KV_<name> or OBJ_<name>.
func deleteStreams(js jetstream.JetStream, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	prefix = strings.ToUpper(prefix)
	var doomed []string
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		base := strings.TrimPrefix(strings.TrimPrefix(name, "KV_"), "OBJ_")
		if strings.HasPrefix(base, prefix) {
			doomed = append(doomed, name)
		}
	}
	for _, name := range doomed {
		_ = js.DeleteStream(ctx, name)
	}
}

// deleteKeys deletes the Redis keys that contain prefix (keys are hash-tagged per user, {...},
// so the prefix may be anywhere in them).
func deleteKeys(c *redis.Client, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	iter := c.Scan(ctx, 0, "*"+prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		c.Del(ctx, iter.Val())
	}
}

// RemoveOnCleanup deletes, when t ends, what programs the test started (real processes, not
// this package's clients) created under prefix on the shared servers at natsURL and redisURL:
// streams, key-value buckets and keys. Call it before starting them, so that it runs after
// they were stopped (cleanups run last-in first-out). Best effort: a server that cannot be
// reached is left as it is.
func RemoveOnCleanup(t testing.TB, natsURL, redisURL, prefix string) {
	t.Helper()
	t.Cleanup(func() {
		if nc, err := nats.Connect(natsURL, nats.Timeout(3*time.Second)); err == nil {
			if js, err := jetstream.New(nc); err == nil {
				deleteStreams(js, prefix)
			}
			nc.Close()
		}
		if opt, err := redis.ParseURL(redisURL); err == nil {
			c := redis.NewClient(opt)
			deleteKeys(c, prefix)
			c.Close()
		}
	})
}

// Redis is a Redis database for one test: every key it writes must start with Prefix.
type Redis struct {
	URL    string
	Client *redis.Client
	Prefix string
}

// StartRedis returns the Redis server from REDIS_URL, or skips (fails when services are
// required). Keys under the test's prefix are deleted at cleanup.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	url := os.Getenv("REDIS_URL")
	if url == "" {
		missing(t, "Redis (REDIS_URL)")
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("REDIS_URL %q: %v", url, err)
	}
	c := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		missing(t, "Redis at "+url+" ("+err.Error()+")")
	}
	r := &Redis{URL: url, Client: c, Prefix: Prefix(t)}
	t.Cleanup(func() {
		deleteKeys(c, r.Prefix)
		c.Close()
	})
	return r
}
