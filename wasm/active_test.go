package wasm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestActiveEmpty(t *testing.T) {
	a := NewActive()
	if m := a.Acquire(); m != nil {
		t.Fatalf("Acquire on an empty holder = %v, want nil", m)
	}
	if err := a.Evaluate(context.Background(), nil, nil); !errors.Is(err, ErrNoModule) {
		t.Fatalf("Evaluate on an empty holder: err = %v, want ErrNoModule", err)
	}
	if a.Current() != "" {
		t.Fatalf("Current = %q, want empty", a.Current())
	}
}

func TestActiveSwapKeepsOneFallbackAndLeaksNothing(t *testing.T) {
	r, reg := newTestRuntime(t, Config{})
	a := NewActive()
	perModule := int64(min(runtime.GOMAXPROCS(0), r.cfg.PoolMax))
	const swaps = 1000
	for i := 0; i < swaps; i++ {
		if err := a.Swap(loadOK(t, r, fmt.Sprintf("v%d", i), true)); err != nil {
			t.Fatalf("Swap %d: %v", i, err)
		}
		if i%100 == 0 {
			if err := a.Evaluate(context.Background(), nil, make([]byte, okOutputLen)); err != nil {
				t.Fatalf("Evaluate after swap %d: %v", i, err)
			}
		}
	}
	if got := a.Current(); got != fmt.Sprintf("v%d", swaps-1) {
		t.Errorf("Current = %q, want the last version", got)
	}
	// Current plus the fallback stay loaded, nothing else.
	if s := r.Stats(); s.Modules != 2 || s.Instances != 2*perModule {
		t.Errorf("after %d swaps Stats = %+v, want 2 modules and %d instances", swaps, s, 2*perModule)
	}
	if got := testutil.ToFloat64(r.metrics.swaps); got != swaps {
		t.Errorf("segedge_wasm_swaps_total = %v, want %d", got, swaps)
	}
	if n, _ := testutil.GatherAndCount(reg, "segedge_wasm_modules_open"); n != 1 {
		t.Errorf("segedge_wasm_modules_open not exported")
	}
	a.Close()
	if s := r.Stats(); s != (Stats{}) {
		t.Errorf("after Close Stats = %+v, want zero", s)
	}
	if m := a.Acquire(); m != nil {
		t.Errorf("Acquire after Close = %v, want nil", m)
	}
}

func TestActiveHeldVersionOutlivesSwap(t *testing.T) {
	r, _ := newTestRuntime(t, Config{})
	a := NewActive()
	defer a.Close()
	if err := a.Swap(loadOK(t, r, "v1", true)); err != nil {
		t.Fatal(err)
	}
	held := a.Acquire()
	for i := 2; i <= 3; i++ { // v1 becomes the fallback, then is released by the holder
		if err := a.Swap(loadOK(t, r, fmt.Sprintf("v%d", i), true)); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.Stats().Modules; got != 3 {
		t.Fatalf("modules = %d, want 3 (v1 still held by an evaluation)", got)
	}
	checkOK(t, held) // a version swapped out mid-evaluation still works
	held.Release()
	if got := r.Stats().Modules; got != 2 {
		t.Errorf("modules = %d after the last holder released v1, want 2", got)
	}
}

func TestActiveSwapRejectsMisuse(t *testing.T) {
	r, _ := newTestRuntime(t, Config{})
	a, b := NewActive(), NewActive()
	defer a.Close()
	defer b.Close()
	if err := a.Swap(nil); err == nil {
		t.Error("Swap(nil) succeeded")
	}
	m := loadOK(t, r, "v1", true)
	if err := a.Swap(m); err != nil {
		t.Fatal(err)
	}
	if !m.retain() {
		t.Fatal("retain failed on a live module")
	}
	if err := b.Swap(m); err == nil {
		t.Error("one module swapped into two holders")
		m.Release()
	} else {
		m.Release()
	}
	checkOK(t, a.Acquire())
}

// Evaluations race with swaps: every evaluation succeeds on some whole
// version, and nothing is closed under an evaluation (run with -race).
func TestActiveConcurrentEvaluateAndSwap(t *testing.T) {
	// Untrusted versions run under a wall-clock deadline; 8 goroutines on a
	// loaded 2-core machine under -race can be descheduled for 50ms.
	r, _ := newTestRuntime(t, Config{EvalTimeout: 10 * time.Second})
	a := NewActive()
	if err := a.Swap(loadOK(t, r, "v0", true)); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var evals atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := []byte{1, 2, 3, 4, 5, 6, 7, 8}
			out := make([]byte, okOutputLen)
			for !stop.Load() {
				m := a.Acquire()
				err := m.Evaluate(context.Background(), in, out)
				m.Release()
				if err != nil {
					errs <- fmt.Errorf("evaluate on %s: %w", m.Name(), err)
					return
				}
				if out[0] != 1 || out[7] != 8 {
					errs <- fmt.Errorf("wrong output % x", out[:8])
					return
				}
				evals.Add(1)
			}
		}()
	}
	for i := 1; i <= 200; i++ {
		if err := a.Swap(loadOK(t, r, fmt.Sprintf("v%d", i), i%2 == 0)); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if evals.Load() == 0 {
		t.Error("no evaluation ran")
	}
	a.Close()
	if s := r.Stats(); s != (Stats{}) {
		t.Errorf("after Close Stats = %+v, want zero", s)
	}
}

func TestQuarantineFallsBackToPreviousVersion(t *testing.T) {
	r, _ := newTestRuntime(t, Config{QuarantineAfter: 3})
	a := NewActive()
	defer a.Close()
	if err := a.Swap(loadOK(t, r, "good", true)); err != nil {
		t.Fatal(err)
	}
	bad, err := r.Load(context.Background(), "bad", testdata(t, "unreachable.wasm"), LoadOptions{OutputLen: okOutputLen, Trusted: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Swap(bad); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, okOutputLen)
	for i := 0; i < 3; i++ {
		if err := a.Evaluate(context.Background(), nil, out); !errors.Is(err, ErrTrap) {
			t.Fatalf("evaluation %d on the bad version: err = %v, want ErrTrap", i, err)
		}
	}
	if got := a.Current(); got != "good" {
		t.Fatalf("after 3 consecutive failures Current = %q, want the previous version %q", got, "good")
	}
	if err := a.Evaluate(context.Background(), nil, out); err != nil {
		t.Fatalf("evaluation on the reinstated version: %v", err)
	}
	if got := testutil.ToFloat64(r.metrics.quarantines); got != 1 {
		t.Errorf("segedge_wasm_quarantines_total = %v, want 1", got)
	}
	if got := r.Stats().Modules; got != 1 {
		t.Errorf("modules = %d, want 1: the quarantined version is released", got)
	}
}

func TestSuccessResetsTheFailureStreak(t *testing.T) {
	r, _ := newTestRuntime(t, Config{QuarantineAfter: 2})
	m := loadOK(t, r, "flaky", true)
	defer m.Release()
	for i := 0; i < 5; i++ {
		// A caller mistake is not a module failure; a canceled wait neither.
		_ = m.Evaluate(context.Background(), make([]byte, 5000), make([]byte, okOutputLen))
		m.noteFailure(errors.New("simulated failure"))
		checkOK(t, m)
	}
	if m.Quarantined() {
		t.Fatal("a module whose failures never ran 2 in a row was quarantined")
	}
}

func TestQuarantineWithoutFallbackKeepsFailingClosed(t *testing.T) {
	r, _ := newTestRuntime(t, Config{QuarantineAfter: 1})
	a := NewActive()
	defer a.Close()
	bad, err := r.Load(context.Background(), "bad", testdata(t, "status.wasm"), LoadOptions{OutputLen: okOutputLen, Trusted: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Swap(bad); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := a.Evaluate(context.Background(), nil, make([]byte, okOutputLen)); !errors.Is(err, ErrStatus) {
			t.Fatalf("err = %v, want ErrStatus", err)
		}
	}
	if !bad.Quarantined() || a.Current() != "bad" {
		t.Fatalf("Quarantined = %v, Current = %q: want quarantined and still current", bad.Quarantined(), a.Current())
	}
	if err := a.Swap(loadOK(t, r, "fixed", true)); err != nil {
		t.Fatal(err)
	}
	if got := r.Stats().Modules; got != 1 {
		t.Errorf("modules = %d, want 1: a quarantined version is not kept as fallback", got)
	}
}
