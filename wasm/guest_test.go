package wasm

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// inputValue is one ABI input slot, for encodeInput.
type inputValue struct {
	kind byte // 0 absent, 1 bool, 2 int, 3 double, 4 string, 5 interned
	u    uint64
	s    string
}

// encodeInput lays out an input per ABI.md (core/rules does this for real).
func encodeInput(now int64, vals ...inputValue) []byte {
	b := make([]byte, 16+16*len(vals))
	binary.LittleEndian.PutUint32(b, 1)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(vals)))
	binary.LittleEndian.PutUint64(b[8:], uint64(now))
	for i, v := range vals {
		b[16+16*i] = v.kind
		payload := v.u
		if v.kind == 4 {
			binary.LittleEndian.PutUint32(b[16+16*i+4:], uint32(len(v.s)))
			payload = uint64(len(b))
			b = append(b, v.s...)
		}
		binary.LittleEndian.PutUint64(b[16+16*i+8:], payload)
	}
	return b
}

type goBuild struct {
	once sync.Once
	bin  []byte
	err  error
}

var goBuilds sync.Map // package dir -> *goBuild

// buildExample compiles wasm/examples/pathpromo with the Go toolchain, as
// the Makefile does:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o pathpromo.wasm ./wasm/examples/pathpromo
func buildExample(t testing.TB) []byte { return buildGuest(t, "./examples/pathpromo") }

// guestCacheDir persists wazero's compiled code of the Go guests across the
// runtimes of one test run: compiling a 2.6 MB Go module takes seconds under -race.
var guestCacheDir = filepath.Join(os.TempDir(), "segedge-wasm-test-cache")

// buildGuest builds a Go guest package (relative to wasm/) for wasip1, once
// per test binary; it skips the test only if the toolchain lacks wasip1.
func buildGuest(t testing.TB, pkg string) []byte {
	t.Helper()
	v, _ := goBuilds.LoadOrStore(pkg, new(goBuild))
	gb := v.(*goBuild)
	gb.once.Do(func() {
		buildErr := &gb.err
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			*buildErr = errors.New("skip: no go tool in GOROOT")
			return
		}
		if out, err := exec.Command(goBin, "tool", "dist", "list").Output(); err != nil || !strings.Contains(string(out), "wasip1/wasm") {
			*buildErr = errors.New("skip: toolchain lacks wasip1/wasm")
			return
		}
		dir, err := os.MkdirTemp("", "segedge-guest")
		if err != nil {
			*buildErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "pathpromo.wasm")
		cmd := exec.Command(goBin, "build", "-buildmode=c-shared", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if b, err := cmd.CombinedOutput(); err != nil {
			*buildErr = errors.New("go build: " + err.Error() + "\n" + string(b))
			return
		}
		gb.bin, *buildErr = os.ReadFile(out)
	})
	if gb.err != nil {
		if strings.HasPrefix(gb.err.Error(), "skip: ") {
			t.Skip(gb.err)
		}
		t.Fatal(gb.err)
	}
	return gb.bin
}

// The Go guest SDK example, built by the Go toolchain, loads through the same
// validator as any untrusted module and evaluates correctly.
func TestGoGuestExample(t *testing.T) {
	bin := buildExample(t)
	r, _ := newTestRuntime(t, Config{CacheDir: guestCacheDir})
	const outputLen = 16 + 4 // 2 segments (one word each bitset), 1 slot
	m, err := r.Load(context.Background(), "pathpromo", bin, LoadOptions{OutputLen: outputLen})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	defer m.Release()
	str := func(s string) inputValue { return inputValue{kind: 4, s: s} }
	tests := []struct {
		name    string
		in      []byte
		members uint64
		errs    uint64
		hero    int32
	}{
		{"shallow, no promo", encodeInput(0, str("/shoes")), 0, 0, -1},
		{"deep path", encodeInput(0, str("/shoes/running/trail")), 1 << 0, 0, -1},
		{"valid promo", encodeInput(0, str("/"), str("7992 7398 713")), 1 << 1, 0, 0},
		{"deep and promo", encodeInput(0, str("/a/b/c/d"), str("79927398713")), 1<<0 | 1<<1, 0, 0},
		{"bad promo", encodeInput(0, str("/a"), str("7992-7398")), 0, 1 << 1, -1},
		{"absent path", encodeInput(0, inputValue{}, str("79927398710")), 0, 0, -1},
	}
	out := make([]byte, outputLen)
	for _, tt := range tests {
		if err := m.Evaluate(context.Background(), tt.in, out); err != nil {
			t.Fatalf("%s: Evaluate: %v", tt.name, err)
		}
		members, errs := binary.LittleEndian.Uint64(out), binary.LittleEndian.Uint64(out[8:])
		hero := int32(binary.LittleEndian.Uint32(out[16:]))
		if members != tt.members || errs != tt.errs || hero != tt.hero {
			t.Errorf("%s: members %b, errors %b, hero %d; want %b, %b, %d", tt.name, members, errs, hero, tt.members, tt.errs, tt.hero)
		}
	}
	// Input that breaks the layout makes the guest return a non-zero status.
	if err := m.Evaluate(context.Background(), []byte{9, 9}, out); !errors.Is(err, ErrStatus) {
		t.Errorf("malformed input: err = %v, want ErrStatus", err)
	}
	if err := m.Evaluate(context.Background(), encodeInput(0, str("/a/b/c")), out); err != nil {
		t.Errorf("after a failed evaluation the replacement instance must work: %v", err)
	}
}

func BenchmarkEvaluateGoGuest(b *testing.B) {
	bin := buildExample(b)
	r, _ := newTestRuntime(b, Config{CacheDir: guestCacheDir})
	m, err := r.Load(context.Background(), "pathpromo", bin, LoadOptions{OutputLen: 20})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Release()
	in := encodeInput(0, inputValue{kind: 4, s: "/shoes/running/trail"}, inputValue{kind: 4, s: "7992 7398 713"})
	out := make([]byte, 20)
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Evaluate(context.Background(), in, out); err != nil {
			b.Fatal(err)
		}
	}
}

// A Go guest that allocates without bound runs out of the capped memory:
// the evaluation fails closed as a memory failure, and the module's next
// evaluation gets a fresh instance.
func TestGoGuestMemoryBomb(t *testing.T) {
	bin := buildGuest(t, "./testdata/gobomb")
	for _, pages := range []uint32{256, 1000} {
		r, _ := newTestRuntime(t, Config{CacheDir: guestCacheDir, MemoryLimitPages: pages, EvalTimeout: 10 * time.Second, QuarantineAfter: -1})
		m, err := r.Load(context.Background(), "gobomb", bin, LoadOptions{OutputLen: 16})
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		for i := 0; i < 2; i++ {
			err := m.Evaluate(context.Background(), encodeInput(0), make([]byte, 16))
			if !errors.Is(err, ErrMemory) {
				t.Fatalf("cap %d pages, evaluation %d: err = %v, want ErrMemory", pages, i, err)
			}
		}
		m.Release()
		assertHealthy(t, r)
	}
}
