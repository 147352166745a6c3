package rulescli

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestValidateAndTestTheDemoRules(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"test", "../../scripts/demo/rules.yaml"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s %s", code, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "PASS 2 tests on the compiled module") {
		t.Fatalf("output: %s", out.String())
	}
}

func TestBadFilesExitOneWithPosition(t *testing.T) {
	tests := map[string]string{
		"window": "segments:\n  - name: x\n    rule: count(\"a\", \"30x\") > 0\n",
		"cycle":  "segments:\n  - name: a\n    rule: segment(\"b\")\n  - name: b\n    rule: segment(\"a\")\n",
		"test":   "segments:\n  - name: a\n    rule: score(\"s\") > 5.0\nscores:\n  s: {half_life: 1d, weights: {x: 1}}\ntests:\n  - profile: {scores: {s: 1}}\n    expect: {a: true}\n",
	}
	for name, src := range tests {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "rules.yaml")
			os.WriteFile(p, []byte(src), 0o644)
			var out, errb bytes.Buffer
			if code := Main([]string{"test", p}, &out, &errb); code != 1 {
				t.Fatalf("exit %d, want 1: %s %s", code, out.String(), errb.String())
			}
			if name != "test" && !strings.Contains(errb.String(), "rules.yaml:") {
				t.Fatalf("error without position: %s", errb.String())
			}
		})
	}
}

func TestLineDiff(t *testing.T) {
	got := lineDiff([]string{"a", "b", "c"}, []string{"a", "c", "d"})
	want := []string{" a", "-b", " c", "+d"}
	if !slices.Equal(got, want) {
		t.Fatalf("diff = %q, want %q", got, want)
	}
}

// `rules test` runs a file with a hand-written module, read relative to the file; a missing
// module file is an error with the module's position.
func TestTestWithHandWrittenModule(t *testing.T) {
	src, err := os.ReadFile("../../wasm/ruleset/testdata/modules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile("../../wasm/ruleset/testdata/promo.wasm")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "rules.yaml")
	os.WriteFile(p, src, 0o644)
	var out, errb bytes.Buffer
	if code := Main([]string{"test", p}, &out, &errb); code != 1 || !strings.Contains(errb.String(), `rules.yaml:5:5: module "pathpromo.wasm"`) {
		t.Fatalf("without the module file: exit %d: %s %s", code, out.String(), errb.String())
	}
	os.WriteFile(filepath.Join(dir, "pathpromo.wasm"), mod, 0o644)
	out.Reset()
	errb.Reset()
	if code := Main([]string{"test", p}, &out, &errb); code != 0 || !strings.Contains(out.String(), "1 hand-written module(s): valid") ||
		!strings.Contains(out.String(), "PASS 4 tests on the compiled module") {
		t.Fatalf("exit %d: %s %s", code, out.String(), errb.String())
	}
}
