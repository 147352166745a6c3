package wasm

import (
	"context"
	"fmt"
	"testing"
)

// The host side of an evaluation of a trusted module must not allocate:
// it runs once per personalized request.
func TestEvaluateTrustedAllocatesNothing(t *testing.T) {
	r, _ := newTestRuntime(t, Config{})
	m := loadOK(t, r, "ok", true)
	defer m.Release()
	a := NewActive()
	defer a.Close()
	if err := a.Swap(loadOK(t, r, "active", true)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	in := make([]byte, 256)
	out := make([]byte, okOutputLen)
	var err error
	if n := testing.AllocsPerRun(1000, func() { err = m.Evaluate(ctx, in, out) }); n != 0 || err != nil {
		t.Errorf("Module.Evaluate: %v allocs/op (err %v), want 0", n, err)
	}
	if n := testing.AllocsPerRun(1000, func() { err = a.Evaluate(ctx, in, out) }); n != 0 || err != nil {
		t.Errorf("Active.Evaluate: %v allocs/op (err %v), want 0", n, err)
	}
}

// BenchmarkEvaluate measures the host overhead of one call: pool get, input
// copy, CallWithStack, output copy, pool put. The module does almost nothing.
//
//	go test -run '^$' -bench 'Evaluate|Swap' -benchmem ./wasm/
func BenchmarkEvaluate(b *testing.B) {
	for _, tc := range []struct {
		name    string
		trusted bool
	}{{"trusted", true}, {"untrusted-deadline", false}} {
		b.Run(tc.name, func(b *testing.B) {
			r, _ := newTestRuntime(b, Config{})
			m := loadOK(b, r, "ok", tc.trusted)
			defer m.Release()
			ctx := context.Background()
			in := make([]byte, 256)
			out := make([]byte, okOutputLen)
			b.ReportAllocs()
			for b.Loop() {
				if err := m.Evaluate(ctx, in, out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEvaluateActive is the edge's path: Acquire, Evaluate, Release.
func BenchmarkEvaluateActive(b *testing.B) {
	r, _ := newTestRuntime(b, Config{})
	a := NewActive()
	defer a.Close()
	if err := a.Swap(loadOK(b, r, "ok", true)); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	in := make([]byte, 256)
	out := make([]byte, okOutputLen)
	b.ReportAllocs()
	for b.Loop() {
		if err := a.Evaluate(ctx, in, out); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEvaluateParallel runs evaluations from GOMAXPROCS goroutines (and
// 4× that, to exercise pool growth) against one Active.
func BenchmarkEvaluateParallel(b *testing.B) {
	for _, par := range []int{1, 4} {
		b.Run(fmt.Sprintf("x%d", par), func(b *testing.B) {
			r, _ := newTestRuntime(b, Config{})
			a := NewActive()
			defer a.Close()
			if err := a.Swap(loadOK(b, r, "ok", true)); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetParallelism(par)
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				in := make([]byte, 256)
				out := make([]byte, okOutputLen)
				for pb.Next() {
					if err := a.Evaluate(ctx, in, out); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkSwap measures Active.Swap of an already loaded module: what a
// ruleset rollout costs the edge once the new module is compiled. The
// release of the version two swaps back (closing its instances) is included.
// BenchmarkLoad measures what precedes it.
func BenchmarkSwap(b *testing.B) {
	r, _ := newTestRuntime(b, Config{})
	a := NewActive()
	defer a.Close()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		m := loadOK(b, r, "v", true)
		b.StartTimer()
		if err := a.Swap(m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoad measures Load of a small module whose compiled code is in the
// cache (validation + instantiating the warm pool).
func BenchmarkLoad(b *testing.B) {
	r, _ := newTestRuntime(b, Config{})
	bin := testdata(b, "ok.wasm")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		m, err := r.Load(ctx, "ok", bin, LoadOptions{OutputLen: okOutputLen, Trusted: true})
		if err != nil {
			b.Fatal(err)
		}
		m.Release()
	}
}
