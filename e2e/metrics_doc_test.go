package e2e

import (
	"bufio"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// metricNames scrapes url and returns the segedge_* metric families with their help text.
func metricNames(t *testing.T, url string) map[string]string {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "# HELP segedge_"); ok {
			name, help, _ := strings.Cut(rest, " ")
			out["segedge_"+name] = help
		}
	}
	return out
}

// docs/metrics.md must list exactly the metrics the programs register, so dashboards and alerts
// are written against names that exist. Regenerate the tables with SEGEDGE_WRITE_METRICS_DOC=1.
func TestMetricsDocMatchesWhatTheProgramsExport(t *testing.T) {
	// With a webhook secret the origin runs its webhook dispatcher, whose metrics are documented too;
	// with Redis, the profile store exports its cache counts.
	sys := startSystem(t, services{external: true, originEnv: []string{"SEGEDGE_WEBHOOK_SECRET=metrics-doc"}}, siteUpstream(t).URL)
	putRules(t, sys, "../scripts/demo/rules.yaml")
	// Metrics with a label per trigger appear once the ruleset is active on both sides.
	for deadline := time.Now().Add(10 * time.Second); counter(sys.originURL, "segedge_origin_ruleset_version") < 1 ||
		counter(sys.edgeOpsURL, "segedge_edge_ruleset_version") < 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("ruleset not active on origin and edge within 10s")
		}
	}
	res, _ := get(t, sys.edgeURL+"/", "")
	c := cookieOf(res)
	req, _ := http.NewRequest("POST", sys.edgeURL+"/v1/events", strings.NewReader(`[{"event_id":"m1","type":"add_to_cart"}]`))
	req.Header.Set("Cookie", "segedge_uid="+c)
	if r, err := http.DefaultClient.Do(req); err == nil {
		r.Body.Close()
	}
	got := map[string]map[string]string{
		"origin": metricNames(t, sys.originURL+"/metrics"),
		"edge":   metricNames(t, sys.edgeOpsURL+"/metrics"),
	}
	if os.Getenv("SEGEDGE_WRITE_METRICS_DOC") == "1" {
		var b strings.Builder
		b.WriteString("# Metrics\n\nEvery metric the programs export (Prometheus, `/metrics` on the origin's address and on the edge's operations listener). Names follow `segedge_<component>_<what>_<unit>`; labels are bounded (never a user id or URL). `e2e/metrics_doc_test.go` keeps this list equal to what the programs register.\n")
		for _, prog := range []string{"origin", "edge"} {
			b.WriteString("\n## " + prog + "\n\n| metric | meaning |\n| --- | --- |\n")
			names := make([]string, 0, len(got[prog]))
			for n := range got[prog] {
				names = append(names, n)
			}
			slices.Sort(names)
			for _, n := range names {
				b.WriteString("| `" + n + "` | " + strings.ReplaceAll(got[prog][n], "|", "\\|") + " |\n")
			}
		}
		if err := os.WriteFile("../docs/metrics.md", []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("`(segedge_[a-z0-9_]+)`").FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = true
	}
	exported := map[string]bool{}
	for _, names := range got {
		for n := range names {
			exported[n] = true
			if !documented[n] {
				t.Errorf("%s is exported but not in docs/metrics.md", n)
			}
		}
	}
	for n := range documented {
		if !exported[n] {
			t.Errorf("docs/metrics.md lists %s, which no program exports", n)
		}
	}
}
