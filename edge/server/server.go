// Package server runs the edge: the public fasthttp listener (the proxied site, the browser
// beacon and the /user endpoints), the private operations listener (/healthz, /readyz,
// /metrics), the NATS connection that feeds it, and graceful shutdown.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ingest"
	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/trace"
	"github.com/segedge/segedge/edge/compress"
	"github.com/segedge/segedge/edge/httpcache"
	"github.com/segedge/segedge/edge/identity"
	"github.com/segedge/segedge/edge/proxy"
	"github.com/segedge/segedge/edge/push"
	"github.com/segedge/segedge/edge/replica"
	"github.com/segedge/segedge/wasm"
)

// Main is the edge program: it parses args and the environment, runs until SIGINT or SIGTERM,
// and returns the exit code. Errors are printed as one line on stderr.
func Main(args []string, stderr io.Writer) int {
	var cfg Config
	return ops.Main(ops.Program{
		Name: "edge", Settings: Flags(&cfg, stderr), Validate: cfg.Validate,
		LogFormat: &cfg.LogFormat, LogLevel: &cfg.LogLevel,
		Run: func(ctx context.Context, log *slog.Logger) error { return Run(ctx, cfg, log) },
	}, args, stderr)
}

// Run starts the edge and blocks until ctx is done or a fatal error happens, then shuts down
// gracefully: it stops accepting, lets in-flight requests finish within cfg.ShutdownTimeout,
// and closes NATS.
//
// The edge serves the site from the start, before NATS is connected (visitors get default
// content); /readyz says ready only once NATS is connected. If the first connection does not
// succeed within cfg.NATSConnectTimeout, Run fails: a misconfigured NATS_URL must not go unnoticed.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	stopTracing, err := trace.Setup(ctx, cfg.Trace, "segedge-edge", log)
	if err != nil {
		return err
	}
	defer trace.Stop(stopTracing, log)
	reg := ops.NewRegistry()
	var ready ops.Readiness

	pub, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s (EDGE_ADDR): %w", cfg.Addr, err)
	}
	defer pub.Close()
	opsLn, err := net.Listen("tcp", cfg.OpsAddr)
	if err != nil {
		return fmt.Errorf("listen on %s (EDGE_OPS_ADDR): %w", cfg.OpsAddr, err)
	}
	defer opsLn.Close()

	cache, err := httpcache.New(httpcache.Config{MaxBytes: uint64(cfg.CacheBytes)}, reg)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: reg, Logger: log})
	if err != nil {
		return fmt.Errorf("wasm runtime: %w", err)
	}
	defer rt.Close(context.Background())
	e := &edge{cfg: cfg, log: log, cache: cache, rt: rt}
	e.metrics(reg)
	e.explain = newExplainer(reg)
	var compressed *compress.Cache
	if cfg.Compress {
		if compressed, err = compress.New(uint64(cfg.CompressCacheBytes), reg); err != nil {
			return err
		}
	}
	px, err := proxy.New(proxy.Config{
		Upstream:     cfg.UpstreamURL,
		ReadTimeout:  cfg.UpstreamTimeout,
		WriteTimeout: cfg.UpstreamTimeout,
		Cache:        cache,
		OnCacheFill:  onCacheFill,
		Render:       e.render,
		OnUpstream:   traceUpstream,
		Compress:     compressed,
	}, reg, log)
	if err != nil {
		return fmt.Errorf("proxy to %s: %w", cfg.UpstreamURL, err)
	}
	defer px.Close()

	var conn atomic.Pointer[nats.Conn]
	ready.Add("nats", func(context.Context) error { return bus.Check(conn.Load()) })
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "segedge_edge_nats_connected", Help: "1 while the edge is connected to NATS, else 0."},
		func() float64 {
			if bus.Check(conn.Load()) != nil {
				return 0
			}
			return 1
		}))
	topo := bus.Topology{Prefix: cfg.NATSPrefix, Partitions: bus.DefaultPartitions}
	var fetch replica.Fetcher
	if cfg.OriginToken != "" {
		fetch = newOriginClient(cfg.OriginURL, cfg.OriginToken).fetch
	}
	rep, err := replica.New(replica.Config{Topology: topo, MaxUsers: cfg.MaxUsers, Fetch: fetch, Registerer: reg, Log: log,
		OnChange: func(user string, old, new *replica.Entry) { e.onReplicaChange(user, old, new) }})
	if err != nil {
		return err
	}
	ready.Add("ruleset", func(context.Context) error {
		if msg, _ := e.rulesetErr.Load().(string); msg != "" {
			return errors.New(msg)
		}
		if !e.rulesetsWatched.Load() {
			return errors.New("ruleset store not read yet")
		}
		return nil
	})
	ready.Add("replica", func(context.Context) error {
		if !rep.CaughtUp() {
			return errors.New("segment replica still replaying DELTAS")
		}
		return nil
	})

	keys := [][]byte{identity.RandomKey()}
	if cfg.CookieKey != "" {
		if keys, err = identity.ParseKeys(cfg.CookieKey); err != nil {
			return fmt.Errorf("SEGEDGE_COOKIE_KEY: %w", err)
		}
	} else {
		log.Warn("SEGEDGE_COOKIE_KEY is empty: using a random key; visitors' cookies will not survive a restart")
	}
	signer, err := identity.NewSigner(keys...)
	if err != nil {
		return fmt.Errorf("SEGEDGE_COOKIE_KEY: %w", err)
	}
	e.proxy, e.replica, e.signer = px, rep, signer
	if e.trusted, err = newTrustedUsers(cfg.UserHeader, cfg.TrustedNetworks, reg); err != nil {
		return err
	}
	e.cookieOpts = identity.CookieOptions{Secure: cfg.CookieSecure}
	e.limits = event.DefaultLimits()
	e.limits.MaxBodyBytes = 64 << 10
	e.limits.MaxBatch = 50
	e.beacons = newBeaconLimiter(cfg.BeaconRate, int(cfg.BeaconRate*5))
	e.push = push.NewHub(cfg.StreamMaxPerUser, cfg.StreamMax, reg)
	e.done = make(chan struct{})
	srv := &fasthttp.Server{
		Handler:                       e.handler(),
		Name:                          "segedge",
		ReadTimeout:                   30 * time.Second,
		WriteTimeout:                  60 * time.Second,
		IdleTimeout:                   120 * time.Second,
		MaxRequestBodySize:            4 << 20,
		ReadBufferSize:                16 << 10,
		DisableHeaderNamesNormalizing: true,
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		NoDefaultDate:                 true,
		StreamRequestBody:             true,
		KeepHijackedConns:             true, // segment streams (user.go, ws.go) own and close their hijacked sockets
		Logger:                        fasthttpLogger{log},
	}
	opsMux := http.NewServeMux()
	ops.Mount(opsMux, reg, &ready)
	opsSrv := &http.Server{Handler: opsMux, ReadHeaderTimeout: 5 * time.Second}

	errc := make(chan error, 3)
	go func() { errc <- wrap("serve public", srv.Serve(pub)) }()
	go func() { errc <- wrap("serve operations", opsSrv.Serve(opsLn)) }()
	log.Info("edge listening", "addr", pub.Addr().String(), "ops", opsLn.Addr().String(), "upstream", cfg.UpstreamURL)

	go func() {
		nc, err := bus.Connect(ctx, cfg.NATSURL, "segedge-edge", cfg.NATSConnectTimeout, log)
		if err != nil {
			if ctx.Err() == nil {
				errc <- fmt.Errorf("%w (is the origin running, or NATS_URL right?)", err)
			}
			return
		}
		conn.Store(nc)
		log.Info("nats connected", "url", nc.ConnectedUrlRedacted())
		js, err := jetstream.New(nc)
		if err != nil {
			errc <- fmt.Errorf("jetstream: %w", err)
			return
		}
		e.ingest.Store(ingest.NewPublisher(js, topo, "edge", reg))
		go func() {
			if err := e.watchRulesets(ctx, js, topo); err != nil && ctx.Err() == nil {
				errc <- err
			}
		}()
		go func() {
			if err := e.applyPurges(ctx, js, topo); err != nil && ctx.Err() == nil {
				log.Error("purges not followed", "err", err)
			}
		}()
		if err := rep.Run(ctx, js); err != nil {
			errc <- err
		}
	}()

	var runErr error
	select {
	case runErr = <-errc:
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", cfg.ShutdownTimeout)
	close(e.done) // ends open segment streams, so Shutdown does not wait for them
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.ShutdownWithContext(sctx); err != nil && runErr == nil {
		runErr = fmt.Errorf("shutdown: %w", err)
	}
	_ = opsSrv.Shutdown(sctx)
	if nc := conn.Load(); nc != nil {
		nc.Close()
	}
	if runErr == nil {
		log.Info("stopped")
	}
	return runErr
}

func wrap(what string, err error) error {
	if err == nil || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// edge holds what the request handlers need.
type edge struct {
	cfg        Config
	log        *slog.Logger
	proxy      *proxy.Proxy
	replica    *replica.Replica
	signer     *identity.Signer
	cookieOpts identity.CookieOptions
	limits     event.Limits
	beacons    *beaconLimiter
	push       *push.Hub
	trusted    *trustedUsers // the trusted user-id header (off unless configured)
	ingest     atomic.Pointer[ingest.Publisher]
	ruleset    atomic.Uint64
	done       chan struct{}

	cache           *httpcache.Cache
	rt              *wasm.Runtime
	rs              atomic.Pointer[edgeRuleset]
	rulesetsWatched atomic.Bool
	rulesetErr      atomic.Value // string: why the newest version is not loaded
	rulesetGauge    prometheus.Gauge
	rulesetFailures prometheus.Counter
	evalDur         prometheus.Histogram
	spliceDur       prometheus.Histogram
	evalFailures    prometheus.Counter
	explain         *explainer      // GET /user/explain with the debug token (explain.go)
	fb              rulesetFallback // quarantine fallback (quarantine.go)

	fragmentRefreshes prometheus.Counter
	fragmentFailures  prometheus.Counter
}

func (e *edge) metrics(reg prometheus.Registerer) {
	lat := prometheus.ExponentialBuckets(0.000001, 2, 20)
	e.rulesetGauge = prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_edge_ruleset_version", Help: "The ruleset version this edge evaluates."})
	e.rulesetFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_ruleset_load_failures_total", Help: "Ruleset versions this edge could not load (it keeps the previous one)."})
	e.evalDur = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "segedge_edge_eval_duration_seconds", Help: "One ruleset evaluation for a request (identity, replica, sandbox call).", Buckets: lat})
	e.spliceDur = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "segedge_edge_splice_duration_seconds", Help: "Writing a personalized page from its chunks.", Buckets: lat})
	e.evalFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_eval_failures_total", Help: "Evaluations that failed closed (the page kept its defaults)."})
	e.fragmentRefreshes = prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_fragment_refreshes_total", Help: "Times a purge naming slot fragments swapped in their refetched HTML."})
	e.fragmentFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_fragment_fetch_failures_total", Help: "Purged fragments that could not be refetched (they keep their previous HTML)."})
	reg.MustRegister(e.rulesetGauge, e.rulesetFailures, e.evalDur, e.spliceDur, e.evalFailures, e.fragmentRefreshes, e.fragmentFailures)
	e.fb.register(reg)
}

func (e *edge) rulesetVersion() uint64 { return e.ruleset.Load() }

// rulesetHeader says which ruleset version answered, v, the version active when the request
// began, unless the personalized render already named the exact version it evaluated (a swap
// may happen during a request). Not the version active when the response is finished: a page
// served unpersonalized because no ruleset was active yet would then claim the one activated
// meanwhile (seen once in the ruleset swap test: "Segedge-Ruleset 1" on a default page).
func (e *edge) rulesetHeader(ctx *fasthttp.RequestCtx, v uint64) {
	if v > 0 && ctx.Response.Header.Peek("Segedge-Ruleset") == nil {
		ctx.Response.Header.Set("Segedge-Ruleset", strconv.FormatUint(v, 10))
	}
}

// handle is the public side: our own endpoints first, everything else to the upstream.
func (e *edge) handle(ctx *fasthttp.RequestCtx) {
	defer e.rulesetHeader(ctx, e.ruleset.Load()) // the version now: see rulesetHeader
	path := ctx.Path()
	switch {
	case len(path) > 5 && string(path[:6]) == "/user/":
		e.userRoute(ctx, path)
	case string(path) == "/v1/events":
		if !ctx.IsPost() {
			methodNotAllowed(ctx, "POST")
			return
		}
		if e.ingest.Load() == nil {
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
			ctx.Response.Header.Set("Retry-After", "1")
			writeJSONBody(ctx, map[string]string{"error": "not connected to NATS yet; retry"})
			return
		}
		e.postEvents(ctx)
	case string(path) == "/segedge.js":
		e.serveClient(ctx)
	default:
		e.serveSite(ctx)
	}
}

// serveSite proxies (and later personalizes) the site. A visitor without a valid cookie gets one
// with the first HTML page, not with every image or script.
func (e *edge) serveSite(ctx *fasthttp.RequestCtx) {
	// (user also removes the header when it is not to be believed, before the upstream sees it.)
	_, known := e.trusted.user(ctx) // a logged-in user named by a trusted hop needs no cookie
	if !known {
		_, known = e.signer.Verify(ctx.Request.Header.Cookie(identity.CookieName))
	}
	e.proxied(ctx)
	// Render (a personalized page) has identified the visitor already.
	if !known && isHTML(ctx.Response.Header.ContentType()) && ctx.Response.Header.PeekCookie(identity.CookieName) == nil {
		e.identify(ctx)
	}
}

func isHTML(ct []byte) bool {
	return len(ct) >= 9 && (string(ct[:9]) == "text/html" || string(ct[:9]) == "TEXT/HTML")
}

func (e *edge) userRoute(ctx *fasthttp.RequestCtx, path []byte) {
	if !ctx.IsGet() && !ctx.IsHead() {
		methodNotAllowed(ctx, "GET")
		return
	}
	switch string(path) {
	case "/user/segments":
		e.getSegments(ctx)
	case "/user/segments/stream":
		e.streamSegments(ctx)
	case "/user/explain":
		e.explain.serve(e, ctx)
	case "/user/segments/ws":
		e.streamSegmentsWS(ctx)
	default:
		if name, ok := strings.CutPrefix(string(path), "/user/slots/"); ok && name != "" {
			e.getSlot(ctx, name)
			return
		}
		e.proxy.Handle(ctx) // the site's own /user/... pages
	}
}

func methodNotAllowed(ctx *fasthttp.RequestCtx, allow string) {
	ctx.Response.Header.Set("Allow", allow)
	ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
}

// fasthttpLogger sends fasthttp's own messages (malformed requests and the like) to slog.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...))
}
