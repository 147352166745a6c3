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
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/core/rulestore"
	"github.com/segedge/segedge/origin/engine"
	"github.com/segedge/segedge/wasm"
)

// MaxSourceBytes caps an uploaded rules file.
const MaxSourceBytes = rules.MaxFileBytes

// MaxModuleBytes caps one uploaded hand-written module (the sandbox's default cap; a Go guest
// is ~2 MiB).
const MaxModuleBytes = wasm.DefaultMaxModuleBytes

// MaxUploadBytes caps a whole multipart upload: the rules file and two modules at their caps.
const MaxUploadBytes = MaxSourceBytes + 2*MaxModuleBytes + 64<<10

// Dry-run sampling: how many stored profiles POST /v1/rulesets/dry-run evaluates by default
// (?sample=N), and at most.
const (
	DefaultSample = 1000
	MaxSample     = 10000
)

// Compiled is the result of compiling and testing a rules file.
type Compiled struct {
	Module   []byte
	Manifest []byte
	Modules  []rulestore.Module // hand-written modules, in the manifest's order
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
	// Compile validates, compiles and tests a rules file with the hand-written modules it lists
	// (path as written in the file → bytes); problems are returned with positions.
	Compile(ctx context.Context, name string, src []byte, modules map[string][]byte) (*Compiled, []Problem)
	// Load loads a stored version: its module, manifest and hand-written modules.
	Load(ctx context.Context, v *rulestore.Version) (Loaded, error)
	// Sample evaluates a compiled upload on sampled profiles for dry runs (no request, as the
	// origin evaluates): how many of them each segment would hold.
	Sample(ctx context.Context, c *Compiled, profiles []*profile.Profile) (*SampleResult, error)
}

// SampleResult is what a dry run reports about sampled profiles.
type SampleResult struct {
	Size   int            `json:"size"`   // profiles evaluated
	Counts map[string]int `json:"counts"` // segment → members among them (segments that need no request)
	// NeedsRequest lists the segments that read the request: they are decided at the edge, per
	// request, so a profile alone does not say whether the user is a member.
	NeedsRequest []string `json:"needs_request,omitempty"`
	Errors       int      `json:"errors,omitempty"` // evaluations that failed as a whole
}

// Sampler gives a bounded sample of stored profiles (origin/store.Store implements it).
type Sampler interface {
	Sample(ctx context.Context, n int) ([]*profile.Profile, error)
}

// Manager serves the API and keeps the active version.
type Manager struct {
	store    *rulestore.Store
	compiler Compiler
	log      *slog.Logger
	onSwap   func(l Loaded, source []byte)
	sampler  Sampler

	// swapMu serializes loading a version and falling back from a quarantined one.
	swapMu sync.Mutex

	mu        sync.Mutex
	active    Loaded
	activeSrc []byte
	// prev is the previous good version, kept loaded while active may be quarantined (it has
	// hand-written modules) to fall back to; see quarantine.go.
	prev      Loaded
	prevSrc   []byte
	quar      *QuarantineStatus // the quarantine of the version last made active, if any
	stopWatch chan struct{}     // closed to stop the active version's quarantine watch
	// swapped is closed (and replaced) after each version becomes active here, onSwap included:
	// put and activate wait on it so that their answer means "this origin evaluates new events
	// with it" (an event sent right after the answer must not be applied under the old spec).
	swapped chan struct{}

	swaps       *prometheus.CounterVec
	version     prometheus.Gauge
	swapLat     prometheus.Histogram
	quarantines *prometheus.CounterVec
	quarantined prometheus.Gauge
	fallbackG   prometheus.Gauge
}

// NewManager returns a manager; onSwap is called with each newly active version (after which
// the previous one is closed, unless it is kept to fall back to: see quarantine.go), including
// a previous version reinstated after a quarantine.
func NewManager(store *rulestore.Store, c Compiler, log *slog.Logger, reg prometheus.Registerer, onSwap func(l Loaded, source []byte)) *Manager {
	m := &Manager{
		store: store, compiler: c, log: log, onSwap: onSwap, swapped: make(chan struct{}),
		swaps:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segedge_origin_ruleset_loads_total", Help: "Ruleset versions loaded, by result (ok, error)."}, []string{"result"}),
		version: prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_origin_ruleset_version", Help: "The ruleset version this origin evaluates."}),
		swapLat: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "segedge_origin_ruleset_swap_seconds", Help: "From a new current pointer seen to the version active.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
	}
	m.quarantines = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segedge_origin_ruleset_quarantines_total",
		Help: "Active ruleset versions whose hand-written module was quarantined after repeated failures, by outcome (fallback: the previous good version reinstated; fail_closed: none loaded, the module's segments fail closed)."}, []string{"outcome"})
	m.quarantined = prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_origin_ruleset_quarantined", Help: "1 while the ruleset version last made active here has a quarantined hand-written module, else 0."})
	m.fallbackG = prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_origin_ruleset_fallback", Help: "1 while this origin evaluates a previous version reinstated after the current one was quarantined, else 0."})
	m.swaps.WithLabelValues("ok")
	m.swaps.WithLabelValues("error")
	m.quarantines.WithLabelValues("fallback")
	m.quarantines.WithLabelValues("fail_closed")
	reg.MustRegister(m.swaps, m.version, m.swapLat, m.quarantines, m.quarantined, m.fallbackG)
	return m
}

// SampleFrom makes dry runs evaluate the candidate on profiles sampled from s.
func (m *Manager) SampleFrom(s Sampler) { m.sampler = s }

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
		if m.isActive(p.Version) {
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
	m.swapMu.Lock()
	defer m.swapMu.Unlock()
	v, err := m.store.Get(ctx, version)
	if err != nil {
		return err
	}
	l, err := m.compiler.Load(ctx, v)
	if err != nil {
		return fmt.Errorf("load ruleset %d: %w", version, err)
	}
	m.mu.Lock()
	old, oldSrc, oldPrev := m.active, m.activeSrc, m.prev
	// The version active now is the previous good one unless it was quarantined itself (then
	// there is none: a quarantined version with a fallback is no longer active).
	good := old != nil && (m.quar == nil || m.quar.Version != old.Version())
	m.prev, m.prevSrc = nil, nil
	if _, ok := canQuarantine(l); ok && good {
		m.prev, m.prevSrc = old, oldSrc
	}
	kept := m.prev
	m.active, m.activeSrc = l, v.Source
	m.quar = nil
	m.startWatchLocked(l)
	m.mu.Unlock()
	m.version.Set(float64(version))
	m.quarantined.Set(0)
	m.fallbackG.Set(0)
	if m.onSwap != nil {
		m.onSwap(l, v.Source)
	}
	m.mu.Lock()
	close(m.swapped)
	m.swapped = make(chan struct{})
	m.mu.Unlock()
	// swapMu is held: nothing else changes prev meanwhile.
	if oldPrev != nil && oldPrev != kept {
		oldPrev.Close()
	}
	if old != nil && old != kept {
		old.Close()
	}
	m.log.Info("ruleset active", "version", version, "segments", len(l.SegmentNames()))
	return nil
}

// ActivateWait bounds how long put and activate wait for the stored version to be active on
// this origin before answering anyway (with "live": false).
const ActivateWait = 5 * time.Second

// awaitActive waits until version is the active one here (the watch loads it), ctx is done or
// ActivateWait passes; it reports whether the version is active.
func (m *Manager) awaitActive(ctx context.Context, version uint64) bool {
	ctx, cancel := context.WithTimeout(ctx, ActivateWait)
	defer cancel()
	for {
		m.mu.Lock()
		live := m.active != nil && m.active.Version() == version
		ch := m.swapped
		m.mu.Unlock()
		if live {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
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

// upload is a rules file and the hand-written modules sent with it.
type upload struct {
	name    string // the rules file's name in error messages
	src     []byte
	modules map[string][]byte // path as written in the rules file → bytes
}

func reject(w http.ResponseWriter, msg string, ps ...Problem) {
	if len(ps) == 0 {
		ps = []Problem{{Message: msg}}
	}
	writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"error": "ruleset rejected; the current version is unchanged: " + msg, "problems": ps})
}

// readUpload reads the body: the rules file itself (YAML or JSON), or multipart/form-data with
// a part named "rules" (the file; its filename names it in errors) and one part named "module"
// per hand-written module, whose filename is the module's path as the rules file writes it.
// Every bad upload, an oversized one included, is a 422 that says what is wrong.
func readUpload(w http.ResponseWriter, r *http.Request) (*upload, bool) {
	up := &upload{name: r.URL.Query().Get("file"), modules: map[string][]byte{}}
	if up.name == "" {
		up.name = "rules.yaml"
	}
	ct, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct != "multipart/form-data" {
		src, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxSourceBytes))
		if err != nil {
			reject(w, fmt.Sprintf("the rules file is over %d bytes; the limit is %d (split it, or move long HTML into fragments)", MaxSourceBytes, MaxSourceBytes))
			return nil, false
		}
		up.src = src
	} else {
		mr := multipart.NewReader(http.MaxBytesReader(w, r.Body, MaxUploadBytes), params["boundary"])
		if !up.readParts(w, mr) {
			return nil, false
		}
	}
	if len(up.src) == 0 {
		reject(w, "empty rules file", Problem{Message: "the body must be the rules file (YAML or JSON), or a multipart upload with a part named rules"})
		return nil, false
	}
	return up, true
}

func (up *upload) readParts(w http.ResponseWriter, mr *multipart.Reader) bool {
	haveRules := false
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			reject(w, fmt.Sprintf("unreadable multipart upload (at most %d bytes in all): %v", MaxUploadBytes, err))
			return false
		}
		// The raw filename parameter: Part.FileName keeps only the last path element, and a
		// module is named by its path as the rules file writes it.
		_, params, _ := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
		fname := params["filename"]
		switch p.FormName() {
		case "rules":
			if haveRules {
				reject(w, "two parts named rules; send one rules file")
				return false
			}
			haveRules = true
			if fname != "" {
				up.name = fname
			}
			if up.src, err = readPart(p, MaxSourceBytes); err != nil {
				reject(w, fmt.Sprintf("the rules file: %v", err))
				return false
			}
		case "module":
			if fname == "" {
				reject(w, `a part named module has no filename; set it to the module's path as the rules file writes it`)
				return false
			}
			if _, dup := up.modules[fname]; dup {
				reject(w, fmt.Sprintf("module %q uploaded twice", fname))
				return false
			}
			if len(up.modules) >= rules.MaxModules {
				reject(w, fmt.Sprintf("more than %d modules uploaded", rules.MaxModules))
				return false
			}
			b, err := readPart(p, MaxModuleBytes)
			if err != nil {
				reject(w, fmt.Sprintf("module %q: %v", fname, err))
				return false
			}
			up.modules[fname] = b
		default:
			reject(w, fmt.Sprintf("unknown part %q; send a part named rules and one named module per hand-written module", p.FormName()))
			return false
		}
	}
	if !haveRules {
		reject(w, "no part named rules in the multipart upload")
		return false
	}
	return true
}

// readPart reads a part of at most limit bytes.
func readPart(p *multipart.Part, limit int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(p, int64(limit)+1))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, fmt.Errorf("the upload is over %d bytes in all", MaxUploadBytes)
		}
		return nil, err
	}
	if len(b) > limit {
		return nil, fmt.Errorf("over %d bytes; the limit is %d", limit, limit)
	}
	return b, nil
}

func (m *Manager) compile(w http.ResponseWriter, r *http.Request, up *upload) (*Compiled, bool) {
	c, problems := m.compiler.Compile(r.Context(), up.name, up.src, up.modules)
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
	up, ok := readUpload(w, r)
	if !ok {
		return
	}
	c, ok := m.compile(w, r, up)
	if !ok {
		return
	}
	meta, err := m.store.Put(r.Context(), rulestore.Version{
		Source: up.src, Module: c.Module, Manifest: c.Manifest, Modules: c.Modules,
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
	live := m.awaitActive(r.Context(), meta.Version)
	w.Header().Set("ETag", `"`+strconv.FormatUint(meta.Version, 10)+`"`)
	writeJSON(w, http.StatusCreated, map[string]any{"version": meta.Version, "meta": meta, "segments": c.Segments, "tests": c.Tests, "live": live})
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
	writeJSON(w, http.StatusOK, map[string]any{"current": cur.Version, "versions": list, "active": m.Status()})
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
		live := m.awaitActive(r.Context(), meta.Version)
		w.Header().Set("ETag", `"`+strconv.FormatUint(meta.Version, 10)+`"`)
		writeJSON(w, http.StatusOK, map[string]any{"current": meta.Version, "meta": meta, "live": live})
	}
}

// dryRun is POST /v1/rulesets/dry-run: compile and test only, and evaluate the candidate on up
// to ?sample=N stored profiles (default DefaultSample, at most MaxSample, 0 for none).
func (m *Manager) dryRun(w http.ResponseWriter, r *http.Request) {
	n := DefaultSample
	if q := r.URL.Query().Get("sample"); q != "" {
		v, err := strconv.Atoi(q)
		if err != nil || v < 0 {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": fmt.Sprintf("sample %q: want a number of profiles, 0 to %d", q, MaxSample)})
			return
		}
		n = min(v, MaxSample)
	}
	up, ok := readUpload(w, r)
	if !ok {
		return
	}
	c, ok := m.compile(w, r, up)
	if !ok {
		return
	}
	ans := map[string]any{"ok": true, "segments": c.Segments, "tests": c.Tests}
	if n > 0 && m.sampler != nil {
		profiles, err := m.sampler.Sample(r.Context(), n)
		var res *SampleResult
		if err == nil {
			res, err = m.compiler.Sample(r.Context(), c, profiles)
		}
		if err != nil {
			m.log.Warn("dry run: sampling failed", ops.RequestAttr(r.Context()), "err", err)
			ans["sample_error"] = err.Error()
		} else {
			ans["sample"] = res
		}
	}
	writeJSON(w, http.StatusOK, ans)
}
