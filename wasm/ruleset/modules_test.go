package ruleset

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/wasm"
)

var pathpromo struct {
	once sync.Once
	bin  []byte
	err  error
}

// buildPathpromo builds wasm/examples/pathpromo as the Makefile does (once per test binary).
func buildPathpromo(t testing.TB) []byte {
	t.Helper()
	pathpromo.once.Do(func() {
		dir, err := os.MkdirTemp("", "segedge-pathpromo")
		if err != nil {
			pathpromo.err = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "pathpromo.wasm")
		cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-buildmode=c-shared", "-o", out, "../examples/pathpromo")
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if b, err := cmd.CombinedOutput(); err != nil {
			pathpromo.err = errors.New("go build pathpromo: " + err.Error() + "\n" + string(b))
			return
		}
		pathpromo.bin, pathpromo.err = os.ReadFile(out)
	})
	if pathpromo.err != nil {
		t.Fatal(pathpromo.err)
	}
	return pathpromo.bin
}

var guestCache = filepath.Join(os.TempDir(), "segedge-wasm-test-cache")

func compileModulesFile(t *testing.T) (*rules.File, *rules.Ruleset) {
	t.Helper()
	data, err := os.ReadFile("testdata/modules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := rules.Parse("modules.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := rules.Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	return f, rs
}

// A ruleset with a hand-written module: the CEL segment and the module's segments are
// evaluated together, slots choose from both, and the file's tests pass on the composite. Two
// modules with the same logic: the Go example (guest SDK) and a WAT one.
func TestRulesetWithHandWrittenModule(t *testing.T) {
	for _, name := range []string{"go pathpromo", "wat promo"} {
		t.Run(name, func(t *testing.T) {
			var mod []byte
			if name == "go pathpromo" {
				mod = buildPathpromo(t)
			} else {
				var err error
				if mod, err = os.ReadFile("testdata/promo.wasm"); err != nil {
					t.Fatal(err)
				}
			}
			testModule(t, mod)
		})
	}
}

// promo.wasm is promo.wat assembled (checked when wat2wasm, package wabt, is installed).
func TestPromoWasmIsAssembled(t *testing.T) {
	wat2wasm, err := exec.LookPath("wat2wasm")
	if err != nil {
		t.Skip("wat2wasm not installed (apt-get install wabt); using the committed promo.wasm")
	}
	out := filepath.Join(t.TempDir(), "promo.wasm")
	if b, err := exec.Command(wat2wasm, "testdata/promo.wat", "-o", out).CombinedOutput(); err != nil {
		t.Fatalf("wat2wasm: %v\n%s", err, b)
	}
	want, _ := os.ReadFile(out)
	if got, _ := os.ReadFile("testdata/promo.wasm"); string(got) != string(want) {
		t.Fatal("testdata/promo.wasm is stale: run wat2wasm testdata/promo.wat -o testdata/promo.wasm")
	}
}

func testModule(t *testing.T, mod []byte) {
	f, rs := compileModulesFile(t)
	if err := rs.AttachModules(f.Name, map[string][]byte{"pathpromo.wasm": mod}); err != nil {
		t.Fatal(err)
	}
	if err := rules.RunTests(f, rs); err != nil {
		t.Fatalf("reference evaluator (CEL expectations only): %v", err)
	}
	ctx := context.Background()
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: prometheus.NewRegistry(), CacheDir: guestCache})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	ev, err := Load(ctx, rt, "modules", rs)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	if err := ev.RunTests(ctx, f); err != nil {
		t.Fatal(err)
	}
	// A wrong expectation on a module segment fails with its position.
	f.Tests[0].Expect["deep_browser"] = false
	if err := ev.RunTests(ctx, f); err == nil || !strings.Contains(err.Error(), "modules.yaml:16:5: test 1: deep_browser is true, want false") {
		t.Fatalf("wrong expectation: %v", err)
	}
	// At the origin (no request) the module's segments need a request: not member, error.
	res := ev.NewResult()
	if err := ev.Evaluate(ctx, nil, nil, time.Now(), res); err != nil {
		t.Fatal(err)
	}
	m := ev.Manifest()
	for _, name := range []string{"deep_browser", "valid_promo", "shopper"} {
		if i := m.Segment(name); res.IsMember(i) || !res.IsError(i) {
			t.Errorf("%s without a request: member %v error %v", name, res.IsMember(i), res.IsError(i))
		}
	}
}

// Hand-written modules are checked before use: wrong bytes for the recorded hash, forbidden
// imports, a module that never returns (fails closed on its own, the CEL segment unaffected).
func TestRulesetModuleFailures(t *testing.T) {
	ctx := context.Background()
	read := func(name string) []byte {
		b, err := os.ReadFile("../testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: prometheus.NewRegistry(), EvalTimeout: 20 * time.Millisecond, QuarantineAfter: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	tests := []struct {
		name    string
		module  []byte
		tamper  bool
		loadErr string
	}{
		{"hash mismatch", read("ok.wasm"), true, "does not match its hash"},
		{"forbidden import", read("badimport.wasm"), false, `module "pathpromo.wasm": load module "modules/pathpromo.wasm": import func "env.foo" not allowed`},
		{"no exports", read("noexports.wasm"), false, `missing export "segedge_eval"`},
		{"infinite loop", read("loop.wasm"), false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, rs := compileModulesFile(t)
			if err := rs.AttachModules(f.Name, map[string][]byte{"pathpromo.wasm": tt.module}); err != nil {
				t.Fatal(err)
			}
			if tt.tamper {
				rs.Modules[0] = append([]byte(nil), read("status.wasm")...)
			}
			ev, err := Load(ctx, rt, "modules", rs)
			if tt.loadErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.loadErr) {
					t.Fatalf("Load: %v; want %q", err, tt.loadErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer ev.Close()
			res := ev.NewResult()
			_, reqSrc, _ := (&rules.TestDef{Request: &rules.TestRequest{Path: "/shop/a/b"}}).Sources()
			if err := ev.Evaluate(ctx, nil, reqSrc, time.Now(), res); err != nil {
				t.Fatalf("a failing hand-written module must not fail the evaluation: %v", err)
			}
			m := ev.Manifest()
			if i := m.Segment("shopper"); !res.IsMember(i) {
				t.Errorf("shopper (CEL) not a member beside a looping module")
			}
			for _, name := range []string{"deep_browser", "valid_promo"} {
				if i := m.Segment(name); res.IsMember(i) || !res.IsError(i) {
					t.Errorf("%s of a looping module: member %v error %v; want not member, error", name, res.IsMember(i), res.IsError(i))
				}
			}
			if res.Variants[0] != 1 {
				t.Errorf("hero shows %d, want 1 (shopper)", res.Variants[0])
			}
			if err := ev.RunTests(ctx, f); err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
				t.Errorf("RunTests with a looping module: %v; want the module's deadline", err)
			}
		})
	}
}

// BenchmarkEvalWithModule: one evaluation of a ruleset with a CEL segment and the WAT promo
// module (untrusted: run under the evaluation deadline), against the same ruleset's generated
// module alone.
func BenchmarkEvalWithModule(b *testing.B) {
	data, err := os.ReadFile("testdata/modules.yaml")
	if err != nil {
		b.Fatal(err)
	}
	mod, err := os.ReadFile("testdata/promo.wasm")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close(ctx)
	_, req, _ := (&rules.TestDef{Request: &rules.TestRequest{Path: "/a/b/c", Query: map[string]string{"promo": "79927398713"}}}).Sources()
	for _, withModule := range []bool{false, true} {
		name := "cel-only"
		if withModule {
			name = "cel+module"
		}
		b.Run(name, func(b *testing.B) {
			f, err := rules.Parse("modules.yaml", data)
			if err != nil {
				b.Fatal(err)
			}
			if !withModule {
				f.Modules, f.Slots, f.Tests = nil, nil, nil
			}
			rs, err := rules.Compile(f)
			if err != nil {
				b.Fatal(err)
			}
			if withModule {
				if err := rs.AttachModules(f.Name, map[string][]byte{"pathpromo.wasm": mod}); err != nil {
					b.Fatal(err)
				}
			}
			ev, err := Load(ctx, rt, name, rs)
			if err != nil {
				b.Fatal(err)
			}
			defer ev.Close()
			res := ev.NewResult()
			now := time.Now()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := ev.Evaluate(ctx, nil, req, now, res); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
