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
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/valyala/fasthttp"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/config"
	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/edge/proxy"
	"github.com/segedge/segedge/edge/replica"
)

// Main is the edge program: it parses args and the environment, runs until SIGINT or SIGTERM,
// and returns the exit code. Errors are printed as one line on stderr.
func Main(args []string, stderr io.Writer) int {
	var cfg Config
	fs := Flags(&cfg, stderr)
	if err := fs.Parse(args, os.LookupEnv); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "edge: %v\n", err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "edge: %v\n", config.OneLine(err))
		return 2
	}
	log, err := ops.NewLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(stderr, "edge: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, cfg, log); err != nil {
		fmt.Fprintf(stderr, "edge: %v\n", config.OneLine(err))
		return 1
	}
	return 0
}

// Run starts the edge and blocks until ctx is done or a fatal error happens, then shuts down
// gracefully: it stops accepting, lets in-flight requests finish within cfg.ShutdownTimeout,
// and closes NATS.
//
// The edge serves the site from the start, before NATS is connected (visitors get default
// content); /readyz says ready only once NATS is connected. If the first connection does not
// succeed within cfg.NATSConnectTimeout, Run fails: a misconfigured NATS_URL must not go unnoticed.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
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

	px, err := proxy.New(proxy.Config{
		Upstream:     cfg.UpstreamURL,
		ReadTimeout:  cfg.UpstreamTimeout,
		WriteTimeout: cfg.UpstreamTimeout,
	}, reg, log)
	if err != nil {
		return fmt.Errorf("proxy to %s: %w", cfg.UpstreamURL, err)
	}
	defer px.Close()

	var conn atomic.Pointer[nats.Conn]
	ready.Add("nats", func(context.Context) error { return bus.Check(conn.Load()) })
	topo := bus.Topology{Prefix: cfg.NATSPrefix, Partitions: bus.DefaultPartitions}
	var fetch replica.Fetcher
	if cfg.OriginToken != "" {
		fetch = newOriginClient(cfg.OriginURL, cfg.OriginToken).fetch
	}
	rep, err := replica.New(replica.Config{Topology: topo, MaxUsers: cfg.MaxUsers, Fetch: fetch, Registerer: reg, Log: log})
	if err != nil {
		return err
	}
	ready.Add("replica", func(context.Context) error {
		if !rep.CaughtUp() {
			return errors.New("segment replica still replaying DELTAS")
		}
		return nil
	})

	e := &edge{cfg: cfg, log: log, proxy: px, replica: rep}
	srv := &fasthttp.Server{
		Handler:                       e.handle,
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
	cfg     Config
	log     *slog.Logger
	proxy   *proxy.Proxy
	replica *replica.Replica
}

// handle is the public side: our own endpoints first, everything else to the upstream.
func (e *edge) handle(ctx *fasthttp.RequestCtx) {
	e.proxy.Handle(ctx)
}

// fasthttpLogger sends fasthttp's own messages (malformed requests and the like) to slog.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...))
}
