package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// quarantineRules: a CEL segment on the request, one on the profile (so the origin's engine
// evaluates the ruleset, its module included, on every event), and a hand-written module's
// segments. mark tells the versions' slot HTML apart. No tests: a module that fails on every
// call passes none, and an author may upload without.
func quarantineRules(mark string) string {
	return `segments:
  - name: shopper
    rule: request.path.startsWith("/shop")
  - name: carted
    rule: count("add_to_cart", "30m") > 0
modules:
  - path: mods/pathpromo.wasm
    segments: [deep_browser, valid_promo]
    features: ['request.path', 'request.query("promo")']
slots:
  - name: hero
    variants:
      - when: valid_promo
        html: 'PROMO-` + mark + `'
      - when: shopper
        html: 'SHOP-` + mark + `'
`
}

// metricValue reads one sample (name with its labels as exposed, e.g. `x{outcome="fallback"}`)
// from a /metrics page; -1 if absent.
func metricValue(t *testing.T, url, sample string) float64 {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, sample+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("%s: %q", sample, line)
			}
			return v
		}
	}
	return -1
}

// originActive is the "active" part of GET /v1/rulesets and the current pointer.
func originActive(t *testing.T, sys *system) (current uint64, active struct {
	Version     uint64 `json:"version"`
	Fallback    bool   `json:"fallback"`
	Quarantined *struct {
		Version  uint64 `json:"version"`
		Module   string `json:"module"`
		Reason   string `json:"reason"`
		Fallback uint64 `json:"fallback"`
	} `json:"quarantined"`
}) {
	t.Helper()
	req, _ := http.NewRequest("GET", sys.originURL+"/v1/rulesets", nil)
	req.Header.Set("Authorization", "Bearer admin-secret")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var list struct {
		Current uint64 `json:"current"`
		Active  json.RawMessage
	}
	if err := json.NewDecoder(res.Body).Decode(&list); err != nil {
		t.Fatalf("GET /v1/rulesets: %v", err)
	}
	if err := json.Unmarshal(list.Active, &active); err != nil {
		t.Fatalf("GET /v1/rulesets active %s: %v", list.Active, err)
	}
	return list.Current, active
}

// A ruleset whose hand-written module is a real infinite loop, pushed over a good one, through
// the real binaries: the edge times the module out on each request (the CEL segments keep
// working: never the page's default), quarantines it after 16 requests in a row and serves the
// previous version again (its header, its slot HTML); the origin does the same on events; both
// say so in their metrics and GET /v1/rulesets, both stay ready. A fixed push then goes live
// everywhere as usual.
func TestQuarantinedRulesetFallsBackOnTheEdgeAndTheOrigin(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	wasmDir := filepath.Join(filepath.Dir(file), "..", "wasm")
	read := func(p string) []byte {
		b, err := os.ReadFile(filepath.Join(wasmDir, p))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good, loop := read("ruleset/testdata/promo.wasm"), read("testdata/loop.wasm")
	sys := startSystem(t, services{}, siteUpstream(t).URL)
	push := func(mark string, module []byte) {
		t.Helper()
		p := writeRules(t, t.TempDir(), quarantineRules(mark), module)
		if code, out := rulesCLI(t, sys, "push", p); code != 0 {
			t.Fatalf("push %s: exit %d\n%s", mark, code, out)
		}
	}
	const page = "/shop/x?promo=79927398713" // shopper (CEL) and valid_promo (the module)
	push("V1", good)
	waitRuleset(t, sys.edgeURL+page, "1")
	if _, body := rawGet(t, sys.edgeURL+page); !strings.Contains(body, "PROMO-V1") {
		t.Fatalf("version 1: %q", body)
	}

	push("V2", loop)
	waitRuleset(t, sys.edgeURL+page, "2")
	served := map[string]int{}
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, body := rawGet(t, sys.edgeURL+page)
		v := res.Header.Get("Segedge-Ruleset")
		switch {
		case res.StatusCode != 200:
			t.Fatalf("GET %s: %d", page, res.StatusCode)
		case v == "2" && strings.Contains(body, "SHOP-V2"): // the module timed out: its segment failed closed
		case v == "1" && strings.Contains(body, "PROMO-V1"): // the fallback
		default:
			t.Fatalf("ruleset %q served %q: want version 2's CEL answer or version 1's", v, body)
		}
		served[v]++
		if v == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the edge never fell back from the looping version: %v", served)
		}
	}
	// waitRuleset's last request was evaluated with version 2 too.
	t.Logf("requests on version 2 before the edge fell back: %d", served["2"]+1)
	if served["2"]+1 < 16 {
		t.Errorf("fell back after %d requests, before the 16 failures in a row the sandbox counts", served["2"]+1)
	}
	for range 5 {
		if res, body := rawGet(t, sys.edgeURL+page); res.Header.Get("Segedge-Ruleset") != "1" || !strings.Contains(body, "PROMO-V1") {
			t.Fatalf("after the fallback: ruleset %q body %q", res.Header.Get("Segedge-Ruleset"), body)
		}
	}
	ops := sys.edgeOpsURL + "/metrics"
	for sample, want := range map[string]float64{
		"segedge_edge_ruleset_version":                                  1,
		"segedge_edge_ruleset_fallback":                                 1,
		"segedge_edge_ruleset_quarantined":                              1,
		`segedge_edge_ruleset_quarantines_total{outcome="fallback"}`:    1,
		`segedge_edge_ruleset_quarantines_total{outcome="fail_closed"}`: 0,
	} {
		if got := metricValue(t, ops, sample); got != want {
			t.Errorf("edge %s = %v, want %v", sample, got, want)
		}
	}
	if got := metricValue(t, ops, `segedge_wasm_eval_failures_total{reason="timeout"}`); got < 16 {
		t.Errorf("edge timeouts counted: %v, want at least 16", got)
	}
	if code, body := status(sys.edgeOpsURL + "/readyz"); code != 200 {
		t.Errorf("edge /readyz in fallback: %d %s", code, body)
	}

	// The origin evaluates the ruleset on events: its copy of the module loops too.
	for i := range 40 {
		body := fmt.Sprintf(`[{"event_id":"q%d","user_id":"qu%d","type":"add_to_cart"}]`, i, i%8)
		req, _ := http.NewRequest("POST", sys.originURL+"/v1/events", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer write-secret")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 202 {
			t.Fatalf("POST /v1/events: %d", res.StatusCode)
		}
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		cur, active := originActive(t, sys)
		if active.Fallback {
			if cur != 2 || active.Version != 1 || active.Quarantined == nil || active.Quarantined.Version != 2 ||
				active.Quarantined.Module != "mods/pathpromo.wasm" || !strings.Contains(active.Quarantined.Reason, "deadline exceeded") {
				t.Fatalf("origin: current %d, active %+v %+v", cur, active, active.Quarantined)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the origin never fell back: current %d, active %+v", cur, active)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := metricValue(t, sys.originURL+"/metrics", `segedge_origin_ruleset_quarantines_total{outcome="fallback"}`); got != 1 {
		t.Errorf("origin quarantines{fallback} = %v", got)
	}
	if code, body := status(sys.originURL + "/readyz"); code != 200 {
		t.Errorf("origin /readyz in fallback: %d %s", code, body)
	}

	// The fix: live everywhere as usual, the fallback state gone.
	push("V3", good)
	waitRuleset(t, sys.edgeURL+page, "3")
	if _, body := rawGet(t, sys.edgeURL+page); !strings.Contains(body, "PROMO-V3") {
		t.Fatalf("version 3: %q", body)
	}
	if got := metricValue(t, ops, "segedge_edge_ruleset_fallback"); got != 0 {
		t.Errorf("edge fallback gauge after the fix: %v", got)
	}
	if cur, active := originActive(t, sys); cur != 3 || active.Version != 3 || active.Fallback || active.Quarantined != nil {
		t.Errorf("origin after the fix: current %d, active %+v", cur, active)
	}
}
