package server

import (
	"errors"
	"io"
	"time"

	"github.com/segedge/segedge/core/config"
	"github.com/segedge/segedge/core/trace"
)

// Config is every setting of the edge. Each field is a flag with an environment variable of the
// same name (see Flags).
type Config struct {
	Addr               string        // EDGE_ADDR: the public side
	OpsAddr            string        // EDGE_OPS_ADDR: /healthz, /readyz, /metrics; never public
	UpstreamURL        string        // UPSTREAM_URL: the site behind the edge
	OriginURL          string        // ORIGIN_URL: the origin's HTTP API
	OriginToken        string        // SEGEDGE_ORIGIN_TOKEN: read key for the origin's user API
	MaxUsers           int           // SEGEDGE_REPLICA_MAX_USERS: bound of the segment replica
	NATSURL            string        // NATS_URL
	NATSPrefix         string        // SEGEDGE_NATS_PREFIX
	NATSConnectTimeout time.Duration // SEGEDGE_NATS_CONNECT_TIMEOUT
	CookieKey          string        // SEGEDGE_COOKIE_KEY: signs segedge_uid
	DebugToken         string        // SEGEDGE_DEBUG_TOKEN: enables the Segedge-Debug header
	CacheBytes         int           // SEGEDGE_CACHE_BYTES: bound of the HTTP cache
	CountryHeader      string        // SEGEDGE_COUNTRY_HEADER: request header with the visitor's country
	CookieSecure       bool          // SEGEDGE_COOKIE_SECURE: mark the cookie Secure (the edge is behind TLS)
	UserHeader         string        // SEGEDGE_USER_HEADER: a logged-in user's id, set by a trusted hop
	TrustedNetworks    string        // SEGEDGE_TRUSTED_NETWORKS: where that hop connects from
	Compress           bool          // SEGEDGE_COMPRESS: gzip/brotli what is served from the cache
	CompressCacheBytes int           // SEGEDGE_COMPRESS_CACHE_BYTES: bound of the compressed-body cache
	BeaconRate         float64       // SEGEDGE_BEACON_RATE: events per second per visitor
	StreamHeartbeat    time.Duration // SEGEDGE_STREAM_HEARTBEAT
	StreamMaxPerUser   int           // SEGEDGE_STREAM_MAX_PER_USER
	StreamMax          int           // SEGEDGE_STREAM_MAX
	UpstreamTimeout    time.Duration // SEGEDGE_UPSTREAM_TIMEOUT
	LogFormat          string        // LOG_FORMAT
	LogLevel           string        // LOG_LEVEL
	ShutdownTimeout    time.Duration // SEGEDGE_SHUTDOWN_TIMEOUT
	Trace              trace.Config  // SEGEDGE_OTLP_ENDPOINT, SEGEDGE_TRACE_SAMPLE_RATIO
}

// Flags defines the edge's settings on a new config.Set, writing into c.
func Flags(c *Config, usage io.Writer) *config.Set {
	s := config.New("edge", usage)
	s.String(&c.Addr, "edge-addr", "EDGE_ADDR", "127.0.0.1:8080", "public listen address: the proxied site, the beacon and /user endpoints")
	s.String(&c.OpsAddr, "edge-ops-addr", "EDGE_OPS_ADDR", "127.0.0.1:8081", "operations listen address: /healthz, /readyz, /metrics (keep it private)")
	s.String(&c.UpstreamURL, "upstream-url", "UPSTREAM_URL", "", "the site behind the edge, e.g. http://127.0.0.1:9090 (required)")
	s.String(&c.OriginURL, "origin-url", "ORIGIN_URL", "http://127.0.0.1:7070", "the origin's HTTP API, for profile look-ups on a replica miss")
	s.String(&c.OriginToken, "origin-token", "SEGEDGE_ORIGIN_TOKEN", "", "bearer token the edge sends to the origin on a replica miss (the origin's SEGEDGE_READ_KEY); empty: misses are treated as new visitors")
	s.Int(&c.MaxUsers, "replica-max-users", "SEGEDGE_REPLICA_MAX_USERS", 1_000_000, "how many users the segment replica holds (about 200 bytes each)")
	s.String(&c.NATSURL, "nats-url", "NATS_URL", "nats://127.0.0.1:4250", "NATS server URL (default: the origin's embedded server)")
	s.String(&c.NATSPrefix, "nats-prefix", "SEGEDGE_NATS_PREFIX", "", "prefix for every stream and subject; must match the origin's")
	s.Duration(&c.NATSConnectTimeout, "nats-connect-timeout", "SEGEDGE_NATS_CONNECT_TIMEOUT", 30*time.Second, "how long to wait for the first NATS connection before giving up (not ready meanwhile)")
	s.String(&c.CookieKey, "cookie-key", "SEGEDGE_COOKIE_KEY", "", "key (at least 32 bytes) that signs the segedge_uid cookie; empty: a random key per process, so cookies do not survive a restart")
	s.String(&c.DebugToken, "debug-token", "SEGEDGE_DEBUG_TOKEN", "", "requests with header Segedge-Debug set to this token get debug headers; empty: never")
	s.Int(&c.CacheBytes, "cache-bytes", "SEGEDGE_CACHE_BYTES", 256<<20, "bytes the HTTP cache may hold (bodies, headers, keys)")
	s.String(&c.CountryHeader, "country-header", "SEGEDGE_COUNTRY_HEADER", "CF-IPCountry", "request header a trusted hop in front of the edge sets to the visitor's country (request.country)")
	s.Bool(&c.CookieSecure, "cookie-secure", "SEGEDGE_COOKIE_SECURE", false, "mark the segedge_uid cookie Secure (set it when visitors reach the edge over TLS, e.g. behind a TLS terminator)")
	s.String(&c.UserHeader, "user-header", "SEGEDGE_USER_HEADER", "", "request header in which a trusted hop in front of the edge names the logged-in user (e.g. X-User-Id); empty: cookies only")
	s.String(&c.TrustedNetworks, "trusted-networks", "SEGEDGE_TRUSTED_NETWORKS", "127.0.0.1/32,::1/128", "comma-separated CIDRs of the hops allowed to set SEGEDGE_USER_HEADER; from elsewhere it is ignored")
	s.Bool(&c.Compress, "compress", "SEGEDGE_COMPRESS", true, "compress pages and assets served from the cache with brotli or gzip per Accept-Encoding (the cache keeps identity bodies)")
	s.Int(&c.CompressCacheBytes, "compress-cache-bytes", "SEGEDGE_COMPRESS_CACHE_BYTES", 64<<20, "bytes of compressed bodies (pages and personalized variants) the edge keeps")
	s.Float(&c.BeaconRate, "beacon-rate", "SEGEDGE_BEACON_RATE", 10, "events per second one visitor may send to the beacon (bursts of 5x)")
	s.Duration(&c.StreamHeartbeat, "stream-heartbeat", "SEGEDGE_STREAM_HEARTBEAT", 15*time.Second, "interval of heartbeats on /user/segments/stream")
	s.Int(&c.StreamMaxPerUser, "stream-max-per-user", "SEGEDGE_STREAM_MAX_PER_USER", 4, "open segment streams one visitor may hold")
	s.Int(&c.StreamMax, "stream-max", "SEGEDGE_STREAM_MAX", 20000, "open segment streams in all")
	s.Duration(&c.UpstreamTimeout, "upstream-timeout", "SEGEDGE_UPSTREAM_TIMEOUT", 30*time.Second, "read/write timeout toward the upstream")
	s.String(&c.LogFormat, "log-format", "LOG_FORMAT", "text", "log format: text or json")
	s.String(&c.LogLevel, "log-level", "LOG_LEVEL", "info", "log level: debug, info, warn or error")
	s.Duration(&c.ShutdownTimeout, "shutdown-timeout", "SEGEDGE_SHUTDOWN_TIMEOUT", 10*time.Second, "how long in-flight requests may take after SIGTERM")
	trace.Flags(s, &c.Trace)
	return s
}

// Validate checks what can be checked without touching the network.
func (c *Config) Validate() error {
	var errs []error
	errs = append(errs, config.CheckAddr("EDGE_ADDR", c.Addr), config.CheckAddr("EDGE_OPS_ADDR", c.OpsAddr))
	if c.UpstreamURL == "" {
		errs = append(errs, errors.New("UPSTREAM_URL is required: the site the edge serves, e.g. -upstream-url http://127.0.0.1:9090"))
	} else {
		errs = append(errs, config.CheckURL("UPSTREAM_URL", c.UpstreamURL, "http", "https"))
	}
	errs = append(errs, config.CheckURL("ORIGIN_URL", c.OriginURL, "http", "https"), c.Trace.Validate())
	errs = append(errs, config.CheckURL("NATS_URL", c.NATSURL, "nats", "tls", "ws", "wss"))
	if c.CookieKey != "" && len(c.CookieKey) < 32 {
		errs = append(errs, errors.New("SEGEDGE_COOKIE_KEY must be at least 32 bytes"))
	}
	if c.BeaconRate <= 0 {
		errs = append(errs, errors.New("SEGEDGE_BEACON_RATE must be positive"))
	}
	if c.StreamHeartbeat <= 0 || c.StreamMaxPerUser <= 0 || c.StreamMax <= 0 {
		errs = append(errs, errors.New("SEGEDGE_STREAM_HEARTBEAT, SEGEDGE_STREAM_MAX_PER_USER and SEGEDGE_STREAM_MAX must be positive"))
	}
	if c.Addr == c.OpsAddr {
		errs = append(errs, errors.New("EDGE_ADDR and EDGE_OPS_ADDR must differ: operations endpoints are never public"))
	}
	return errors.Join(errs...)
}
