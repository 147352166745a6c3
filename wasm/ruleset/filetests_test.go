package ruleset

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/segedge/segedge/core/rules"
)

// TestFileTestsOnModule: the example rules file's own tests pass on the compiled module, and
// a wrong expectation is reported with its position.
func TestFileTestsOnModule(t *testing.T) {
	data, err := os.ReadFile("../../core/rules/testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := rules.Parse("example.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	f.Modules = nil // the example's module file does not exist; modules_test.go runs real ones
	rs, err := rules.Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ev, err := Load(ctx, newRuntime(t), "example", rs)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	if err := ev.RunTests(ctx, f); err != nil {
		t.Fatal(err)
	}
	f.Tests[0].Expect["cart_abandoner"] = true
	err = ev.RunTests(ctx, f)
	if err == nil || !strings.Contains(err.Error(), "example.yaml:29:5: test 1: cart_abandoner is false, want true") {
		t.Fatalf("got %v", err)
	}
}
