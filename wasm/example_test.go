package wasm_test

import (
	"context"
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segedge/segedge/wasm"
)

// The edge's life cycle: one Runtime per process, each ruleset version loaded
// and swapped into an Active, every request evaluated through it.
func Example() {
	ctx := context.Background()
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: prometheus.NewRegistry()})
	if err != nil {
		panic(err)
	}
	defer rt.Close(ctx)

	bin, _ := os.ReadFile("testdata/ok.wasm") // core/rules generates these
	m, err := rt.Load(ctx, "ruleset-v1", bin, wasm.LoadOptions{OutputLen: 24, Trusted: true})
	if err != nil {
		panic(err)
	}
	active := wasm.NewActive()
	defer active.Close()
	_ = active.Swap(m) // active now owns the reference Load returned

	out := make([]byte, 24)
	if err := active.Evaluate(ctx, []byte{0b101, 0, 0, 0, 0, 0, 0, 0}, out); err != nil {
		fmt.Println("fail closed: no segments:", err)
		return
	}
	fmt.Printf("version %s, membership word %08b\n", active.Current(), out[0])

	// A bad module never becomes active: Load rejects it.
	_, err = rt.Load(ctx, "ruleset-v2", []byte("not wasm"), wasm.LoadOptions{OutputLen: 24})
	fmt.Println(err)
	// Output:
	// version ruleset-v1, membership word 00000101
	// load module "ruleset-v2": malformed binary: not a WebAssembly binary (bad magic)
}
