package wasm

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// ErrNoModule is returned by Active.Evaluate before the first Swap.
var ErrNoModule = errors.New("wasm: no active module")

// Active holds the module that evaluations use now, and swaps it atomically:
// every evaluation runs entirely on one version, and a replaced version is
// closed when the last evaluation holding it releases it.
//
// It also keeps the previous good version (with a reference) so that when the
// current one is quarantined (Config.QuarantineAfter consecutive failures) it
// can fall back to it. So at most two versions stay loaded.
//
// Acquire is lock-free and allocation-free; Swap and the quarantine fallback
// serialise on a mutex.
type Active struct {
	cur  atomic.Pointer[Module]
	mu   sync.Mutex
	prev *Module // guarded by mu; holds one reference
}

// NewActive returns an empty holder.
func NewActive() *Active { return &Active{} }

// Acquire returns the current module with a reference held, or nil before the
// first Swap. The caller must Release it, and should not hold it longer than
// an evaluation (a held version stays loaded after it is swapped out).
func (a *Active) Acquire() *Module {
	for {
		m := a.cur.Load()
		if m == nil {
			return nil
		}
		// retain fails only if m was swapped out and fully released between
		// the Load and now: then a newer version is current; retry.
		if m.retain() {
			return m
		}
	}
}

// Evaluate acquires the current module, evaluates and releases it.
func (a *Active) Evaluate(ctx context.Context, input, output []byte) error {
	m := a.Acquire()
	if m == nil {
		return ErrNoModule
	}
	err := m.Evaluate(ctx, input, output)
	m.Release()
	return err
}

// Swap makes m current. It takes over the caller's reference to m (the one
// Load returned): the caller must not Release it. The replaced version
// becomes the fallback for quarantine (unless it was itself quarantined); the
// version that was the fallback is released. On error the caller keeps its
// reference.
func (a *Active) Swap(m *Module) error {
	if m == nil {
		return errors.New("swap: nil module")
	}
	if m.Quarantined() {
		return errors.New("swap: module " + m.name + " is quarantined")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !m.holder.CompareAndSwap(nil, a) {
		if m.holder.Load() == a && a.cur.Load() == m {
			m.Release() // already current: drop the duplicate reference
			return nil
		}
		return errors.New("swap: module " + m.name + " is already held by an Active")
	}
	old := a.cur.Swap(m)
	m.rt.metrics.swaps.Inc()
	if old == nil {
		return nil
	}
	old.holder.Store(nil)
	if old.Quarantined() {
		old.Release()
		return nil
	}
	if a.prev != nil {
		a.prev.Release()
	}
	a.prev = old
	return nil
}

// quarantine reinstates the previous version if m is still current. Called
// from m.Evaluate, whose caller holds a reference, so releasing the holder's
// reference here never closes m under a running evaluation.
func (a *Active) quarantine(m *Module) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cur.Load() != m {
		return
	}
	if a.prev == nil {
		m.rt.log.Error("wasm module quarantined with no previous version to fall back to; it stays active and fails closed", "module", m.name)
		return
	}
	prev := a.prev
	a.prev = nil
	prev.holder.Store(a)
	a.cur.Store(prev)
	m.holder.Store(nil)
	m.rt.log.Warn("wasm module fallback", "quarantined", m.name, "reinstated", prev.name)
	m.Release()
}

// Current returns the name of the current module ("" if none), for logs and
// the Segedge-Ruleset header.
func (a *Active) Current() string {
	m := a.Acquire()
	if m == nil {
		return ""
	}
	defer m.Release()
	return m.name
}

// Close releases the current and previous versions. Evaluations still holding
// them finish first; later Acquire calls return nil.
func (a *Active) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if m := a.cur.Swap(nil); m != nil {
		m.holder.Store(nil)
		m.Release()
	}
	if a.prev != nil {
		a.prev.Release()
		a.prev = nil
	}
}
