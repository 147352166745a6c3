package wasm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Modules the loader must reject, with the words the error must contain so an
// operator knows what to fix.
func TestLoadRejectsBadModules(t *testing.T) {
	tests := []struct {
		file    string
		cfg     Config
		opts    LoadOptions
		wantErr []string
	}{
		{file: "badimport.wasm", wantErr: []string{`load module "badimport.wasm"`, `import func "env.foo" not allowed`, `import global "env.g" not allowed`}},
		{file: "badwasi.wasm", wantErr: []string{`"wasi_snapshot_preview1.open_the_pod_bay_doors" not provided by the host`}},
		{file: "noexports.wasm", wantErr: []string{`missing export "segedge_output_ptr"`, `missing export "segedge_eval"`, `missing export "memory"`}},
		{file: "badsig.wasm", wantErr: []string{`export "segedge_eval" has signature (i64) -> (i32), want (i32) -> (i32)`, `export "segedge_input_cap" has signature () -> (), want () -> (i32)`}},
		{file: "badversion.wasm", wantErr: []string{"segedge_abi_version() = 2"}},
		{file: "badptr.wasm", wantErr: []string{"input buffer [65000, +4096) outside memory"}},
		{file: "ok.wasm", opts: LoadOptions{OutputLen: 60000}, wantErr: []string{"output buffer [8192, +60000) outside memory"}},
		{file: "hugemem.wasm", wantErr: []string{"invalid module", "memory"}},
		{file: "bigdata.wasm", wantErr: []string{"instantiate", "out of bounds"}},
		{file: "bigdata.wasm", cfg: Config{MaxModuleBytes: 4096}, wantErr: []string{"binary is 8379 bytes, over the 4096-byte cap"}},
		{file: "garbage.wasm", wantErr: []string{"malformed binary"}},
		{file: "startloop.wasm", cfg: Config{InitTimeout: 50 * time.Millisecond}, wantErr: []string{"instantiate", "deadline exceeded"}},
		{file: "ok.wasm", opts: LoadOptions{OutputLen: -1}, wantErr: []string{"output length -1 out of range"}},
		{file: "startloop.wasm", opts: LoadOptions{Trusted: true}, wantErr: []string{"trusted (generated) modules have no start function"}},
		{file: "badwasi.wasm", opts: LoadOptions{Trusted: true}, wantErr: []string{`trusted (generated) modules import nothing, this one imports func "wasi_snapshot_preview1.open_the_pod_bay_doors"`}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			r, reg := newTestRuntime(t, tt.cfg)
			m, err := r.Load(context.Background(), tt.file, testdata(t, tt.file), tt.opts)
			if err == nil {
				m.Release()
				t.Fatal("Load succeeded, want an error")
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\ndoes not contain %q", err, want)
				}
			}
			if got := testutil.ToFloat64(r.metrics.loadErrors); got != 1 {
				t.Errorf("segedge_wasm_load_errors_total = %v, want 1", got)
			}
			_ = reg
			if s := r.Stats(); s != (Stats{}) {
				t.Errorf("a rejected module left %+v open", s)
			}
			assertHealthy(t, r)
		})
	}
}

func TestLoadRejectsNonWasm(t *testing.T) {
	r, _ := newTestRuntime(t, Config{})
	for name, bin := range map[string][]byte{
		"empty":       nil,
		"text":        []byte("(module)"),
		"version 2":   []byte("\x00asm\x02\x00\x00\x00"),
		"truncated":   []byte("\x00asm\x01\x00\x00\x00\x02\x10\x01"),
		"magic only":  []byte("\x00asm"),
		"empty valid": []byte("\x00asm\x01\x00\x00\x00"),
	} {
		if m, err := r.Load(context.Background(), name, bin, LoadOptions{}); err == nil {
			m.Release()
			t.Errorf("%s: Load succeeded, want an error", name)
		}
	}
}

// Modules that load but misbehave when run: each evaluation fails closed with
// the right kind, the failure is counted, the instance is replaced, and the
// runtime keeps serving other modules.
func TestMisbehavingModulesFailClosed(t *testing.T) {
	tests := []struct {
		file    string
		trusted bool
		timeout time.Duration // EvalTimeout; default 20ms
		want    error
		reason  string
	}{
		{file: "loop.wasm", want: ErrTimeout, reason: reasonTimeout},
		{file: "membomb.wasm", timeout: 5 * time.Second, want: ErrMemory, reason: reasonMemory},
		{file: "unreachable.wasm", want: ErrTrap, reason: reasonTrap},
		{file: "unreachable.wasm", trusted: true, want: ErrTrap, reason: reasonTrap},
		{file: "oob.wasm", trusted: true, want: ErrTrap, reason: reasonTrap},
		{file: "recurse.wasm", want: ErrTrap, reason: reasonTrap},
		{file: "status.wasm", trusted: true, want: ErrStatus, reason: reasonStatus},
		{file: "exit.wasm", want: ErrExit, reason: reasonExit},
	}
	for _, tt := range tests {
		name := tt.file
		if tt.trusted {
			name += "/trusted"
		}
		t.Run(name, func(t *testing.T) {
			if tt.timeout == 0 {
				tt.timeout = 20 * time.Millisecond
			}
			r, _ := newTestRuntime(t, Config{EvalTimeout: tt.timeout, MemoryLimitPages: 64, QuarantineAfter: -1})
			m, err := r.Load(context.Background(), tt.file, testdata(t, tt.file), LoadOptions{OutputLen: okOutputLen, Trusted: tt.trusted})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			defer m.Release()
			before := r.Stats().Instances
			out := []byte("untouched output bytes!!")
			for i := 0; i < 3; i++ {
				err := m.Evaluate(context.Background(), []byte("input"), out)
				if !errors.Is(err, tt.want) {
					t.Fatalf("evaluation %d: err = %v, want %v", i, err, tt.want)
				}
				var ee *EvalError
				if !errors.As(err, &ee) || ee.Module != tt.file {
					t.Errorf("err = %#v, want an *EvalError naming the module", err)
				}
			}
			if string(out) != "untouched output bytes!!" {
				t.Errorf("output modified on failure: %q", out)
			}
			if got := testutil.ToFloat64(r.metrics.failures.WithLabelValues(tt.reason)); got != 3 {
				t.Errorf(`segedge_wasm_eval_failures_total{reason=%q} = %v, want 3`, tt.reason, got)
			}
			if after := r.Stats().Instances; after != before {
				t.Errorf("instances %d -> %d: failed instances must be replaced one for one", before, after)
			}
			assertHealthy(t, r)
		})
	}
}

func TestWASIIsSandboxed(t *testing.T) {
	r, _ := newTestRuntime(t, Config{})
	m, err := r.Load(context.Background(), "wasi", testdata(t, "wasi.wasm"), LoadOptions{OutputLen: okOutputLen})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	out := make([]byte, okOutputLen)
	if err := m.Evaluate(context.Background(), nil, out); err != nil {
		t.Fatal(err)
	}
	if string(out[:8]) != "\x00\x00\x00\x00\x00\x00\x00\x00" {
		t.Errorf("random_get gave % x, want zeros", out[:8])
	}
	if errno := out[16]; errno != 0 {
		t.Errorf("fd_write to the discarded stdout: errno %d, want 0", errno)
	}
	if errno := out[20]; errno != 0 {
		t.Errorf("random_get: errno %d, want 0", errno)
	}
}

func TestGreedyModuleIsBoundedByTheCap(t *testing.T) {
	for _, file := range []string{"growcap.wasm", "bigmax.wasm"} {
		r, _ := newTestRuntime(t, Config{MemoryLimitPages: 32})
		m, err := r.Load(context.Background(), file, testdata(t, file), LoadOptions{OutputLen: okOutputLen})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Evaluate(context.Background(), nil, make([]byte, okOutputLen)); err != nil {
			t.Fatalf("%s: a module that stops at the cap should succeed: %v", file, err)
		}
		inst, _ := m.get(context.Background())
		if got := inst.mem.Size(); got > 32*65536 {
			t.Errorf("%s: memory grew to %d bytes, past the 32-page cap", file, got)
		}
		m.put(inst)
		m.Release()
	}
}

func TestCallerCancellationIsNotAModuleFailure(t *testing.T) {
	r, _ := newTestRuntime(t, Config{QuarantineAfter: 1})
	for _, trusted := range []bool{true, false} {
		m := loadOK(t, r, "ok", trusted)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := m.Evaluate(ctx, nil, make([]byte, okOutputLen))
		if !trusted && !errors.Is(err, ErrCanceled) {
			// A trusted call is too short to be worth a check; an untrusted
			// one checks the caller's context before it starts.
			t.Errorf("untrusted, canceled context: err = %v, want ErrCanceled", err)
		}
		if m.Quarantined() {
			t.Errorf("trusted=%v: a canceled caller quarantined the module", trusted)
		}
		checkOK(t, m)
		m.Release()
	}
	if got := testutil.ToFloat64(r.metrics.failures.WithLabelValues(reasonCancel)); got != 0 {
		t.Errorf("canceled callers counted as module failures: %v", got)
	}
}

// An untrusted evaluation that never returns is stopped by the watchdog
// within its deadline plus a tick (generously bounded here: a loaded CI
// machine is slow, but not seconds slow).
func TestWatchdogStopsLoopsPromptly(t *testing.T) {
	r, _ := newTestRuntime(t, Config{EvalTimeout: 20 * time.Millisecond})
	m, err := r.Load(context.Background(), "loop", testdata(t, "loop.wasm"), LoadOptions{OutputLen: okOutputLen})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	start := time.Now()
	err = m.Evaluate(context.Background(), nil, make([]byte, okOutputLen))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a 20ms deadline stopped the loop after %v", d)
	}
}

func TestWatchdogFiresOnlyPastTheDeadline(t *testing.T) {
	w := newWatchdog(4 * time.Millisecond) // 1ms tick
	defer w.close()
	idle, late, early := w.add(), w.add(), w.add()
	late.deadline.Store(w.now() - 1)
	early.deadline.Store(w.now() + int64(time.Hour))
	select {
	case <-late.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a running context past its deadline was not fired")
	}
	if late.Err() != context.DeadlineExceeded || late.deadline.Swap(0) != 0 {
		t.Errorf("fired context: Err = %v, deadline not taken", late.Err())
	}
	time.Sleep(10 * time.Millisecond)
	if idle.Err() != nil || early.Err() != nil {
		t.Errorf("idle or not-yet-due contexts fired: %v, %v", idle.Err(), early.Err())
	}
	if early.deadline.Swap(0) == 0 {
		t.Error("the evaluation, not the watchdog, should have ended the early context's run")
	}
}

// assertHealthy loads and evaluates a good module on r: whatever happened
// before, the runtime still works.
func assertHealthy(t *testing.T, r *Runtime) {
	t.Helper()
	m := loadOK(t, r, "healthy", false)
	checkOK(t, m)
	m.Release()
}

// TestTestdataIsAssembled checks that each committed .wasm matches its .wat,
// when wat2wasm (package wabt) is installed.
func TestTestdataIsAssembled(t *testing.T) {
	wat2wasm, err := exec.LookPath("wat2wasm")
	if err != nil {
		t.Skip("wat2wasm not installed (apt-get install wabt); using the committed .wasm files")
	}
	wats, _ := filepath.Glob("testdata/*.wat")
	if len(wats) == 0 {
		t.Fatal("no testdata/*.wat")
	}
	for _, wat := range wats {
		out := filepath.Join(t.TempDir(), "m.wasm")
		if b, err := exec.Command(wat2wasm, wat, "-o", out).CombinedOutput(); err != nil {
			t.Fatalf("wat2wasm %s: %v\n%s", wat, err, b)
		}
		want, _ := os.ReadFile(out)
		got, err := os.ReadFile(strings.TrimSuffix(wat, ".wat") + ".wasm")
		if err != nil || string(got) != string(want) {
			t.Errorf("%s is stale: run wat2wasm %s -o %s", strings.TrimSuffix(wat, ".wat")+".wasm", wat, strings.TrimSuffix(wat, ".wat")+".wasm")
		}
	}
}
