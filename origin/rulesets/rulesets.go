// Package rulesets is the origin's side of ruleset management: the admin API that validates,
// compiles, tests and stores uploads (PUT /v1/rulesets and friends), and the watcher that loads
// the current version into the sandbox and swaps it in for the segment engine.
//
// A bad file never goes live: an upload is compiled and its tests run before anything is stored,
// and the current pointer moves only after the new version is stored whole. Every origin and edge
// follows the pointer in core/rulestore, so a rollback is one POST.
package rulesets

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/rulestore"
	"github.com/segedge/segedge/origin/engine"
)

// MaxSourceBytes caps an uploaded rules file.
const MaxSourceBytes = 4 << 20

// Compiled is the result of compiling and testing a rules file.
type Compiled struct {
	Module   []byte
	Manifest []byte
	Segments []string
	// Tests is a human-readable report of the file's tests (all passed, or Compile failed).
	Tests string
}

// Problem is one thing wrong with an upload, with its position when known.
type Problem struct {
	File    string `json:"file,omitempty"`
	Line    int    `json:"line,omitempty"`
	Column  int    `json:"column,omitempty"`
	Message string `json:"message"`
}

// Loaded is a stored version loaded into the sandbox, ready for the engine.
type Loaded interface {
	engine.Rules
	SegmentNames() []string
	Close() error
}

// Compiler is what the rule compiler offers this package.
type Compiler interface {
	// Compile validates, compiles and tests a rules file; problems are returned with positions.
	Compile(ctx context.Context, name string, src []byte) (*Compiled, []Problem)
	// Load loads a stored version's module and manifest.
	Load(ctx context.Context, version uint64, module, manifest []byte) (Loaded, error)
	// Sample evaluates a compiled upload against a stored profile sample for dry runs: how many
	// of the sampled users each segment would hold. It may return nil when unsupported.
	Sample(ctx context.Context, c *Compiled, users []string) (map[string]int, error)
}

// Manager serves the API and keeps the active version.
type Manager struct {
	store    *rulestore.Store
	compiler Compiler
	log      *slog.Logger
	onSwap   func(l Loaded, source []byte)

	mu     sync.Mutex
	active Loaded

	swaps   *prometheus.CounterVec
	version prometheus.Gauge
	swapLat prometheus.Histogram
}

// NewManager returns a manager; onSwap is called with each newly active version (after which
// the previous one is closed).
func NewManager(store *rulestore.Store, c Compiler, log *slog.Logger, reg prometheus.Registerer, onSwap func(l Loaded, source []byte)) *Manager {
	m := &Manager{
		store: store, compiler: c, log: log, onSwap: onSwap,
		swaps:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segedge_origin_ruleset_loads_total", Help: "Ruleset versions loaded, by result (ok, error)."}, []string{"result"}),
		version: prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_origin_ruleset_version", Help: "The ruleset version this origin evaluates."}),
		swapLat: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "segedge_origin_ruleset_swap_seconds", Help: "From a new current pointer seen to the version active.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
	}
	m.swaps.WithLabelValues("ok")
	m.swaps.WithLabelValues("error")
	reg.MustRegister(m.swaps, m.version, m.swapLat)
	return m
}

// Active returns the version in force, or nil.
func (m *Manager) Active() Loaded {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.active
}

// Watch follows the current pointer until ctx is done, loading each new version. A version that
// fails to load is logged and counted; the previous one stays active.
func (m *Manager) Watch(ctx context.Context) error {
	ch, err := m.store.Watch(ctx)
	if err != nil {
		return err
	}
	for p := range ch {
		t0 := time.Now()
		if a := m.Active(); a != nil && a.Version() == p.Version {
			continue
		}
		if err := m.load(ctx, p.Version); err != nil {
			m.swaps.WithLabelValues("error").Inc()
			m.log.Error("ruleset not loaded; keeping the previous version", "version", p.Version, "err", err)
			continue
		}
		m.swaps.WithLabelValues("ok").Inc()
		m.swapLat.Observe(time.Since(t0).Seconds())
	}
	return nil
}

// LoadNow loads a version synchronously (at start, before events are consumed).
func (m *Manager) LoadNow(ctx context.Context, version uint64) error { return m.load(ctx, version) }

func (m *Manager) load(ctx context.Context, version uint64) error {
	v, err := m.store.Get(ctx, version)
	if err != nil {
		return err
	}
	l, err := m.compiler.Load(ctx, version, v.Module, v.Manifest)
	if err != nil {
		return fmt.Errorf("load ruleset %d: %w", version, err)
	}
	m.mu.Lock()
	old := m.active
	m.active = l
	m.mu.Unlock()
	m.version.Set(float64(version))
	if m.onSwap != nil {
		m.onSwap(l, v.Source)
	}
	if old != nil {
		old.Close()
	}
	m.log.Info("ruleset active", "version", version, "segments", len(l.SegmentNames()))
	return nil
}

// Routes mounts the API on mux; admin wraps handlers with the admin token check.
func (m *Manager) Routes(mux *http.ServeMux, admin func(http.HandlerFunc) http.HandlerFunc) {
	mux.HandleFunc("PUT /v1/rulesets", admin(m.put))
	mux.HandleFunc("GET /v1/rulesets", admin(m.list))
	mux.HandleFunc("GET /v1/rulesets/{version}", admin(m.get))
	mux.HandleFunc("POST /v1/rulesets/{version}/activate", admin(m.activate))
	mux.HandleFunc("POST /v1/rulesets/dry-run", admin(m.dryRun))
}

func ifMatch(r *http.Request) (uint64, error) {
	h := strings.Trim(r.Header.Get("If-Match"), `"W/ `)
	if h == "" || h == "*" {
		return 0, nil
	}
	n, err := strconv.ParseUint(h, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("If-Match %q: want a ruleset version number", r.Header.Get("If-Match"))
	}
	return n, nil
}

func readSource(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	src, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxSourceBytes))
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]any{"error": fmt.Sprintf("rules file over %d bytes", MaxSourceBytes)})
		return nil, false
	}
	if len(src) == 0 {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"error": "empty rules file", "problems": []Problem{{Message: "the body must be the rules file (YAML or JSON)"}}})
		return nil, false
	}
	return src, true
}

func (m *Manager) compile(w http.ResponseWriter, r *http.Request, src []byte) (*Compiled, bool) {
	name := r.URL.Query().Get("file")
	if name == "" {
		name = "rules.yaml"
	}
	c, problems := m.compiler.Compile(r.Context(), name, src)
	if len(problems) > 0 {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"error": "ruleset rejected; the current version is unchanged", "problems": problems})
		return nil, false
	}
	return c, true
}

// put is PUT /v1/rulesets: validate, compile, test, store, make current.
func (m *Manager) put(w http.ResponseWriter, r *http.Request) {
	match, err := ifMatch(r)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error()})
		return
	}
	src, ok := readSource(w, r)
	if !ok {
		return
	}
	c, ok := m.compile(w, r, src)
	if !ok {
		return
	}
	meta, err := m.store.Put(r.Context(), rulestore.Version{
		Source: src, Module: c.Module, Manifest: c.Manifest,
		Meta: rulestore.Meta{Author: r.Header.Get("X-Segedge-Author"), Message: r.URL.Query().Get("message"), Segments: len(c.Segments)},
	}, match)
	if errors.Is(err, rulestore.ErrStale) {
		writeJSON(w, http.StatusPreconditionFailed, map[string]any{"error": err.Error()})
		return
	}
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "store ruleset: " + err.Error()})
		return
	}
	w.Header().Set("ETag", `"`+strconv.FormatUint(meta.Version, 10)+`"`)
	writeJSON(w, http.StatusCreated, map[string]any{"version": meta.Version, "meta": meta, "segments": c.Segments, "tests": c.Tests})
}

func (m *Manager) list(w http.ResponseWriter, r *http.Request) {
	list, err := m.store.List(r.Context())
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
		return
	}
	cur, err := m.store.Current(r.Context())
	if err != nil && !errors.Is(err, rulestore.ErrNotFound) {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
		return
	}
	if cur.Version > 0 {
		w.Header().Set("ETag", `"`+strconv.FormatUint(cur.Version, 10)+`"`)
	}
	writeJSON(w, http.StatusOK, map[string]any{"current": cur.Version, "versions": list})
}

func (m *Manager) pathVersion(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	n, err := strconv.ParseUint(r.PathValue("version"), 10, 64)
	if err != nil || n == 0 {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "version must be a positive number"})
		return 0, false
	}
	return n, true
}

func (m *Manager) get(w http.ResponseWriter, r *http.Request) {
	n, ok := m.pathVersion(w, r)
	if !ok {
		return
	}
	v, err := m.store.Get(r.Context(), n)
	if errors.Is(err, rulestore.ErrNotFound) {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": err.Error()})
		return
	}
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
		return
	}
	if r.URL.Query().Get("source") == "1" || strings.Contains(r.Header.Get("Accept"), "yaml") {
		w.Header().Set("Content-Type", "application/yaml")
		w.Write(v.Source)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"meta": v.Meta, "source": string(v.Source)})
}

func (m *Manager) activate(w http.ResponseWriter, r *http.Request) {
	n, ok := m.pathVersion(w, r)
	if !ok {
		return
	}
	match, err := ifMatch(r)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error()})
		return
	}
	meta, err := m.store.Activate(r.Context(), n, match)
	switch {
	case errors.Is(err, rulestore.ErrNotFound):
		writeJSON(w, http.StatusNotFound, map[string]any{"error": err.Error()})
	case errors.Is(err, rulestore.ErrStale):
		writeJSON(w, http.StatusPreconditionFailed, map[string]any{"error": err.Error()})
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
	default:
		w.Header().Set("ETag", `"`+strconv.FormatUint(meta.Version, 10)+`"`)
		writeJSON(w, http.StatusOK, map[string]any{"current": meta.Version, "meta": meta})
	}
}

func (m *Manager) dryRun(w http.ResponseWriter, r *http.Request) {
	src, ok := readSource(w, r)
	if !ok {
		return
	}
	c, ok := m.compile(w, r, src)
	if !ok {
		return
	}
	ans := map[string]any{"ok": true, "segments": c.Segments, "tests": c.Tests}
	if users := r.URL.Query().Get("sample"); users != "" {
		counts, err := m.compiler.Sample(r.Context(), c, strings.Split(users, ","))
		if err != nil {
			ans["sample_error"] = err.Error()
		} else if counts != nil {
			ans["sample"] = counts
		}
	}
	writeJSON(w, http.StatusOK, ans)
}
