package wasm

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func addTestdataSeeds(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.wasm")
	if len(files) == 0 {
		f.Fatal("no testdata/*.wasm seeds")
	}
	for _, file := range files {
		f.Add(testdata(f, filepath.Base(file)))
	}
	f.Add([]byte{})
	f.Add([]byte("\x00asm\x01\x00\x00\x00"))
	f.Add([]byte("\x00asm\x01\x00\x00\x00\x02\xff\xff\xff\xff\x0f"))     // import section larger than the file
	f.Add([]byte("\x00asm\x01\x00\x00\x00\x02\x05\xff\xff\xff\xff\x0f")) // 4 billion imports
}

// FuzzScanBinary: the import-section scanner never panics or over-allocates
// on arbitrary bytes.
func FuzzScanBinary(f *testing.F) {
	addTestdataSeeds(f)
	f.Fuzz(func(t *testing.T, bin []byte) {
		info, err := scanBinary(bin)
		if err != nil {
			return
		}
		if len(info.Imports) > len(bin) {
			t.Fatalf("%d imports from %d bytes", len(info.Imports), len(bin))
		}
	})
}

// FuzzLoad: whatever the bytes, Load returns an error or a module that
// evaluates (successfully or failing closed with a typed error); never a
// panic, and a rejected or released module leaves nothing open.
func FuzzLoad(f *testing.F) {
	addTestdataSeeds(f)
	r, _ := newTestRuntime(f, Config{
		MemoryLimitPages: 16,
		MaxModuleBytes:   1 << 20,
		EvalTimeout:      10 * time.Millisecond,
		InitTimeout:      50 * time.Millisecond,
		PoolMax:          2,
	})
	f.Fuzz(func(t *testing.T, bin []byte) {
		m, err := r.Load(context.Background(), "fuzz", bin, LoadOptions{OutputLen: 8})
		if err != nil {
			if s := r.Stats(); s != (Stats{}) {
				t.Fatalf("rejected module left %+v open", s)
			}
			return
		}
		err = m.Evaluate(context.Background(), nil, make([]byte, 8))
		var ee *EvalError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("Evaluate error %v is not an *EvalError", err)
		}
		m.Release()
		if s := r.Stats(); s != (Stats{}) {
			t.Fatalf("released module left %+v open", s)
		}
	})
}
