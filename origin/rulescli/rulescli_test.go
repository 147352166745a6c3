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
