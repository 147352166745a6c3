package wasm

import (
	"context"
	"sync/atomic"
	"unsafe"
)

// pool holds the instances of one Module: at most PoolMax, each owning one
// slot. A buffered channel costs ~70 ns per get+put even uncontended, as much
// as the wasm call itself; here a put is one atomic store into the
// instance's own slot and a get is a scan from a per-goroutine slot for an
// idle one plus one CAS, so concurrent evaluations rarely touch the same
// cache line. Waiting when all PoolMax are busy is the rare slow path and
// uses a channel.
type pool struct {
	slots   []poolSlot
	waiters atomic.Int32
	wake    chan struct{} // capacity PoolMax: signal never blocks
}

type poolSlot struct {
	// inst is written by spawn before the instance's first put and read
	// only by whoever wins idle 1→0; both are ordered by the atomics, and
	// a plain pointer avoids the GC write barrier of an atomic.Pointer.
	inst *instance
	idle atomic.Uint32 // 1 while inst is idle in the pool
	used atomic.Bool   // an instance (idle or busy) owns the slot
	_    [64 - 16]byte // one slot per cache line
}

func newPool(max int) *pool {
	return &pool{slots: make([]poolSlot, max), wake: make(chan struct{}, max)}
}

// claim reserves a slot for a new instance; false when PoolMax are alive.
func (p *pool) claim() (int, bool) {
	for i := range p.slots {
		u := &p.slots[i].used
		if !u.Load() && u.CompareAndSwap(false, true) {
			return i, true
		}
	}
	return -1, false
}

// unclaim frees the slot of a discarded instance and wakes a waiter, which
// may now instantiate.
func (p *pool) unclaim(slot int) {
	p.slots[slot].used.Store(false)
	p.signal()
}

// tryGet takes an idle instance, or returns nil if none is idle.
func (p *pool) tryGet() *instance {
	n := len(p.slots)
	i := startSlot(n)
	for k := 0; k < n; k++ {
		s := &p.slots[i]
		if s.idle.Load() == 1 && s.idle.CompareAndSwap(1, 0) {
			return s.inst
		}
		if i++; i == n {
			i = 0
		}
	}
	return nil
}

// startSlot picks where a get starts scanning: a hash of the calling
// goroutine's stack address. Concurrent goroutines start at different slots
// (no shared counter, no random-number generator: ~10 ns cheaper), and one
// goroutine tends to get the same, cache-warm instance back.
func startSlot(n int) int {
	var probe byte
	h := uint64(uintptr(unsafe.Pointer(&probe))>>10) * 0x9E3779B97F4A7C15
	return int((h >> 32) * uint64(n) >> 32)
}

// put makes inst idle again and wakes a waiter, if any.
func (p *pool) put(inst *instance) {
	s := &p.slots[inst.slot]
	s.inst = inst
	s.idle.Store(1)
	p.signal()
}

// signal tells waiters to rescan. The store (put or unclaim) happens before
// the waiters check, and a waiter registers before its rescan, so a waiter
// either sees the instance or gets a token; with capacity PoolMax a token is
// dropped only when enough are pending for every waiter to rescan.
func (p *pool) signal() {
	if p.waiters.Load() > 0 {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// wait blocks until try succeeds or fails, or ctx ends. try runs after the
// waiter registers, so a signal between the caller's last attempt and the
// wait is not lost.
func (p *pool) wait(ctx context.Context, try func() (*instance, error)) (*instance, error) {
	for {
		p.waiters.Add(1)
		inst, err := try()
		if inst != nil || err != nil {
			p.waiters.Add(-1)
			return inst, err
		}
		select {
		case <-p.wake:
			p.waiters.Add(-1)
		case <-ctx.Done():
			p.waiters.Add(-1)
			return nil, ctx.Err()
		}
	}
}

// drainAll takes every idle instance out and discards it.
func (p *pool) drainAll(discard func(*instance)) {
	for i := range p.slots {
		if s := &p.slots[i]; s.idle.CompareAndSwap(1, 0) {
			discard(s.inst)
		}
	}
}
