package wasm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// okOutputLen is the output of testdata/ok.wat: one membership word, one
// error word, two slots.
const okOutputLen = 24

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newTestRuntime returns a runtime with its own registry, closed at test end.
func newTestRuntime(t testing.TB, cfg Config) (*Runtime, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if cfg.Registerer == nil {
		cfg.Registerer = reg
	}
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	if cfg.EvalTimeout == 0 {
		// Wall-clock deadlines fail good modules when the shared test box
		// stalls a thread (20–500 ms stalls seen at load average 8 on 2
		// cores). Tests about timeouts set their own.
		cfg.EvalTimeout = 10 * time.Second
	}
	r, err := NewRuntime(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewRuntime: %v", err)
	}
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	return r, reg
}

func testdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func loadOK(t testing.TB, r *Runtime, name string, trusted bool) *Module {
	t.Helper()
	m, err := r.Load(context.Background(), name, testdata(t, "ok.wasm"), LoadOptions{OutputLen: okOutputLen, Trusted: trusted})
	if err != nil {
		t.Fatalf("Load ok.wasm: %v", err)
	}
	return m
}

// checkOK evaluates the well-behaved module and checks its output.
func checkOK(t testing.TB, m *Module) {
	t.Helper()
	in := []byte{0xAA, 1, 2, 3, 4, 5, 6, 0x77, 9, 9}
	out := make([]byte, okOutputLen)
	if err := m.Evaluate(context.Background(), in, out); err != nil {
		t.Fatalf("Evaluate: %v", err)
	}
	if !bytes.Equal(out[:8], in[:8]) {
		t.Errorf("membership word = % x, want % x", out[:8], in[:8])
	}
	if got := binary.LittleEndian.Uint32(out[16:]); got != uint32(len(in)) {
		t.Errorf("slot 0 = %d, want input length %d", got, len(in))
	}
	if got := int32(binary.LittleEndian.Uint32(out[20:])); got != -1 {
		t.Errorf("slot 1 = %d, want -1", got)
	}
}

func TestEvaluateWellBehavedModule(t *testing.T) {
	for _, trusted := range []bool{true, false} {
		r, _ := newTestRuntime(t, Config{})
		m := loadOK(t, r, "ok", trusted)
		checkOK(t, m)
		checkOK(t, m) // instances are reused
		if m.InputCap() != 4096 || m.OutputLen() != okOutputLen || m.Name() != "ok" {
			t.Errorf("InputCap, OutputLen, Name = %d, %d, %q", m.InputCap(), m.OutputLen(), m.Name())
		}
		m.Release()
		if s := r.Stats(); s != (Stats{}) {
			t.Errorf("trusted=%v: after Release, Stats = %+v, want all zero", trusted, s)
		}
	}
}

func TestEvaluateRejectsWrongSizes(t *testing.T) {
	r, _ := newTestRuntime(t, Config{})
	m := loadOK(t, r, "ok", true)
	defer m.Release()
	ctx := context.Background()
	if err := m.Evaluate(ctx, make([]byte, 4097), make([]byte, okOutputLen)); !errors.Is(err, ErrInput) {
		t.Errorf("input over capacity: err = %v, want ErrInput", err)
	}
	if err := m.Evaluate(ctx, nil, make([]byte, okOutputLen-1)); !errors.Is(err, ErrInput) {
		t.Errorf("short output: err = %v, want ErrInput", err)
	}
	checkOK(t, m) // a caller mistake does not damage the module
}

func TestEvaluateAfterReleaseIsClosed(t *testing.T) {
	r, _ := newTestRuntime(t, Config{})
	m := loadOK(t, r, "ok", true)
	m.Release()
	if err := m.Evaluate(context.Background(), nil, make([]byte, okOutputLen)); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
	m.Release() // a caller bug: logged, never a crash or a double close
	if s := r.Stats(); s != (Stats{}) {
		t.Errorf("Stats after double Release = %+v, want zero", s)
	}
}

func TestPoolGrowsUnderLoadAndStaysBounded(t *testing.T) {
	r, _ := newTestRuntime(t, Config{PoolMax: 3})
	m := loadOK(t, r, "ok", true)
	defer m.Release()
	ctx := context.Background()
	var held []*instance
	for i := 0; i < 3; i++ {
		inst, err := m.get(ctx)
		if err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
		held = append(held, inst)
	}
	if got := m.live.Load(); got != 3 {
		t.Fatalf("live instances = %d, want 3", got)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := m.get(waitCtx); !errors.Is(err, ErrCanceled) {
		t.Fatalf("4th get with PoolMax 3: err = %v, want ErrCanceled after waiting", err)
	}
	for _, inst := range held {
		m.put(inst)
	}
	checkOK(t, m)
	if got := r.Stats().Instances; got != 3 {
		t.Errorf("Stats().Instances = %d, want 3", got)
	}
}

func TestMetricsShareOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	newTestRuntime(t, Config{Registerer: reg})
	newTestRuntime(t, Config{Registerer: reg}) // second runtime reuses the series
	n, err := testutil.GatherAndCount(reg, "segedge_wasm_eval_failures_total")
	if err != nil {
		t.Fatal(err)
	}
	if n != len(allReasons) {
		t.Errorf("failure series = %d, want one per reason (%d)", n, len(allReasons))
	}
}

func TestNewRuntimeRejectsImpossibleMemoryCap(t *testing.T) {
	_, err := NewRuntime(context.Background(), Config{MemoryLimitPages: 1 << 20, Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), "MemoryLimitPages") {
		t.Fatalf("err = %v, want a MemoryLimitPages error", err)
	}
}

func TestRuntimeCloseWithModulesOpen(t *testing.T) {
	r, _ := newTestRuntime(t, Config{})
	m := loadOK(t, r, "ok", true)
	if err := r.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := m.Evaluate(context.Background(), nil, make([]byte, okOutputLen)); !errors.Is(err, ErrClosed) {
		t.Errorf("Evaluate after runtime Close: err = %v, want ErrClosed", err)
	}
	m.Release() // must not panic
	if _, err := r.Load(context.Background(), "late", testdata(t, "ok.wasm"), LoadOptions{OutputLen: okOutputLen}); !errors.Is(err, ErrClosed) {
		t.Errorf("Load after Close: err = %v, want ErrClosed", err)
	}
}

// An evaluation waiting for a busy pool gets the instance another one frees,
// or a slot that a failed (discarded) instance frees.
func TestPoolWaiterIsWokenByPutAndDiscard(t *testing.T) {
	r, _ := newTestRuntime(t, Config{PoolMax: 2})
	m := loadOK(t, r, "ok", true)
	defer m.Release()
	ctx := context.Background()
	a, _ := m.get(ctx)
	b, _ := m.get(ctx)
	for _, free := range []func(){
		func() { m.put(a) },
		func() { m.discard(b) },
	} {
		got := make(chan *instance, 1)
		go func() {
			inst, err := m.get(ctx)
			if err != nil {
				t.Error(err)
			}
			got <- inst
		}()
		time.Sleep(20 * time.Millisecond) // let it block
		select {
		case <-got:
			t.Fatal("get returned while every instance was busy")
		default:
		}
		free()
		select {
		case inst := <-got:
			defer m.put(inst)
		case <-time.After(5 * time.Second):
			t.Fatal("waiter not woken")
		}
	}
	if live := m.live.Load(); live != 2 {
		t.Errorf("live instances = %d, want 2", live)
	}
}

// More evaluating goroutines than instances: they queue, nobody is lost.
func TestPoolUnderContention(t *testing.T) {
	r, _ := newTestRuntime(t, Config{PoolMax: 2})
	m := loadOK(t, r, "ok", true)
	defer m.Release()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]byte, okOutputLen)
			for i := 0; i < 300; i++ {
				if err := m.Evaluate(context.Background(), []byte{byte(i)}, out); err != nil {
					t.Error(err)
					return
				}
				if out[0] != byte(i) {
					t.Errorf("output %d for input %d: instances mixed up", out[0], i)
					return
				}
			}
		}()
	}
	wg.Wait()
	if live := m.live.Load(); live > 2 {
		t.Errorf("live instances = %d, over PoolMax 2", live)
	}
}
