package profile

import (
	"fmt"
	"testing"
	"time"
)

// TestNextExpiryOfSinceAndScoreMarks: with no new event, since() reaches a mark at last + k s
// and a score crosses a mark when it decays past it; NextExpiry returns the earliest such
// instant ahead of now, and the value read at that instant is already on the other side.
func TestNextExpiryOfSinceAndScoreMarks(t *testing.T) {
	hour := time.Hour
	scores := map[string]ScoreSpec{"engagement": {HalfLife: hour, Weights: map[string]float64{"page_view": 100, "refund": -50}}}
	last := t0.Add(250 * time.Millisecond) // not on a whole second
	since := Feature{Kind: FeatureSince, Name: "page_view"}
	score := Feature{Kind: FeatureScore, Name: "engagement"}
	// crossingAt is when a score of v0 at last first reads strictly nearer 0 than m, found by
	// bisection over whole milliseconds with decay (what Value reads), not the closed form.
	crossingAt := func(v0, m float64) time.Time {
		lo, hi := time.Duration(0), 100*hour // 100*decay(lo) is not past m, 100*decay(hi) is
		for hi-lo > time.Millisecond {
			mid := (lo + hi) / 2 / time.Millisecond * time.Millisecond
			if abs(v0*decay(mid, hour)) < abs(m) {
				hi = mid
			} else {
				lo = mid
			}
		}
		return last.Add(hi)
	}
	crossing100At := func(m float64) time.Time { return crossingAt(100, m) }
	for _, tc := range []struct {
		name   string
		events []string // event types at last
		fs     []Feature
		marks  Marks
		now    time.Time
		want   time.Time // zero: nothing expires
		read   Feature   // the value that crosses at want
	}{
		{name: "since < 3600 turns false an hour after the event",
			events: []string{"page_view"}, marks: Marks{Since: map[string][]int64{"page_view": {3600}}},
			now: last.Add(10 * time.Minute), want: last.Add(3600 * time.Second), read: since},
		{name: "since <= 3600 turns false a second later (mark 3601)",
			events: []string{"page_view"}, marks: Marks{Since: map[string][]int64{"page_view": {3601}}},
			now: last, want: last.Add(3601 * time.Second), read: since},
		{name: "a mark already reached is not scheduled again",
			events: []string{"page_view"}, marks: Marks{Since: map[string][]int64{"page_view": {3600}}},
			now: last.Add(3600 * time.Second)},
		{name: "the first mark still ahead",
			events: []string{"page_view"}, marks: Marks{Since: map[string][]int64{"page_view": {60, 3600, 2592000}}},
			now: last.Add(2 * time.Minute), want: last.Add(3600 * time.Second), read: since},
		{name: "since() of a type never seen changes nothing",
			events: []string{"page_view"}, marks: Marks{Since: map[string][]int64{"purchase": {60}}},
			now: last},
		{name: "score > 80 turns false when the score decays below 80",
			events: []string{"page_view"}, marks: Marks{Score: map[string][]float64{"engagement": {80}}},
			now: last, want: crossing100At(80), read: score},
		{name: "score < 10 turns true when it decays below 10, after the mark at 80",
			events: []string{"page_view"}, marks: Marks{Score: map[string][]float64{"engagement": {10, 80}}},
			now: crossing100At(80), want: crossing100At(10), read: score},
		{name: "of several marks the one nearest the score is crossed first",
			events: []string{"page_view"}, marks: Marks{Score: map[string][]float64{"engagement": {-20, 10, 50, 80, 150}}},
			now: last, want: crossing100At(80), read: score},
		{name: "of several negative marks the one nearest the score is crossed first",
			events: []string{"refund"}, marks: Marks{Score: map[string][]float64{"engagement": {-60, -40, -10, 10}}},
			now: last, want: crossingAt(-50, -40), read: score},
		{name: "a mark above the score is never crossed by decay",
			events: []string{"page_view"}, marks: Marks{Score: map[string][]float64{"engagement": {150, -5}}},
			now: last},
		{name: "a negative score crosses a negative mark nearer 0",
			events: []string{"refund"}, marks: Marks{Score: map[string][]float64{"engagement": {-10, 10}}},
			now: last, want: crossingAt(-50, -10), read: score},
		{name: "the earliest of a window, a since() mark and a score mark",
			events: []string{"page_view"}, fs: []Feature{count("page_view", 30*time.Minute)},
			marks: Marks{Since: map[string][]int64{"page_view": {3600}}, Score: map[string][]float64{"engagement": {80}}},
			now:   last, want: crossing100At(80), read: score},
		{name: "the window when it comes first",
			events: []string{"page_view"}, fs: []Feature{count("page_view", 10*time.Minute)},
			marks: Marks{Since: map[string][]int64{"page_view": {3600}}, Score: map[string][]float64{"engagement": {80}}},
			now:   last, want: t0.Add(10*time.Minute + 10*time.Second), read: count("page_view", 10*time.Minute)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := NewSpec(tc.fs, scores, tc.marks)
			if err != nil {
				t.Fatal(err)
			}
			p := New("u")
			for i, typ := range tc.events {
				apply(p, spec, fmt.Sprint(i), typ, last, nil)
			}
			got, ok := p.NextExpiry(spec, tc.now)
			if tc.want.IsZero() {
				if ok {
					t.Fatalf("NextExpiry = %v, want none", got)
				}
				return
			}
			if !ok || !got.Equal(tc.want) {
				t.Fatalf("NextExpiry = %v, %v; want %v (+%s after the event)", got, ok, tc.want, tc.want.Sub(last))
			}
			// The value read at the due instant has crossed; a millisecond before, it had not.
			before, _ := p.Value(tc.read, got.Add(-time.Millisecond))
			at, _ := p.Value(tc.read, got)
			if before == at {
				t.Errorf("%v reads %v both a millisecond before and at the due time", tc.read, at)
			}
		})
	}
}

// TestScoreCrossingIsNeverEarly: for many stored values and marks, the score read at the
// scheduled instant is strictly nearer 0 than the mark, and a millisecond earlier it is not.
func TestScoreCrossingIsNeverEarly(t *testing.T) {
	for _, hl := range []time.Duration{time.Minute, time.Hour, 7 * 24 * time.Hour, 90 * 24 * time.Hour} {
		for _, v0 := range []float64{1, 3, 100, 1e6, -7.5} {
			for _, frac := range []float64{0.999, 0.9, 0.5, 0.25, 0.1, 1e-3} {
				m := v0 * frac
				sc := Score{Value: v0, AsOf: t0, HalfLife: hl}
				at, ok := scoreCrossing(sc, m)
				if !ok {
					t.Errorf("v0 %v half-life %s mark %v: no crossing", v0, hl, m)
					continue
				}
				p := &Profile{Scores: map[string]Score{"s": sc}}
				f := Feature{Kind: FeatureScore, Name: "s"}
				vAt, _ := p.Value(f, time.UnixMilli(at))
				vBefore, _ := p.Value(f, time.UnixMilli(at-1))
				if !(abs(vAt.Double) < abs(m)) || abs(vBefore.Double) < abs(m) {
					t.Errorf("v0 %v half-life %s mark %v: at +%dms the score is %v, a millisecond before %v",
						v0, hl, m, at-t0.UnixMilli(), vAt.Double, vBefore.Double)
				}
			}
		}
	}
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

func TestNewSpecRejectsBadMarks(t *testing.T) {
	scores := map[string]ScoreSpec{"s": {HalfLife: time.Hour}}
	for _, m := range []Marks{
		{Since: map[string][]int64{"a": {0}}},
		{Since: map[string][]int64{"a": {-60}}},
		{Score: map[string][]float64{"unknown": {1}}},
		{Score: map[string][]float64{"s": {0}}},
	} {
		if _, err := NewSpec(nil, scores, m); err == nil {
			t.Errorf("NewSpec accepted marks %+v", m)
		}
	}
}

func TestNextExpiryDoesNotAllocate(t *testing.T) {
	spec := expirySpec(t, true)
	p := expiryProfile(t, spec)
	now := t0.Add(time.Hour)
	if _, ok := p.NextExpiry(spec, now); !ok {
		t.Fatal("nothing expires")
	}
	if n := testing.AllocsPerRun(100, func() { p.NextExpiry(spec, now) }); n != 0 {
		t.Errorf("NextExpiry allocates %v times", n)
	}
}

// expiryProfile is a profile with a few counted, summed, seen and scored event types, for the
// NextExpiry benchmark (the engine calls NextExpiry after every evaluation).
func expiryProfile(tb testing.TB, spec *Spec) *Profile {
	tb.Helper()
	p := New("u")
	for i := range 50 {
		ts := t0.Add(time.Duration(i) * 30 * time.Second)
		apply(p, spec, "e", "page_view", ts, map[string]any{"ms": 120.0})
		apply(p, spec, "e", "add_to_cart", ts, nil)
	}
	apply(p, spec, "e", "purchase", t0, nil)
	return p
}

// expirySpec is the benchmark's spec, with time marks or without (windows only).
func expirySpec(tb testing.TB, marks bool) *Spec {
	tb.Helper()
	fs := []Feature{count("page_view", 30*time.Minute), count("page_view", 7*24*time.Hour),
		count("add_to_cart", 30*time.Minute), sum("page_view", "ms", time.Hour)}
	scores := map[string]ScoreSpec{"engagement": {HalfLife: 7 * 24 * time.Hour, Weights: map[string]float64{"page_view": 1, "add_to_cart": 5}}}
	var ms []Marks
	if marks {
		ms = append(ms, Marks{
			Since: map[string][]int64{"page_view": {3600}, "purchase": {2592001}, "search": {60}},
			Score: map[string][]float64{"engagement": {10, 80, 200}},
		})
	}
	spec, err := NewSpec(fs, scores, ms...)
	if err != nil {
		tb.Fatal(err)
	}
	return spec
}

func BenchmarkNextExpiry(b *testing.B) {
	for _, marks := range []bool{false, true} {
		name := "windows"
		if marks {
			name = "windows+marks"
		}
		b.Run(name, func(b *testing.B) {
			spec := expirySpec(b, marks)
			p := expiryProfile(b, spec)
			now := t0.Add(time.Hour)
			b.ReportAllocs()
			for b.Loop() {
				p.NextExpiry(spec, now)
			}
		})
	}
}

// A score standing exactly at a mark (one event of weight 80, a rule score >= 80) leaves it as
// soon as it decays: 1 ms later.
func TestAScoreExactlyAtAMarkIsDueAMillisecondLater(t *testing.T) {
	scores := map[string]ScoreSpec{"engagement": {HalfLife: time.Hour, Weights: map[string]float64{"page_view": 80}}}
	fs := []Feature{{Kind: FeatureScore, Name: "engagement"}}
	spec, err := NewSpec(fs, scores, Marks{Score: map[string][]float64{"engagement": {80}}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(1_700_000_000_000).UTC()
	p := &Profile{UserID: "u", Scores: map[string]Score{"engagement": {Value: 80, AsOf: now, HalfLife: time.Hour}}}
	at, ok := p.NextExpiry(spec, now)
	if want := now.Add(time.Millisecond); !ok || !at.Equal(want) {
		t.Fatalf("NextExpiry = %v, %v; want %v", at, ok, want)
	}
	if v, _ := p.Value(fs[0], at); !(v.Double < 80) {
		t.Fatalf("at the due time the score is %v, not below the mark", v.Double)
	}
}
