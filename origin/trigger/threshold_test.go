package trigger

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/testenv"
)

const thresholdRules = `
segments:
  - name: cart_abandoner
    rule: count("add_to_cart", "30m") > 0
scores:
  engagement: {half_life: 7d, weights: {page_view: 1, add_to_cart: 5}}
triggers:
  - name: cart
    on: enter("cart_abandoner")
    webhook: https://hooks.example.com/cart
  - name: engaged
    on: score("engagement") > 10.0
    webhook: https://hooks.example.com/engaged
  - name: busy_cart
    on: count("add_to_cart", "1h") >= 2 && segment("cart_abandoner")
    webhook: https://hooks.example.com/busy
`

// profileAfter applies evs (type, seconds after t0) to a new profile with spec.
func profileAfter(spec *profile.Spec, t0 time.Time, evs ...string) *profile.Profile {
	p := profile.New("u1")
	for i, typ := range evs {
		ts := t0.Add(time.Duration(i) * time.Second)
		p.Apply(spec.Plan(event.Event{ID: typ + string(rune('a'+i)), UserID: "u1", Type: typ, TS: ts}, ts))
	}
	return p
}

func TestThresholdExpressionsAreEvaluated(t *testing.T) {
	n := testenv.StartNATS(t)
	f := newFirer(t, n, nil)
	if err := f.SetRulesFile([]byte(thresholdRules)); err != nil {
		t.Fatal(err)
	}
	if got := f.Triggers(); len(got) != 3 || got[1].On != Threshold || got[1].Expr != `score("engagement") > 10.0` {
		t.Fatalf("triggers = %+v", got)
	}
	spec := f.ThresholdSpec()
	if spec == nil {
		t.Fatal("no spec for the threshold expressions")
	}
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		evs  []string
		at   time.Duration
		want []string
	}{
		{"nothing", nil, 0, nil},
		{"views only", []string{"page_view", "page_view"}, 2 * time.Second, nil},
		{"one cart, engagement 11", []string{"page_view", "page_view", "page_view", "page_view", "page_view", "page_view", "add_to_cart"}, 7 * time.Second, []string{"engaged"}},
		{"two carts: both", []string{"add_to_cart", "add_to_cart", "page_view"}, 3 * time.Second, []string{"busy_cart", "engaged"}},
		{"two carts an hour ago: decayed a little, cart window over", []string{"add_to_cart", "add_to_cart", "page_view"}, 2 * time.Hour, []string{"engaged"}},
		{"two carts four weeks ago: all decayed", []string{"add_to_cart", "add_to_cart", "page_view"}, 28 * 24 * time.Hour, nil},
	} {
		p := profileAfter(spec, t0, tc.evs...)
		if got := f.Thresholds(p, t0.Add(tc.at), nil); !slices.Equal(got, tc.want) {
			t.Errorf("%s: thresholds holding = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFireThresholdsPublishesSignedPayloadFields(t *testing.T) {
	n := testenv.StartNATS(t)
	reg := prometheus.NewRegistry()
	f := newFirer(t, n, reg)
	if err := f.SetRulesFile([]byte(thresholdRules)); err != nil {
		t.Fatal(err)
	}
	d := &delta.Delta{UserID: "u9", Version: 4, Ruleset: 2, Members: []string{"cart_abandoner"}, AcceptedAt: time.Now().UnixMilli()}
	for range 2 { // a redelivery fires the same ids: stored once
		if err := f.FireThresholds(context.Background(), d, []string{"engaged", "busy_cart", "no_such_trigger"}); err != nil {
			t.Fatal(err)
		}
	}
	got := firings(t, n)
	if ids(got) != "engaged/u9/4 busy_cart/u9/4" {
		t.Fatalf("firings = %q", ids(got))
	}
	e := got[0].event
	if e.Type != TypeThreshold || e.Data.Condition != `score("engagement") > 10.0` || e.Data.Segment != "" ||
		e.Data.Version != 4 || e.Data.Ruleset != 2 || !slices.Equal(e.Data.Members, d.Members) || got[0].webhook != "https://hooks.example.com/engaged" {
		t.Fatalf("firing = %+v (webhook %s)", e, got[0].webhook)
	}
	if v := testutil.ToFloat64(f.fired.WithLabelValues("engaged")); v != 1 {
		t.Errorf("fired{engaged} = %v, want 1", v)
	}
	// Erasure deltas fire nothing.
	if err := f.FireThresholds(context.Background(), &delta.Delta{UserID: "u9", Version: 5, Erased: true}, []string{"engaged"}); err != nil {
		t.Fatal(err)
	}
	if len(firings(t, n)) != 2 {
		t.Fatal("an erasure fired a threshold trigger")
	}
}

func TestSetRulesFileRejectsBadThresholds(t *testing.T) {
	n := testenv.StartNATS(t)
	f := newFirer(t, n, nil)
	if err := f.SetRulesFile([]byte(thresholdRules)); err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string]string{
		"reads the request": strings.Replace(thresholdRules, `score("engagement") > 10.0`, `request.device == "mobile"`, 1),
		"not boolean":       strings.Replace(thresholdRules, `score("engagement") > 10.0`, `score("engagement")`, 1),
		"unknown score":     strings.Replace(thresholdRules, `score("engagement") > 10.0`, `score("nope") > 1.0`, 1),
		"no webhook":        strings.Replace(thresholdRules, "    webhook: https://hooks.example.com/engaged\n", "", 1),
	} {
		if err := f.SetRulesFile([]byte(src)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if got := f.Triggers(); len(got) != 3 {
		t.Fatalf("after rejected files, triggers = %+v", got)
	}
	if err := f.SetTriggers([]Trigger{{Name: "x", On: Threshold, Expr: "true", Webhook: hook}}); err == nil {
		t.Error("SetTriggers took a threshold trigger without its rules file")
	}
	// A file without thresholds has no threshold spec.
	if err := f.SetRulesFile([]byte("segments:\n  - name: a\n    rule: count(\"x\", \"1h\") > 0\n")); err != nil {
		t.Fatal(err)
	}
	if f.ThresholdSpec() != nil || len(f.Thresholds(profile.New("u"), time.Now(), nil)) != 0 {
		t.Error("thresholds left over from the previous file")
	}
}
