// Package server runs the origin: it wires NATS (embedded or external), the profile store, the
// ingest API, the segment engine and the admin API together, serves them on ORIGIN_ADDR next to
// /healthz, /readyz and /metrics, and shuts down gracefully.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ingest"
	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/rulestore"
	"github.com/segedge/segedge/core/trace"
	"github.com/segedge/segedge/origin/engine"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/rulesets"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/trigger"
	"github.com/segedge/segedge/wasm"
)

// Main is the origin program: it parses args and the environment, runs until SIGINT or SIGTERM,
// and returns the exit code. Errors are printed as one line on stderr.
func Main(args []string, stderr io.Writer) int {
	var cfg Config
	return ops.Main(ops.Program{
		Name: "origin", Settings: Flags(&cfg, stderr), Validate: cfg.Validate,
		LogFormat: &cfg.LogFormat, LogLevel: &cfg.LogLevel,
		Run: func(ctx context.Context, log *slog.Logger) error {
			// go-redis logs dial retries on its own to stderr; route them to our logger at debug
			// level so the one-line error is what a person sees.
			redis.SetLogger(redisLogger{log})
			return Run(ctx, cfg, log)
		},
	}, args, stderr)
}

// Run starts the origin and blocks until ctx is done, then shuts down: it stops accepting, lets
// in-flight requests finish within cfg.ShutdownTimeout, and closes NATS and the store.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	stopTracing, err := trace.Setup(ctx, cfg.Trace, "segedge-origin", log)
	if err != nil {
		return err
	}
	defer trace.Stop(stopTracing, log)
	reg := ops.NewRegistry()
	var ready ops.Readiness

	// Listen first, so a taken port fails before anything else starts.
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s (ORIGIN_ADDR): %w", cfg.Addr, err)
	}
	defer ln.Close()
	if cfg.PprofAddr != "" {
		stop, err := ops.ServeProfiler(cfg.PprofAddr, log)
		if err != nil {
			return err
		}
		defer stop()
	}

	natsURL := cfg.NATSURL
	if natsURL == "" {
		dir := filepath.Join(cfg.DataDir, "nats")
		emb, err := bus.StartEmbedded(bus.EmbeddedOptions{Addr: cfg.NATSEmbedAddr, StoreDir: dir})
		if err != nil {
			return err
		}
		defer emb.Shutdown()
		natsURL = emb.ClientURL()
		log.Info("embedded NATS server started", "url", natsURL, "store", dir)
	}
	nc, err := bus.Connect(ctx, natsURL, "segedge-origin", cfg.NATSConnectTimeout, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	topo := bus.Topology{Prefix: cfg.NATSPrefix, Partitions: cfg.Partitions}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = bus.EnsureStreams(sctx, js, topo, bus.StreamOptions{})
	cancel()
	if err != nil {
		return fmt.Errorf("%w (is JetStream enabled on %s?)", err, nc.ConnectedUrlRedacted())
	}
	if cfg.NATSURL == "" {
		// The embedded server lives and dies with this process, so the partition leases it kept
		// are an earlier run's, which is gone (killed): clear them, and the partitions are taken
		// at once instead of after the lease TTL. (Origins that share partitions use a real NATS.)
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := js.DeleteKeyValue(lctx, topo.LeaseBucket())
		cancel()
		if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
			log.Warn("clear the partition leases of an earlier run", "err", err)
		}
	}
	ready.Add("nats", func(context.Context) error { return bus.Check(nc) })
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "segedge_origin_nats_connected", Help: "1 while the origin is connected to NATS, else 0."},
		func() float64 {
			if bus.Check(nc) != nil {
				return 0
			}
			return 1
		}))

	st, err := openStores(ctx, cfg, log, reg, &ready)
	if err != nil {
		return err
	}
	defer st.close()
	if cfg.AdminToken == "" {
		log.Warn("SEGEDGE_ADMIN_TOKEN is empty: the admin API refuses every request")
	}
	if cfg.WriteKey == "" {
		log.Warn("SEGEDGE_WRITE_KEY is empty: POST /v1/events at the origin refuses every request")
	}

	mux := http.NewServeMux()
	ops.Mount(mux, reg, &ready)
	s := &origin{cfg: cfg, log: log, reg: reg, nc: nc, js: js, topo: topo,
		ingest: ingest.NewPublisher(js, topo, "origin", reg), limits: event.DefaultLimits(),
		store: st.profiles, members: st.members}
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: reg, Logger: log})
	if err != nil {
		return fmt.Errorf("wasm runtime: %w", err)
	}
	defer rt.Close(context.Background())
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	rstore, err := rulestore.Open(rctx, js, topo.RulesetBucket())
	rcancel()
	if err != nil {
		return err
	}
	var rescan *engine.Rescanner
	firer, err := trigger.NewFirer(ctx, trigger.FirerConfig{JS: js, Topology: topo, AllowHosts: cfg.webhookAllow(), Registerer: reg, Log: log})
	if err != nil {
		return fmt.Errorf("triggers: %w", err)
	}
	if cfg.WebhookSecret == "" {
		log.Warn("SEGEDGE_WEBHOOK_SECRET is empty: trigger firings are published on NATS but no webhook is called")
	} else {
		disp, err := trigger.NewDispatcher(trigger.DispatcherConfig{JS: js, Topology: topo, Secret: []byte(cfg.WebhookSecret),
			AllowHosts: cfg.webhookAllow(), MaxAttempts: cfg.WebhookAttempts, BackoffBase: cfg.WebhookBackoff, Registerer: reg, Log: log})
		if err != nil {
			return fmt.Errorf("webhooks: %w", err)
		}
		dctx, stopDisp := context.WithCancel(context.Background())
		defer stopDisp()
		go disp.Run(dctx)
	}
	mgr := rulesets.NewManager(rstore, &rulesets.WasmCompiler{RT: rt}, log, reg, func(l rulesets.Loaded, src []byte) {
		// Triggers first: a delta evaluated with the new ruleset must find its triggers set.
		if err := firer.SetRulesFile(src); err != nil {
			log.Error("triggers of the new ruleset not set; keeping the previous ones", "version", l.Version(), "err", err)
		}
		s.rules.Store(&activeRuleset{Rules: l, segments: l.SegmentNames()})
		if rescan != nil {
			rescan.Start(l.Version())
		}
	})
	s.rulesets = mgr
	mgr.SampleFrom(st.profiles) // dry runs count segment members among sampled profiles
	// Load the current version before consuming events, so no event is evaluated without it.
	if cur, err := rstore.Current(ctx); err == nil {
		if err := mgr.LoadNow(ctx, cur.Version); err != nil {
			log.Error("current ruleset not loaded", "version", cur.Version, "err", err)
		}
	}
	ready.Add("ruleset", func(ctx context.Context) error {
		cur, err := rstore.Current(ctx)
		if err != nil {
			return nil // none stored yet
		}
		if !mgr.Settled(cur.Version) { // a fallback after a quarantine is settled: degraded, not down
			return fmt.Errorf("ruleset %d not loaded", cur.Version)
		}
		return nil
	})
	eng, err := engine.New(engine.Config{
		JS: js, Topology: topo, Store: st.profiles, Members: st.members, Schedule: st.schedule,
		Rules: s.activeRules, ConsumerName: "origin", Registerer: reg, Log: log, Triggers: firer,
		OriginID: cfg.OriginID, LeaseTTL: cfg.LeaseTTL, Retention: cfg.Retention, Limits: s.limits,
	})
	if err != nil {
		return err
	}
	s.engine = eng
	rescan = engine.NewRescanner(eng, cfg.RescanRate, reg)
	defer rescan.Stop()
	s.rescan = rescan
	// The version loaded above, before the rescanner existed: its per-partition markers say
	// what is left (nothing after a plain restart; an interrupted rescan, or partitions taken
	// later from an origin that had not finished, are completed).
	if l := mgr.Active(); l != nil {
		rescan.Start(l.Version())
	}
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go mgr.Watch(wctx)
	engCtx, cancelEngine := context.WithCancel(context.Background())
	engDone := make(chan error, 1)
	go func() { engDone <- eng.Run(engCtx) }()
	// Stopping the engine releases its partition leases, which needs NATS: it runs before the
	// connection is drained on shutdown (and, deferred, on an early return).
	stopEngine := sync.OnceFunc(func() { cancelEngine(); <-engDone })
	defer stopEngine()
	// Ready once this origin has taken its share of the partitions (all of them when alone).
	ready.Add("partitions", eng.Ready)
	s.routes(mux)

	srv := &http.Server{
		Handler:           ops.WithRequestID(mux),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("origin listening", "addr", ln.Addr().String(), "nats", nc.ConnectedUrlRedacted(), "partitions", cfg.Partitions)

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", cfg.ShutdownTimeout)
	sctx, cancel = context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	stopEngine() // other origins take the partitions at once instead of after the lease TTL
	if err := nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		log.Warn("nats drain", "err", err)
	}
	log.Info("stopped")
	return nil
}

// origin holds what the HTTP handlers need.
type origin struct {
	cfg  Config
	log  *slog.Logger
	reg  prometheus.Registerer
	nc   *nats.Conn
	js   jetstream.JetStream
	topo bus.Topology

	ingest   *ingest.Publisher
	limits   event.Limits
	store    store.Store
	members  members.Store
	engine   *engine.Engine
	rescan   *engine.Rescanner
	rulesets *rulesets.Manager
	rules    atomic.Pointer[activeRuleset]
}

// activeRuleset is the ruleset in force at this origin.
type activeRuleset struct {
	engine.Rules
	segments []string
}

func (o *origin) activeRules() engine.Rules {
	if a := o.rules.Load(); a != nil {
		return a.Rules
	}
	return nil
}

func (o *origin) rulesetVersion() uint64 {
	if a := o.rules.Load(); a != nil {
		return a.Version()
	}
	return 0
}

func (o *origin) segmentNames() []string {
	if a := o.rules.Load(); a != nil {
		return a.segments
	}
	return nil
}

func (o *origin) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "segedge origin\n")
	})
	mux.HandleFunc("POST /v1/events", bearer(o.cfg.WriteKey, "write key", o.postEvents))
	admin := func(h http.HandlerFunc) http.HandlerFunc { return bearer(o.cfg.AdminToken, "admin token", h) }
	reader := func(h http.HandlerFunc) http.HandlerFunc {
		return bearerAny([]string{o.cfg.AdminToken, o.cfg.ReadKey}, "admin token or read key", h)
	}
	mux.HandleFunc("GET /v1/users/{id}", reader(o.getUser))
	mux.HandleFunc("DELETE /v1/users/{id}", admin(o.deleteUser))
	mux.HandleFunc("GET /v1/users/{id}/segments", reader(o.getUserSegments))
	mux.HandleFunc("GET /v1/users/{id}/explain", admin(o.newExplainer().serve)) // explain.go
	mux.HandleFunc("GET /user/segments", reader(o.getUserSegments))
	mux.HandleFunc("GET /v1/segments", reader(o.listSegments))
	mux.HandleFunc("GET /v1/rescan", reader(o.getRescan))
	mux.HandleFunc("POST /v1/invalidate", admin(o.postInvalidate))
	if o.rulesets != nil {
		o.rulesets.Routes(mux, admin)
	}
}

// redisLogger adapts go-redis's internal logging to slog.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}
