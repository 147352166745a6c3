// Package ops holds the operations surface that origin and edge share: /healthz, /readyz and
// /metrics, the structured logger, and the process's Prometheus registry.
//
// /healthz says the process is alive. /readyz says it can do its job: every readiness check
// (NATS connected, store reachable, ruleset loaded...) passes. A load balancer routes traffic only
// to ready instances; an orchestrator restarts only unhealthy ones.
package ops

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry with the Go runtime and process collectors, so each program has
// its own registry rather than the global default.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Readiness is a set of named checks. The zero value is ready.
type Readiness struct {
	mu     sync.RWMutex
	checks map[string]func(context.Context) error
}

// Add registers a check; a later Add with the same name replaces it.
func (r *Readiness) Add(name string, check func(context.Context) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.checks == nil {
		r.checks = map[string]func(context.Context) error{}
	}
	r.checks[name] = check
}

// Check runs every check and returns the failures by name.
func (r *Readiness) Check(ctx context.Context) map[string]error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	failed := map[string]error{}
	for name, c := range r.checks {
		if err := c(ctx); err != nil {
			failed[name] = err
		}
	}
	return failed
}

// Mount adds /healthz, /readyz and /metrics to mux.
func Mount(mux *http.ServeMux, g prometheus.Gatherer, ready *Readiness) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, req *http.Request) {
		ctx, cancel := context.WithTimeout(req.Context(), 2*time.Second)
		defer cancel()
		failed := ready.Check(ctx)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if len(failed) == 0 {
			io.WriteString(w, "ready\n")
			return
		}
		names := make([]string, 0, len(failed))
		for n := range failed {
			names = append(names, n)
		}
		sort.Strings(names)
		var b strings.Builder
		for _, n := range names {
			fmt.Fprintf(&b, "%s: %v\n", n, failed[n])
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, b.String())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
}

// NewLogger returns a slog logger writing text (for a terminal) or JSON (for collectors).
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q: want text or json", format)
	}
}
