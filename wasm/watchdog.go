package wasm

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// The deadline of an untrusted evaluation. context.WithTimeout per call costs
// ~2 µs and 5 allocations (a timer and a context) on top of wazero's own
// termination watch. Instead every untrusted instance owns a watchCtx, reused
// across calls, and one watchdog goroutine per Runtime scans the instances
// that are running and closes the Done channel of any past its deadline;
// wazero (WithCloseOnContextDone) then stops the module at its next function
// entry or loop header. A fired watchCtx is never reused: the instance it
// belongs to is discarded. Deadlines are enforced with the watchdog's tick as
// granularity (EvalTimeout/4, at least 1 ms).

// watchCtx is the context an untrusted instance's calls run under.
type watchCtx struct {
	context.Context               // context.Background(): no values, never done by itself
	done            chan struct{} // closed once, by the watchdog
	deadline        atomic.Int64  // monotonic ns since the watchdog's epoch; 0 = not running
}

func (w *watchCtx) Done() <-chan struct{} { return w.done }

func (w *watchCtx) Err() error {
	select {
	case <-w.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// watchdog enforces the deadlines of running untrusted evaluations.
type watchdog struct {
	epoch time.Time
	tick  time.Duration

	mu    sync.Mutex
	ctxs  map[*watchCtx]struct{}
	stop  chan struct{}
	ended chan struct{}
}

func newWatchdog(evalTimeout time.Duration) *watchdog {
	w := &watchdog{
		epoch: time.Now(),
		tick:  max(evalTimeout/4, time.Millisecond),
		ctxs:  make(map[*watchCtx]struct{}),
		stop:  make(chan struct{}),
		ended: make(chan struct{}),
	}
	go w.run()
	return w
}

// now is monotonic nanoseconds since the epoch, never 0 in practice.
func (w *watchdog) now() int64 { return int64(time.Since(w.epoch)) + 1 }

func (w *watchdog) add() *watchCtx {
	c := &watchCtx{Context: context.Background(), done: make(chan struct{})}
	w.mu.Lock()
	w.ctxs[c] = struct{}{}
	w.mu.Unlock()
	return c
}

func (w *watchdog) remove(c *watchCtx) {
	w.mu.Lock()
	delete(w.ctxs, c)
	w.mu.Unlock()
}

func (w *watchdog) run() {
	defer close(w.ended)
	t := time.NewTicker(w.tick)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		now := w.now()
		w.mu.Lock()
		for c := range w.ctxs {
			// The CAS makes firing and the evaluation's end exclusive:
			// whoever takes the deadline to 0 decides.
			if d := c.deadline.Load(); d != 0 && now > d && c.deadline.CompareAndSwap(d, 0) {
				close(c.done)
				delete(w.ctxs, c)
			}
		}
		w.mu.Unlock()
	}
}

func (w *watchdog) close() {
	close(w.stop)
	<-w.ended
}
