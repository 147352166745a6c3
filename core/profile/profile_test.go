package profile

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/segedge/segedge/core/event"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func count(typ string, w time.Duration) Feature {
	return Feature{Kind: FeatureCount, Name: typ, Window: w}
}
func sum(typ, prop string, w time.Duration) Feature {
	return Feature{Kind: FeatureSum, Name: typ, Prop: prop, Window: w}
}

func mustSpec(t *testing.T, fs []Feature, scores map[string]ScoreSpec) *Spec {
	t.Helper()
	s, err := NewSpec(fs, scores)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func apply(p *Profile, spec *Spec, id, typ string, ts time.Time, props map[string]any) {
	p.Apply(spec.Plan(event.Event{ID: id, UserID: p.UserID, Type: typ, TS: ts, Props: props}, ts))
}

func TestBucketSize(t *testing.T) {
	for _, tc := range []struct{ w, want time.Duration }{
		{time.Minute, 10 * time.Second}, {10 * time.Minute, 10 * time.Second}, {30 * time.Minute, time.Minute},
		{2 * time.Hour, time.Minute}, {24 * time.Hour, time.Hour}, {7 * 24 * time.Hour, time.Hour}, {30 * 24 * time.Hour, 24 * time.Hour},
	} {
		if got := BucketSize(tc.w); got != tc.want {
			t.Errorf("BucketSize(%s) = %s, want %s", tc.w, got, tc.want)
		}
	}
}

func TestCountWindowIsBucketAlignedAndNeverUndercounts(t *testing.T) {
	spec := mustSpec(t, []Feature{count("add_to_cart", 30*time.Minute)}, nil)
	p := New("u")
	at := t0.Add(20 * time.Second) // inside the 12:00 one-minute bucket
	apply(p, spec, "e1", "add_to_cart", at, nil)
	tests := []struct {
		now  time.Time
		want int64
	}{
		{at, 1},
		{at.Add(29 * time.Minute), 1},
		{at.Add(30 * time.Minute), 1}, // 12:30:20: the 12:00 bucket still overlaps (12:00:20, 12:30:20]
		{t0.Add(31*time.Minute - time.Millisecond), 1}, // last instant the bucket overlaps
		{t0.Add(31 * time.Minute), 0},                  // bucket end + window
		{at.Add(-time.Hour), 1},                        // events ahead of now (clock skew) count
	}
	for _, tc := range tests {
		v, ok := p.Value(count("add_to_cart", 30*time.Minute), tc.now)
		if !ok || v.Kind != KindInt || v.Int != tc.want {
			t.Errorf("count at %s = %v, %v; want %d", tc.now.Format(time.TimeOnly), v, ok, tc.want)
		}
	}
	exp, ok := p.NextExpiry(spec, at)
	if !ok || !exp.Equal(t0.Add(31*time.Minute)) {
		t.Errorf("NextExpiry = %v, %v; want 12:31:00", exp, ok)
	}
	if _, ok := p.NextExpiry(spec, t0.Add(31*time.Minute)); ok {
		t.Error("NextExpiry after the last event left the window still reports a time")
	}
}

func TestSeveralWindowsAndSums(t *testing.T) {
	spec := mustSpec(t, []Feature{
		count("purchase", 10*time.Minute), count("purchase", 7*24*time.Hour),
		sum("purchase", "amount", 7*24*time.Hour), sum("purchase", "amount", time.Hour),
	}, nil)
	p := New("u")
	apply(p, spec, "a", "purchase", t0.Add(-3*24*time.Hour), map[string]any{"amount": 100.0})
	apply(p, spec, "b", "purchase", t0.Add(-30*time.Minute), map[string]any{"amount": 20.5})
	apply(p, spec, "c", "purchase", t0.Add(-time.Minute), map[string]any{"amount": "not a number"})
	apply(p, spec, "d", "purchase", t0, map[string]any{})
	tests := []struct {
		f    Feature
		want Value
	}{
		{count("purchase", 10*time.Minute), IntValue(2)},
		{count("purchase", 7*24*time.Hour), IntValue(4)},
		{sum("purchase", "amount", 7*24*time.Hour), DoubleValue(120.5)},
		{sum("purchase", "amount", time.Hour), DoubleValue(20.5)},
		{count("page_view", time.Hour), IntValue(0)},
		{sum("purchase", "tax", time.Hour), DoubleValue(0)},
	}
	for _, tc := range tests {
		if got, ok := p.Value(tc.f, t0); !ok || got != tc.want {
			t.Errorf("%+v = %v, %v; want %v", tc.f, got, ok, tc.want)
		}
	}
	if p.Version != 4 {
		t.Errorf("version = %d, want 4", p.Version)
	}
}

func TestOldBucketsArePrunedAndTooOldEventsSkipped(t *testing.T) {
	spec := mustSpec(t, []Feature{count("page_view", 10*time.Minute)}, nil)
	p := New("u")
	apply(p, spec, "a", "page_view", t0, nil)
	// An event 11 minutes later prunes the first bucket.
	p.Apply(spec.Plan(event.Event{ID: "b", Type: "page_view", TS: t0.Add(11 * time.Minute)}, t0.Add(11*time.Minute)))
	// An event far older than the window only updates last-seen and version.
	p.Apply(spec.Plan(event.Event{ID: "c", Type: "page_view", TS: t0.Add(-time.Hour)}, t0.Add(11*time.Minute)))
	s := p.Series[SeriesKey{Type: "page_view", Res: 10 * time.Second}]
	if len(s.Buckets) != 1 || s.Buckets[0].V != 1 {
		t.Fatalf("buckets = %+v, want only the 12:11 bucket", s.Buckets)
	}
	if p.Version != 3 || !p.LastSeen["page_view"].Equal(t0.Add(11*time.Minute)) {
		t.Errorf("version %d, last seen %v", p.Version, p.LastSeen)
	}
}

func TestSinceKeepsTheLatestEvent(t *testing.T) {
	p := New("u")
	apply(p, nil, "a", "page_view", t0, nil)
	apply(p, nil, "b", "page_view", t0.Add(-time.Hour), nil) // out of order
	if v, ok := p.Value(Feature{Kind: FeatureSince, Name: "page_view"}, t0.Add(90*time.Second)); !ok || v != IntValue(90) {
		t.Errorf("since = %v, %v; want 90", v, ok)
	}
	if _, ok := p.Value(Feature{Kind: FeatureSince, Name: "purchase"}, t0); ok {
		t.Error("since of a never-seen type is present")
	}
}

func TestScoresDecayOnReadAndAcceptOutOfOrderEvents(t *testing.T) {
	week := 7 * 24 * time.Hour
	scores := map[string]ScoreSpec{"engagement": {HalfLife: week, Weights: map[string]float64{"page_view": 1, "purchase": 20}}}
	spec := mustSpec(t, []Feature{{Kind: FeatureScore, Name: "engagement"}}, scores)
	f := Feature{Kind: FeatureScore, Name: "engagement"}

	inOrder, outOfOrder := New("a"), New("b")
	apply(inOrder, spec, "1", "purchase", t0, nil)
	apply(inOrder, spec, "2", "page_view", t0.Add(week), nil)
	apply(outOfOrder, spec, "2", "page_view", t0.Add(week), nil)
	apply(outOfOrder, spec, "1", "purchase", t0, nil)

	for _, p := range []*Profile{inOrder, outOfOrder} {
		for _, tc := range []struct {
			now  time.Time
			want float64
		}{
			{t0.Add(week), 20.0/2 + 1},
			{t0.Add(2 * week), (20.0/2 + 1) / 2},
		} {
			v, ok := p.Value(f, tc.now)
			if !ok || v.Kind != KindDouble || math.Abs(v.Double-tc.want) > 1e-9 {
				t.Errorf("profile %s: score at %s = %v, want %v", p.UserID, tc.now, v, tc.want)
			}
		}
	}
	if v, _ := New("c").Value(f, t0); v != DoubleValue(0) {
		t.Errorf("an unscored profile's score = %v, want 0", v)
	}
}

func TestTraitsAreLastWriterWinsByTS(t *testing.T) {
	p := New("u")
	apply(p, nil, "a", "identify", t0, map[string]any{"plan": "pro", "age": 42.0, "vip": true, "ratio": 0.5, "tags": []any{"x"}})
	apply(p, nil, "b", "identify", t0.Add(-time.Minute), map[string]any{"plan": "free"}) // older: ignored
	apply(p, nil, "c", "page_view", t0, map[string]any{"plan": "ignored"})               // not an identify
	apply(p, nil, "d", "identify", t0.Add(time.Minute), map[string]any{"vip": nil})      // delete
	apply(p, nil, "e", "identify", t0, map[string]any{"vip": true})                      // older than the delete
	tests := []struct {
		name string
		want Value
		ok   bool
	}{
		{"plan", StringValue("pro"), true},
		{"age", IntValue(42), true},
		{"ratio", DoubleValue(0.5), true},
		{"tags", StringValue(`["x"]`), true},
		{"vip", Value{}, false},
		{"missing", Value{}, false},
	}
	for _, tc := range tests {
		got, ok := p.Value(Feature{Kind: FeatureTrait, Name: tc.name}, t0)
		if ok != tc.ok || got != tc.want {
			t.Errorf("trait %q = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func TestNewSpecRejectsBadConfiguration(t *testing.T) {
	if _, err := NewSpec([]Feature{count("a", 0)}, nil); err == nil {
		t.Error("a zero window was accepted")
	}
	if _, err := NewSpec([]Feature{{Kind: FeatureScore, Name: "nope"}}, nil); err == nil {
		t.Error("an unconfigured score was accepted")
	}
	if _, err := NewSpec(nil, map[string]ScoreSpec{"s": {HalfLife: 0}}); err == nil {
		t.Error("a zero half-life was accepted")
	}
}

func TestSeriesKeyTextRoundTrip(t *testing.T) {
	for _, k := range []SeriesKey{{Type: "a", Res: time.Minute}, {Type: "purchase", Prop: "am:ount", Res: 24 * time.Hour}} {
		got, err := ParseSeriesKey(k.String())
		if err != nil || got != k {
			t.Errorf("ParseSeriesKey(%q) = %+v, %v", k.String(), got, err)
		}
	}
	for _, bad := range []string{"", "n:60000", "x:1:a", "n:0:a", "n:60000:a:b", "s:60000:a"} {
		if _, err := ParseSeriesKey(bad); err == nil {
			t.Errorf("ParseSeriesKey(%q) accepted", bad)
		}
	}
}

func TestProfileJSONRoundTrip(t *testing.T) {
	spec := mustSpec(t, []Feature{count("a", time.Hour), sum("a", "x", time.Hour)},
		map[string]ScoreSpec{"s": {HalfLife: time.Hour, Weights: map[string]float64{"a": 2}}})
	p := New("u")
	apply(p, spec, "1", "a", t0, map[string]any{"x": 1.5})
	apply(p, spec, "2", "identify", t0, map[string]any{"plan": "pro"})
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back Profile
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	for _, f := range []Feature{count("a", time.Hour), sum("a", "x", time.Hour), {Kind: FeatureScore, Name: "s"}, {Kind: FeatureTrait, Name: "plan"}} {
		v1, _ := p.Value(f, t0)
		v2, _ := back.Value(f, t0)
		if v1 != v2 {
			t.Errorf("%+v: %v before JSON, %v after", f, v1, v2)
		}
	}
}

func TestValueDoesNotAllocate(t *testing.T) {
	spec := mustSpec(t, []Feature{count("a", time.Hour)}, nil)
	p := New("u")
	apply(p, spec, "1", "a", t0, nil)
	f := count("a", time.Hour)
	if n := testing.AllocsPerRun(100, func() { p.Value(f, t0) }); n != 0 {
		t.Errorf("Value allocates %v times", n)
	}
}

func TestCloneIsIndependent(t *testing.T) {
	spec := mustSpec(t, []Feature{count("a", time.Hour)}, map[string]ScoreSpec{"s": {HalfLife: time.Hour, Weights: map[string]float64{"a": 1}}})
	p := New("u")
	apply(p, spec, "1", "a", t0, nil)
	apply(p, spec, "2", "identify", t0, map[string]any{"plan": "pro"})
	c := p.Clone()
	apply(c, spec, "3", "a", t0, nil)
	apply(c, spec, "4", "identify", t0.Add(time.Second), map[string]any{"plan": "free"})
	if v, _ := p.Value(count("a", time.Hour), t0); v != IntValue(1) {
		t.Errorf("original count = %v after applying to the clone, want 1", v)
	}
	if v, _ := p.Value(Feature{Kind: FeatureTrait, Name: "plan"}, t0); v != StringValue("pro") {
		t.Errorf("original trait = %v after applying to the clone", v)
	}
	if v, _ := p.Value(Feature{Kind: FeatureScore, Name: "s"}, t0); v != DoubleValue(1) {
		t.Errorf("original score = %v after applying to the clone", v)
	}
	if v, _ := c.Value(count("a", time.Hour), t0); v != IntValue(2) {
		t.Errorf("clone count = %v, want 2", v)
	}
}

func BenchmarkPlanAndApply(b *testing.B) {
	spec, _ := NewSpec([]Feature{count("page_view", 30*time.Minute), count("page_view", 7*24*time.Hour), sum("page_view", "ms", time.Hour)},
		map[string]ScoreSpec{"engagement": {HalfLife: 7 * 24 * time.Hour, Weights: map[string]float64{"page_view": 1}}})
	p := New("u")
	ev := event.Event{ID: "e", UserID: "u", Type: "page_view", Props: map[string]any{"ms": 120.0}}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		ev.TS = t0.Add(time.Duration(i) * time.Second)
		p.Apply(spec.Plan(ev, ev.TS))
	}
}

func BenchmarkValueCount30m(b *testing.B) {
	spec, _ := NewSpec([]Feature{count("page_view", 30*time.Minute)}, nil)
	p := New("u")
	for i := range 200 {
		apply(p, spec, "e", "page_view", t0.Add(time.Duration(i)*10*time.Second), nil)
	}
	f := count("page_view", 30*time.Minute)
	now := t0.Add(2000 * time.Second)
	b.ReportAllocs()
	for b.Loop() {
		p.Value(f, now)
	}
}
