package engine

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/wasm"
	"github.com/segedge/segedge/wasm/ruleset"
)

// timeRules leaves memberships to since() and a decayed score alone: no window, so only the
// rules' time marks can bring the user's exits.
const timeRules = `
scores:
  engagement: {half_life: 1h, weights: {page_view: 100}}
segments:
  - name: engaged
    rule: score("engagement") > 80.0
  - name: recent_visitor
    rule: since("page_view") < 3600
`

// compiledRules is a rules file compiled and run in the sandbox, with its Spec built the way
// origin/rulesets builds it (features, scores and time marks of the manifest). origin/rulesets
// imports this package, so its Version cannot be used here.
type compiledRules struct {
	ev   *ruleset.Evaluator
	man  *rules.Manifest
	spec *profile.Spec
}

func newCompiledRules(t *testing.T, src string) *compiledRules {
	t.Helper()
	ctx := context.Background()
	f, err := rules.Parse("rules.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := rules.Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) })
	ev, err := ruleset.Load(ctx, rt, "time-rules", rs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ev.Close)
	m := &rs.Manifest
	spec, err := profile.NewSpec(m.Features(), m.ScoreSpecs(), m.TimeMarks())
	if err != nil {
		t.Fatal(err)
	}
	return &compiledRules{ev: ev, man: m, spec: spec}
}

func (r *compiledRules) Version() uint64                 { return 3 }
func (r *compiledRules) Spec() *profile.Spec             { return r.spec }
func (r *compiledRules) EdgeFeatures() []profile.Feature { return nil }
func (r *compiledRules) Segments(ctx context.Context, p *profile.Profile, now time.Time, dst []string) ([]string, error) {
	res := r.man.NewResult()
	if err := r.ev.Evaluate(ctx, p, nil, now, res); err != nil {
		return dst, err
	}
	for i, s := range r.man.Segments {
		if !s.NeedsRequest && res.IsMember(i) {
			dst = append(dst, s.Name)
		}
	}
	slices.Sort(dst)
	return dst, nil
}

// TestSinceAndScoreExitsAreScheduled: after one page view (score 100, half-life 1h) the user
// is engaged (score > 80) and a recent visitor (since < 3600 s). With no further event she
// leaves engaged when the score decays below 80 (1h·log2(100/80) ≈ 19m19s later) and
// recent_visitor exactly an hour after the view, each by an expiry delta due at that instant.
func TestSinceAndScoreExitsAreScheduled(t *testing.T) {
	cr := newCompiledRules(t, timeRules)
	r := newRigWithConfig(t, func(c *Config) { c.Rules = func() Rules { return cr } })
	t0 := r.clk.Now().Truncate(time.Millisecond) // profiles and Due keep milliseconds
	r.send(t, event.Event{ID: "v1", UserID: "alice", Type: "page_view", TS: t0})
	d := r.next(t)
	if d.Cause != delta.CauseEvent || !slices.Equal(d.Members, []string{"engaged", "recent_visitor"}) {
		t.Fatalf("first delta = %+v", d)
	}

	r.clk.Add(19 * time.Minute) // score 100·2^(-19/60) ≈ 80.3
	r.none(t, 300*time.Millisecond)
	r.clk.Add(time.Minute)
	d = r.next(t)
	if d.Cause != delta.CauseExpiry || !slices.Equal(d.Exited, []string{"engaged"}) || !slices.Equal(d.Members, []string{"recent_visitor"}) {
		t.Fatalf("delta after the score decayed = %+v", d)
	}
	if due := time.UnixMilli(d.Due).Sub(t0); due < 19*time.Minute+18*time.Second || due > 19*time.Minute+20*time.Second {
		t.Fatalf("score exit due at +%s, want when it falls below 80, +19m19s", due)
	}

	r.clk.Add(39 * time.Minute) // +59m
	r.none(t, 300*time.Millisecond)
	r.clk.Add(2 * time.Minute)
	d = r.next(t)
	if d.Cause != delta.CauseExpiry || !slices.Equal(d.Exited, []string{"recent_visitor"}) || len(d.Members) != 0 {
		t.Fatalf("delta after an hour without a page view = %+v", d)
	}
	if due := time.UnixMilli(d.Due); !due.Equal(t0.Add(time.Hour)) {
		t.Fatalf("since exit due at +%s, want +1h, when since() reads 3600", due.Sub(t0))
	}
	r.none(t, 300*time.Millisecond) // nothing else is due
}
