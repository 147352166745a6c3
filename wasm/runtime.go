// Package wasm is the sandbox that runs segment rule modules: a wazero runtime
// with a compilation cache, validation of untrusted binaries before they run,
// pooled instances so an evaluation never instantiates, fail-closed evaluation
// with typed errors, and an atomically swappable, reference-counted holder for
// the active ruleset module (see Active).
//
// The contract with the modules is wasm/ABI.md. The host treats input and
// output as opaque bytes; their layout belongs to core/rules.
//
// This is the only package tree of segedge that imports wazero.
package wasm

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
)

// wasiModuleName is the only import module a hand-written rule module may use.
const wasiModuleName = "wasi_snapshot_preview1"

// Defaults applied by NewRuntime to zero Config fields.
const (
	// DefaultMemoryLimitPages caps a module's linear memory at 32 MiB. A
	// generated ruleset needs a few pages; a Go guest needs a few MiB of heap.
	DefaultMemoryLimitPages = 512
	// DefaultMaxModuleBytes rejects binaries larger than 16 MiB before they are
	// parsed (a Go guest is ~2 MiB; a generated 1,000-rule module far less).
	DefaultMaxModuleBytes = 16 << 20
	// DefaultEvalTimeout bounds one evaluation of an untrusted module.
	DefaultEvalTimeout = 50 * time.Millisecond
	// DefaultInitTimeout bounds instantiating an untrusted module (a Go
	// guest runs its runtime initialisation here: milliseconds).
	DefaultInitTimeout = 5 * time.Second
	// DefaultQuarantineAfter is the number of consecutive failed evaluations
	// after which a module held by an Active is quarantined.
	DefaultQuarantineAfter = 16
)

// Config tunes a Runtime. The zero value is usable: every zero field gets the
// documented default.
type Config struct {
	// MemoryLimitPages caps every module's linear memory, in 64 KiB pages.
	// A module whose declared minimum exceeds it is rejected at load;
	// memory.grow past it fails inside the module.
	MemoryLimitPages uint32
	// MaxModuleBytes rejects larger binaries before any parsing.
	MaxModuleBytes int
	// EvalTimeout is the deadline of one evaluation of an untrusted module
	// (LoadOptions.Trusted false). Trusted, loop-free modules get none.
	EvalTimeout time.Duration
	// InitTimeout is the deadline of instantiating an untrusted module.
	InitTimeout time.Duration
	// PoolMax bounds the instances of one module; default 4×GOMAXPROCS.
	// Evaluations beyond it wait for a free instance.
	PoolMax int
	// CacheDir, if set, persists compiled code there (wazero's file cache),
	// so a restarted process does not recompile the same modules.
	CacheDir string
	// QuarantineAfter is how many consecutive failed evaluations quarantine
	// a module held by an Active (which then falls back to its previous
	// version). Negative disables quarantine.
	QuarantineAfter int
	// Registerer receives the segedge_wasm_* metrics; nil keeps them private.
	Registerer prometheus.Registerer
	// Logger receives load, failure and quarantine logs; nil uses slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.MemoryLimitPages == 0 {
		c.MemoryLimitPages = DefaultMemoryLimitPages
	}
	if c.MaxModuleBytes <= 0 {
		c.MaxModuleBytes = DefaultMaxModuleBytes
	}
	if c.EvalTimeout <= 0 {
		c.EvalTimeout = DefaultEvalTimeout
	}
	if c.InitTimeout <= 0 {
		c.InitTimeout = DefaultInitTimeout
	}
	if c.PoolMax <= 0 {
		c.PoolMax = 4 * runtime.GOMAXPROCS(0)
	}
	if c.QuarantineAfter == 0 {
		c.QuarantineAfter = DefaultQuarantineAfter
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Runtime owns the wazero runtimes of one process. Create one with NewRuntime
// and share it; it is safe for concurrent use.
//
// It wraps two wazero runtimes that share one compilation cache: one for
// trusted (generated, loop-free) modules, compiled without termination
// checks, whose calls cost no goroutine and no allocation; and one compiled
// with WithCloseOnContextDone for untrusted modules, whose evaluations run
// under a deadline. wazero only offers that switch per runtime.
type Runtime struct {
	cfg       Config
	log       *slog.Logger
	cache     wazero.CompilationCache
	trusted   wazero.Runtime
	untrusted wazero.Runtime
	// wasi maps each function the host's wasi_snapshot_preview1 provides to
	// its definition, to check a module's imports before instantiation.
	wasi    map[string]api.FunctionDefinition
	metrics *metrics
	wd      *watchdog // deadlines of untrusted evaluations

	openModules   atomic.Int64
	openInstances atomic.Int64
	closed        atomic.Bool
}

// NewRuntime creates the process's sandbox runtime.
func NewRuntime(ctx context.Context, cfg Config) (*Runtime, error) {
	cfg = cfg.withDefaults()
	if cfg.MemoryLimitPages > 65536 {
		return nil, fmt.Errorf("new wasm runtime: MemoryLimitPages %d exceeds 65536 (4 GiB)", cfg.MemoryLimitPages)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("new wasm runtime: %w", err)
	}
	cache := wazero.NewCompilationCache()
	if cfg.CacheDir != "" {
		if cache, err = wazero.NewCompilationCacheWithDir(cfg.CacheDir); err != nil {
			return nil, fmt.Errorf("new wasm runtime: compilation cache in %q: %w", cfg.CacheDir, err)
		}
	}
	base := wazero.NewRuntimeConfigCompiler().
		WithCompilationCache(cache).
		WithMemoryLimitPages(cfg.MemoryLimitPages).
		WithCloseOnContextDone(false)
	r := &Runtime{
		cfg:       cfg,
		log:       cfg.Logger,
		cache:     cache,
		trusted:   wazero.NewRuntimeWithConfig(ctx, base),
		untrusted: wazero.NewRuntimeWithConfig(ctx, base.WithCloseOnContextDone(true)),
		metrics:   m,
		wd:        newWatchdog(cfg.EvalTimeout),
	}
	for _, rt := range []wazero.Runtime{r.trusted, r.untrusted} {
		if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
			_ = r.Close(ctx)
			return nil, fmt.Errorf("new wasm runtime: instantiate %s: %w", wasiModuleName, err)
		}
	}
	r.wasi = r.untrusted.Module(wasiModuleName).ExportedFunctionDefinitions()
	return r, nil
}

// Close releases every module and the compilation cache. Modules still held
// become unusable (their evaluations return ErrClosed or a trap).
func (r *Runtime) Close(ctx context.Context) error {
	if !r.closed.CompareAndSwap(false, true) {
		return nil
	}
	var first error
	r.wd.close()
	if r.trusted != nil {
		if err := r.trusted.Close(ctx); err != nil && first == nil {
			first = err
		}
	}
	if r.untrusted != nil {
		if err := r.untrusted.Close(ctx); err != nil && first == nil {
			first = err
		}
	}
	if err := r.cache.Close(ctx); err != nil && first == nil {
		first = err
	}
	if first != nil {
		return fmt.Errorf("close wasm runtime: %w", first)
	}
	return nil
}

// Stats is a point-in-time count of what a Runtime holds open.
type Stats struct {
	// Modules counts loaded modules whose last reference is not yet released.
	Modules int64
	// Instances counts live instances across all modules.
	Instances int64
}

// Stats reports open modules and instances; a steady state that grows is a leak.
func (r *Runtime) Stats() Stats {
	return Stats{Modules: r.openModules.Load(), Instances: r.openInstances.Load()}
}

// Config returns the effective configuration (defaults applied).
func (r *Runtime) Config() Config { return r.cfg }
