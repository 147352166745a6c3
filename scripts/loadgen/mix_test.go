package main

import (
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkBatch: what writing one request's body of 50 events costs a sending goroutine.
func BenchmarkBatch(b *testing.B) {
	g := newGenerator("lg0a1b2c3d", 10000, 1)
	var seq atomic.Uint64
	next := func() uint64 { return seq.Add(1) }
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = g.batch(buf[:0], 50, time.Now(), next)
	}
	b.SetBytes(int64(len(buf)))
}
