package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
		err  bool
	}{
		{`segedge_edge_replica_users`, []string{"segedge_edge_replica_users"}, false},
		{`histogram_quantile(0.99, sum by (le, instance) (rate(segedge_origin_ingest_to_delta_seconds_bucket[$__rate_interval])))`,
			[]string{"segedge_origin_ingest_to_delta_seconds_bucket"}, false},
		{`sum(rate(a_total{result=~"HIT|STALE", x="sum(b)"}[5m])) / sum(rate(a_total[5m]))`, []string{"a_total"}, false},
		{`sum(rate(x_total[5m])) by (reason) > 0 and on (instance) group_left (job) y offset 5m`, []string{"x_total", "y"}, false},
		{`max by (instance) (v) < on () group_left () max(w)`, []string{"v", "w"}, false},
		{`rate(x[${window}]) * 1e3 + 0x1F - .5 > bool 2`, []string{"x"}, false},
		{`sum without (le) (x:recorded:rate5m)`, []string{"x:recorded:rate5m"}, false},
		{`count(up == 0) or vector(0)`, []string{"up"}, false},
		{`a{b="unterminated}`, nil, true},
		{`sum by (le`, nil, true},
		{`rate(x[5m`, nil, true},
		{`sum by (le) (rate(x_bucket[5m])) / ignoring (le) count without (instance) (y)`, []string{"x_bucket", "y"}, false},
		{`topk(3, sum by (trigger) (rate(t_total[5m])))`, []string{"t_total"}, false},
	} {
		t.Run(tc.expr, func(t *testing.T) {
			got, err := MetricNames(tc.expr)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if !tc.err && !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDocumented(t *testing.T) {
	fam := map[string]bool{"h_seconds": true, "c_total": true, "g": true}
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"h_seconds", true}, {"h_seconds_bucket", true}, {"h_seconds_sum", true}, {"h_seconds_count", true},
		{"c_total", true}, {"c_total_bucket", false}, {"g", true}, {"h_seconds_max", false}, {"nope", false}, {"_bucket", false},
	} {
		if got := Documented(tc.name, fam); got != tc.want {
			t.Errorf("Documented(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// documentedMetrics reads the metric families of docs/metrics.md (e2e/metrics_doc_test.go keeps
// that list equal to what origin and edge register).
func documentedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range regexp.MustCompile("`(segedge_[a-z0-9_]+)`").FindAllStringSubmatch(string(doc), -1) {
		out[m[1]] = true
	}
	if len(out) < 20 {
		t.Fatalf("docs/metrics.md lists only %d metrics", len(out))
	}
	return out
}

// checkExpr fails the test if expr names a metric that is not documented or not segedge's own.
func checkExpr(t *testing.T, where, expr string, families map[string]bool, used map[string]bool) {
	t.Helper()
	names, err := MetricNames(expr)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return
	}
	if len(names) == 0 {
		t.Errorf("%s: no metric in %q", where, expr)
	}
	for _, n := range names {
		if !strings.HasPrefix(n, "segedge_") || !Documented(n, families) {
			t.Errorf("%s: %s is not in docs/metrics.md (expr %q)", where, n, expr)
			continue
		}
		for _, suf := range histogramSuffixes {
			if base, ok := strings.CutSuffix(n, suf); ok && !families[n] {
				n = base
			}
		}
		used[n] = true
	}
}

type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos *struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

func loadDashboard(t *testing.T) (*dashboard, []panel) {
	t.Helper()
	b, err := os.ReadFile("grafana/segedge.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana/segedge.json: %v", err)
	}
	var all []panel
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return &d, all
}

// The dashboard is importable (a title, a uid, a Prometheus datasource variable every query
// uses, unique panel ids, a place on the grid) and every expression names only metrics the
// programs export.
func TestDashboardUsesOnlyExportedMetrics(t *testing.T) {
	families := documentedMetrics(t)
	d, panels := loadDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("dashboard title %q uid %q: both are needed to import it", d.Title, d.UID)
	}
	dsVar := ""
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = "${" + v.Name + "}"
		}
	}
	if dsVar == "" {
		t.Fatal("no Prometheus datasource variable: the dashboard would be tied to one Grafana's datasource uid")
	}
	ids := map[int]bool{}
	used := map[string]bool{}
	nExpr := 0
	for _, p := range panels {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("%s: id missing or used twice", where)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
			t.Errorf("%s: no place on the grid", where)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != dsVar {
			t.Errorf("%s: datasource %+v, want prometheus %s", where, p.Datasource, dsVar)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", where)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if refs[tg.RefID] {
				t.Errorf("%s: refId %s twice", where, tg.RefID)
			}
			refs[tg.RefID] = true
			checkExpr(t, where, tg.Expr, families, used)
			nExpr++
		}
	}
	if nExpr < 20 {
		t.Errorf("only %d expressions", nExpr)
	}
	// What the issue asks the dashboard to show.
	for _, m := range []string{
		"segedge_origin_events_accepted_total", "segedge_edge_events_accepted_total", // event rate
		"segedge_origin_events_rejected_total", "segedge_edge_events_rejected_total", // rejects
		"segedge_origin_ingest_to_delta_seconds", "segedge_edge_event_to_replica_seconds", // latencies
		"segedge_origin_consumer_lag_messages",                                       // consumer lag per partition
		"segedge_edge_cache_requests_total",                                          // req/s and hit ratio
		"segedge_edge_eval_duration_seconds", "segedge_edge_splice_duration_seconds", // eval and splice
		"segedge_edge_replica_lag_messages", "segedge_edge_replica_users", // replica lag and size
		"segedge_wasm_eval_failures_total",                               // sandbox errors
		"segedge_origin_triggers_fired_total",                            // triggers fired
		"segedge_origin_webhook_deliveries_total",                        // retried, dead-lettered
		"segedge_origin_ruleset_version", "segedge_edge_ruleset_version", // version per instance
	} {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
	for _, want := range []string{"histogram_quantile(0.5, sum by (le) (rate(segedge_origin_ingest_to_delta_seconds_bucket",
		"histogram_quantile(0.99, sum by (le) (rate(segedge_edge_event_to_replica_seconds_bucket",
		"max by (partition) (segedge_origin_consumer_lag_messages)"} {
		found := false
		for _, p := range panels {
			for _, tg := range p.Targets {
				found = found || strings.Contains(tg.Expr, want)
			}
		}
		if !found {
			t.Errorf("no query %s…", want)
		}
	}
	// promtool parses every expression (as recording rules), with Grafana's variables filled in.
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for _, p := range panels {
		for _, tg := range p.Targets {
			expr := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m").Replace(tg.Expr)
			q, _ := json.Marshal(expr)
			fmt.Fprintf(&rules, "      - record: dashboard:panel%d:%s\n        expr: %s\n", p.ID, tg.RefID, q)
		}
	}
	path := filepath.Join(t.TempDir(), "dashboard_rules.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, "check", "rules", path)
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type ruleTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		AlertRuleTest []struct {
			EvalTime  string           `yaml:"eval_time"`
			Alertname string           `yaml:"alertname"`
			ExpAlerts []map[string]any `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// The alerting rules name only exported metrics, cover what the issue lists, carry a severity
// and a summary, and each alert has a unit test where it fires; promtool checks and runs them.
func TestAlertRules(t *testing.T) {
	families := documentedMetrics(t)
	b, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	tb, err := os.ReadFile("prometheus/alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rt ruleTests
	if err := yaml.Unmarshal(tb, &rt); err != nil {
		t.Fatalf("alerts_test.yml: %v", err)
	}
	fires := map[string]bool{}
	for _, tc := range rt.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	used := map[string]bool{}
	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			where := fmt.Sprintf("group %s alert %s", g.Name, r.Alert)
			if r.Alert == "" {
				t.Errorf("%s: a rule that is not an alert", where)
				continue
			}
			alerts[r.Alert] = true
			checkExpr(t, where, r.Expr, families, used)
			if s := r.Labels["severity"]; s != "page" && s != "ticket" {
				t.Errorf("%s: severity %q, want page or ticket", where, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: summary and description are needed", where)
			}
			if !fires[r.Alert] {
				t.Errorf("%s: no unit test in alerts_test.yml where it fires", where)
			}
		}
	}
	for _, want := range []string{
		"SegedgeEventToEdgeLatencyHigh", "SegedgeIngestToDeltaLatencyHigh", // latency spike
		"SegedgeConsumerLagGrowing",       // growing lag
		"SegedgeProfileUpdatesFailing",    // failed profile updates
		"SegedgeWebhookDeadLetters",       // webhook dead letters
		"SegedgeEdgeOnOldRuleset",         // an edge on an old ruleset
		"SegedgeEdgeDisconnectedFromNATS", // or disconnected from NATS
	} {
		if !alerts[want] {
			t.Errorf("no alert %s", want)
		}
	}
	promtool(t, "check", "rules", "prometheus/alerts.yml")
	promtool(t, "test", "rules", "prometheus/alerts_test.yml")
}

// promtool runs Prometheus's promtool (Debian's prometheus package; .ci/run installs it). Without
// it the check is skipped, unless SEGEDGE_REQUIRE_SERVICES=1.
func promtool(t *testing.T, args ...string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("SEGEDGE_REQUIRE_SERVICES") == "1" {
			t.Fatal("promtool not found (apt-get install prometheus) and SEGEDGE_REQUIRE_SERVICES=1")
		}
		t.Skip("promtool not found (apt-get install prometheus); the rules were not checked by Prometheus")
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
}
