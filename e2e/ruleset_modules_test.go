package e2e

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

const modulesRules = `segments:
  - name: shopper
    rule: request.path.startsWith("/shop")
modules:
  - path: mods/pathpromo.wasm
    segments: [deep_browser, valid_promo]
    features: ['request.path', 'request.query("promo")']
slots:
  - name: hero
    variants:
      - when: valid_promo
        html: 'PROMO-HERO'
      - when: shopper
        html: 'SHOP-HERO'
tests:
  - request: {path: /a/b/c, query: {promo: "79927398713"}}
    expect: {deep_browser: true, valid_promo: true, hero: 0}
  - request: {path: /shop/x}
    expect: {valid_promo: false, shopper: true, hero: 1}
`

// writeRules writes a rules file and its module (bytes) under dir/mods, as an author's checkout.
func writeRules(t *testing.T, dir, src string, module []byte) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "mods"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mods", "pathpromo.wasm"), module, 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// rulesCLI runs `origin rules ARGS` against the system's origin and returns exit code and output.
func rulesCLI(t *testing.T, sys *system, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "origin"), append([]string{"rules", args[0], "-origin", sys.originURL, "-token", "admin-secret"}, args[1:]...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		t.Fatal(err)
	}
	return 0, string(out)
}

// A hand-written module pushed inside a ruleset with `origin rules push`: a bad module is
// refused with a precise message and changes nothing; the good one goes live and the edge's
// responses show the slot variant its segment chose, beside a CEL segment's. The module is
// wasm/ruleset/testdata/promo.wat, the logic of the Go example wasm/examples/pathpromo in WAT:
// the Go guest takes ~3 s to compile in a normal build but ~40 s in these -race binaries, past
// the origin's 30 s write timeout (wasm/ruleset and origin/rulesets test the Go guest itself).
func TestRulesetWithHandWrittenModuleReachesTheEdge(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	module, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "wasm", "ruleset", "testdata", "promo.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	sys := startSystem(t, services{}, siteUpstream(t).URL)

	// A bad module: refused with the file position and the validator's reason; nothing stored.
	bad := writeRules(t, t.TempDir(), modulesRules, []byte("\x00asm\x01\x00\x00\x00\x02\x05\x01\x03env\x03foo"))
	if code, out := rulesCLI(t, sys, "push", bad); code != 1 || !strings.Contains(out, `rules.yaml:5:5: module \"mods/pathpromo.wasm\"`) || !strings.Contains(out, "origin answered 422") {
		t.Fatalf("bad module push: exit %d\n%s", code, out)
	}
	good := writeRules(t, t.TempDir(), modulesRules, module)
	if code, out := rulesCLI(t, sys, "dry-run", good); code != 0 || !strings.Contains(out, `"needs_request"`) {
		t.Fatalf("dry-run: exit %d\n%s", code, out)
	}
	if cur, n := rulesetHistory(t, sys); cur != 0 || n != 0 {
		t.Fatalf("after a refused push and a dry run: current %d, %d versions; want none", cur, n)
	}

	t0 := time.Now()
	if code, out := rulesCLI(t, sys, "push", "-m", "pathpromo", good); code != 0 || !strings.Contains(out, `"version": 1`) {
		t.Fatalf("push: exit %d\n%s", code, out)
	}
	t.Logf("push (validate, compile and test at the origin): %s", time.Since(t0))
	get := func(path string) (string, string) {
		res, err := http.Get(sys.edgeURL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.Header.Get("Segedge-Ruleset"), string(b)
	}
	// The edge compiles the Go guest (~2.5 MB) when it loads the version: seconds under -race.
	t1 := time.Now()
	deadline := t1.Add(90 * time.Second)
	for {
		if v, _ := get("/warmup"); v == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the edge never served ruleset 1")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("pushed version live at the edge after %s", time.Since(t1))
	tests := []struct{ path, want string }{
		{"/a/b/c?promo=79927398713", "PROMO-HERO"},        // the module's valid_promo
		{"/shop/x?promo=79927398713", "PROMO-HERO"},       // module before CEL in the slot's order
		{"/shop/x", "SHOP-HERO"},                          // the CEL segment
		{"/shop/x?promo=1234", "SHOP-HERO"},               // Luhn fails: not a member
		{"/a?promo=12ab", `data-seg-slot="hero">Welcome`}, // the module's error bit: default content
	}
	for _, tt := range tests {
		v, body := get(tt.path)
		if v != "1" || !strings.Contains(body, tt.want) {
			t.Errorf("GET %s: ruleset %q body %q; want ruleset 1 showing %q", tt.path, v, body, tt.want)
		}
	}
}
