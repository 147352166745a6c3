package server

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/config"
	"github.com/segedge/segedge/core/trace"
	"github.com/segedge/segedge/origin/engine"
	"github.com/segedge/segedge/origin/store"
)

// Config is every setting of the origin. Each field is a flag with an environment variable of
// the same name (see Flags); the zero value is not useful, use Flags to get the defaults.
type Config struct {
	Addr               string        // ORIGIN_ADDR: the HTTP API, health and metrics
	NATSURL            string        // NATS_URL: unset = start an embedded NATS server
	NATSEmbedAddr      string        // SEGEDGE_NATS_EMBED_ADDR: where the embedded server listens
	NATSPrefix         string        // SEGEDGE_NATS_PREFIX: prefix for streams and subjects
	NATSConnectTimeout time.Duration // SEGEDGE_NATS_CONNECT_TIMEOUT: first connection deadline
	RedisURL           string        // REDIS_URL: unset = in-memory profiles
	RedisPrefix        string        // SEGEDGE_REDIS_PREFIX: prefix of every Redis key
	DataDir            string        // SEGEDGE_DATA_DIR: embedded JetStream's store
	AdminToken         string        // SEGEDGE_ADMIN_TOKEN: bearer token of the admin API
	WriteKey           string        // SEGEDGE_WRITE_KEY: bearer key of server-side ingest
	ReadKey            string        // SEGEDGE_READ_KEY: bearer key for reading users and segments
	Retention          time.Duration // SEGEDGE_RETENTION: how long idle profiles are kept
	ProfileCache       int           // SEGEDGE_PROFILE_CACHE: profiles the Redis store keeps in memory
	WebhookSecret      string        // SEGEDGE_WEBHOOK_SECRET: signs trigger webhooks
	WebhookAllow       string        // SEGEDGE_WEBHOOK_ALLOW: hosts webhooks may reach despite the private-address guard
	WebhookAttempts    int           // SEGEDGE_WEBHOOK_ATTEMPTS: deliveries before a firing is dead-lettered
	WebhookBackoff     time.Duration // SEGEDGE_WEBHOOK_BACKOFF: delay before the first retry (doubles per attempt)
	RescanRate         float64       // SEGEDGE_RESCAN_RATE: profiles re-evaluated per second after a ruleset change
	Partitions         int           // SEGEDGE_PARTITIONS: partitions of EVENTS and DELTAS
	OriginID           string        // SEGEDGE_ORIGIN_ID: this process's name in the partition lease bucket
	LeaseTTL           time.Duration // SEGEDGE_LEASE_TTL: life of a partition lease without renewal
	LogFormat          string        // LOG_FORMAT: text or json
	LogLevel           string        // LOG_LEVEL
	ShutdownTimeout    time.Duration // SEGEDGE_SHUTDOWN_TIMEOUT: grace for in-flight requests
	Trace              trace.Config  // SEGEDGE_OTLP_ENDPOINT, SEGEDGE_TRACE_SAMPLE_RATIO
	PprofAddr          string        // SEGEDGE_PPROF_ADDR: Go's /debug/pprof on its own listener; empty = off
}

// Flags defines the origin's settings on a new config.Set, writing into c.
func Flags(c *Config, usage io.Writer) *config.Set {
	s := config.New("origin", usage)
	s.String(&c.Addr, "origin-addr", "ORIGIN_ADDR", "127.0.0.1:7070", "listen address of the origin's HTTP API, /healthz, /readyz and /metrics")
	s.String(&c.NATSURL, "nats-url", "NATS_URL", "", "NATS server URL; empty: start an embedded NATS server with JetStream")
	s.String(&c.NATSEmbedAddr, "nats-embed-addr", "SEGEDGE_NATS_EMBED_ADDR", "127.0.0.1:4250", "listen address of the embedded NATS server (used when NATS_URL is empty)")
	s.String(&c.NATSPrefix, "nats-prefix", "SEGEDGE_NATS_PREFIX", "", "prefix for every stream and subject, to share one NATS between installations")
	s.Duration(&c.NATSConnectTimeout, "nats-connect-timeout", "SEGEDGE_NATS_CONNECT_TIMEOUT", 10*time.Second, "how long to wait for the first NATS connection before giving up")
	s.String(&c.RedisURL, "redis-url", "REDIS_URL", "", "Redis URL for profiles (redis://host:port/db); empty: in-memory profiles")
	s.String(&c.RedisPrefix, "redis-prefix", "SEGEDGE_REDIS_PREFIX", "seg:", "prefix of every Redis key, to share one Redis between installations")
	s.String(&c.DataDir, "data-dir", "SEGEDGE_DATA_DIR", ".data", "directory for durable local state (the embedded JetStream store)")
	s.String(&c.AdminToken, "admin-token", "SEGEDGE_ADMIN_TOKEN", "", "bearer token for the admin API (rulesets, users, invalidate); empty: admin API refuses every request")
	s.String(&c.WriteKey, "write-key", "SEGEDGE_WRITE_KEY", "", "bearer key for POST /v1/events at the origin; empty: server-side ingest refuses every request")
	s.String(&c.ReadKey, "read-key", "SEGEDGE_READ_KEY", "", "bearer key that may read users and segments (GET /v1/users/…, /user/segments, /v1/segments) but change nothing; empty: only the admin token reads")
	s.Duration(&c.Retention, "retention", "SEGEDGE_RETENTION", 90*24*time.Hour, "how long an idle profile is kept after its last event")
	s.Int(&c.ProfileCache, "profile-cache", "SEGEDGE_PROFILE_CACHE", store.DefaultCacheProfiles, "profiles the Redis store keeps in this process to compute events without reading them back (about 2 KB each); 0 or less: none, every event's profile is read from Redis")
	s.String(&c.WebhookSecret, "webhook-secret", "SEGEDGE_WEBHOOK_SECRET", "", "HMAC-SHA256 key of the X-Segedge-Signature header on trigger webhooks; empty: webhooks are not called")
	s.String(&c.WebhookAllow, "webhook-allow", "SEGEDGE_WEBHOOK_ALLOW", "", "comma-separated hosts (e.g. 127.0.0.1, *.example.com) webhooks may reach even on private addresses")
	s.Int(&c.WebhookAttempts, "webhook-attempts", "SEGEDGE_WEBHOOK_ATTEMPTS", 8, "webhook deliveries tried before a trigger firing goes to TRIGGERS_DLQ")
	s.Duration(&c.WebhookBackoff, "webhook-backoff", "SEGEDGE_WEBHOOK_BACKOFF", time.Second, "delay before a failed webhook is retried the first time; doubles per attempt up to 5 minutes, with jitter")
	s.Float(&c.RescanRate, "rescan-rate", "SEGEDGE_RESCAN_RATE", 2000, "profiles re-evaluated per second in the background after a ruleset change")
	s.Int(&c.Partitions, "partitions", "SEGEDGE_PARTITIONS", bus.DefaultPartitions, "partitions of the EVENTS and DELTAS streams")
	s.String(&c.OriginID, "origin-id", "SEGEDGE_ORIGIN_ID", "", "this origin's name among the origins sharing the partitions (letters, digits, - and _; unique among running origins); empty: hostname-pid-random")
	s.Duration(&c.LeaseTTL, "lease-ttl", "SEGEDGE_LEASE_TTL", engine.DefaultLeaseTTL, "how long a partition lease lives without renewal, i.e. how long a crashed origin's partitions wait before another origin takes them; the first origin to create the lease bucket sets it for all")
	s.String(&c.LogFormat, "log-format", "LOG_FORMAT", "text", "log format: text or json")
	s.String(&c.LogLevel, "log-level", "LOG_LEVEL", "info", "log level: debug, info, warn or error")
	s.Duration(&c.ShutdownTimeout, "shutdown-timeout", "SEGEDGE_SHUTDOWN_TIMEOUT", 10*time.Second, "how long in-flight requests may take after SIGTERM")
	s.String(&c.PprofAddr, "pprof-addr", "SEGEDGE_PPROF_ADDR", "", "listen address of Go's /debug/pprof profiler (keep it on loopback: no token guards it); empty: off")
	trace.Flags(s, &c.Trace)
	return s
}

// Validate checks what can be checked without touching the network.
func (c *Config) Validate() error {
	var errs []error
	errs = append(errs, config.CheckAddr("ORIGIN_ADDR", c.Addr), c.Trace.Validate())
	if c.PprofAddr != "" {
		errs = append(errs, config.CheckAddr("SEGEDGE_PPROF_ADDR", c.PprofAddr))
	}
	if c.NATSURL != "" {
		errs = append(errs, config.CheckURL("NATS_URL", c.NATSURL, "nats", "tls", "ws", "wss"))
	} else {
		errs = append(errs, config.CheckAddr("SEGEDGE_NATS_EMBED_ADDR", c.NATSEmbedAddr))
	}
	if c.RedisURL != "" {
		errs = append(errs, config.CheckURL("REDIS_URL", c.RedisURL, "redis", "rediss", "unix", "redis+cluster", "rediss+cluster"))
	}
	if c.WebhookAttempts < 1 || c.WebhookBackoff <= 0 {
		errs = append(errs, fmt.Errorf("SEGEDGE_WEBHOOK_ATTEMPTS %d, SEGEDGE_WEBHOOK_BACKOFF %s: want at least 1 and a positive duration", c.WebhookAttempts, c.WebhookBackoff))
	}
	if c.OriginID != "" {
		if err := engine.CheckOriginID(c.OriginID); err != nil {
			errs = append(errs, fmt.Errorf("SEGEDGE_ORIGIN_ID: %w", err))
		}
	}
	if c.LeaseTTL < time.Second || c.LeaseTTL > 5*time.Minute {
		errs = append(errs, fmt.Errorf("SEGEDGE_LEASE_TTL %s: want 1s to 5m", c.LeaseTTL))
	}
	if c.Partitions < 1 || c.Partitions > 1024 {
		errs = append(errs, fmt.Errorf("SEGEDGE_PARTITIONS %d: want 1 to 1024", c.Partitions))
	}
	return errors.Join(errs...)
}

func (c *Config) webhookAllow() []string {
	var out []string
	for _, h := range strings.Split(c.WebhookAllow, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}
