package profile

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Bucket sizes. A windowed count or sum is kept in time buckets whose size depends on the
// window (BucketSize), so a profile holds at most a few hundred buckets per series whatever the
// window:
//
//	window ≤ 10m  → 10-second buckets
//	window ≤ 2h   → 1-minute buckets
//	window ≤ 7d   → 1-hour buckets
//	longer        → 1-day buckets (90 for the default 90-day retention)
//
// Granularity error: a window boundary is bucket-aligned. count(type, W) at time now counts every
// bucket that overlaps (now-W, now], so an event is counted for at least W and at most W plus one
// bucket after it happened: count("add_to_cart", "30m") drops an event between 30 and 31
// minutes after it. Windows never undercount. NextExpiry returns exactly that drop time.
const (
	Bucket10s = 10 * time.Second
	Bucket1m  = time.Minute
	Bucket1h  = time.Hour
	Bucket1d  = 24 * time.Hour
)

// BucketSize returns the bucket size used for a trailing window (see the table above).
func BucketSize(window time.Duration) time.Duration {
	switch {
	case window <= 10*time.Minute:
		return Bucket10s
	case window <= 2*time.Hour:
		return Bucket1m
	case window <= 7*24*time.Hour:
		return Bucket1h
	default:
		return Bucket1d
	}
}

// TraitEventType is the event type whose props set traits: every prop of an "identify" event
// becomes the trait of that name (a null prop deletes the trait). Traits are last-writer-wins by
// event ts, so an identify that arrives late does not overwrite a newer one.
const TraitEventType = "identify"

// ScoreSpec configures one exponentially decayed score: every event of a type with a weight w
// adds w, and the sum halves every HalfLife: score(t) = Σ w·2^(-(t - t_e)/HalfLife).
type ScoreSpec struct {
	HalfLife time.Duration
	Weights  map[string]float64 // event type → weight
}

// SumKey names a summed prop of an event type.
type SumKey struct{ Type, Prop string }

// Spec says what profiles maintain beyond traits and last-seen (which are always kept): the
// windows read by count() per event type, the windows read by sum() per (type, prop), and the
// scores. The origin derives it from the active ruleset's features with NewSpec. A Spec must not
// be modified after first use; it is safe for concurrent use.
type Spec struct {
	Counts map[string][]time.Duration
	Sums   map[SumKey][]time.Duration
	Scores map[string]ScoreSpec
	// SinceMarks and ScoreMarks are the time marks NextExpiry schedules re-evaluations at (see
	// Marks), sorted and without duplicates.
	SinceMarks map[string][]int64
	ScoreMarks map[string][]float64

	once  sync.Once
	plans map[string]*typePlan
}

// Marks are the values of since() and score() at which a segment rule can change its answer
// with no new event: the constants rules compare them with (rules.Manifest.TimeMarks lists
// them). NextExpiry returns the instant a profile's value reaches one, so the origin re-evaluates
// the user then, as it does when a window drops an event.
//
//   - Since: event type → whole seconds k since the type's last event such that some rule's
//     comparison answers differently at since() = k than at k−1 (since("page_view") < 3600 and
//     >= 3600 give 3600; <= 3600 and > 3600 give 3601). The value reaches k at last + k s.
//   - Score: score name → the constants M the score is compared with. A score decays towards 0,
//     so it crosses M once, when |value| falls below |M| (M of the value's sign, nearer 0).
type Marks struct {
	Since map[string][]int64
	Score map[string][]float64
}

// maxSinceMark is the largest since() mark, in seconds: the longest time.Duration.
const maxSinceMark = math.MaxInt64 / int64(time.Second)

// NewSpec builds the Spec for a set of features and the configured scores. A score feature
// must name one of scores; a score feature without one is an error, as is a non-positive window or half-life.
// marks (their union, when several) are the time marks NextExpiry schedules; a since() mark
// must be positive and at most maxSinceMark seconds, a score mark must name a configured score
// and be finite and non-zero.
func NewSpec(features []Feature, scores map[string]ScoreSpec, marks ...Marks) (*Spec, error) {
	s := &Spec{Counts: map[string][]time.Duration{}, Sums: map[SumKey][]time.Duration{}, Scores: map[string]ScoreSpec{}}
	for _, f := range features {
		switch f.Kind {
		case FeatureCount:
			if f.Window <= 0 {
				return nil, fmt.Errorf("count(%q): window must be positive, got %s", f.Name, f.Window)
			}
			if !slices.Contains(s.Counts[f.Name], f.Window) {
				s.Counts[f.Name] = append(s.Counts[f.Name], f.Window)
			}
		case FeatureSum:
			if f.Window <= 0 {
				return nil, fmt.Errorf("sum(%q, %q): window must be positive, got %s", f.Name, f.Prop, f.Window)
			}
			k := SumKey{f.Name, f.Prop}
			if !slices.Contains(s.Sums[k], f.Window) {
				s.Sums[k] = append(s.Sums[k], f.Window)
			}
		case FeatureScore:
			if _, ok := scores[f.Name]; !ok {
				return nil, fmt.Errorf("score(%q): no score of that name is configured", f.Name)
			}
		}
	}
	// Every configured score is maintained, read by a rule or not: they are cheap, and the users
	// API shows them.
	for name, sc := range scores {
		if sc.HalfLife <= 0 {
			return nil, fmt.Errorf("score %q: half_life must be positive, got %s", name, sc.HalfLife)
		}
		s.Scores[name] = sc
	}
	for _, m := range marks {
		for typ, ks := range m.Since {
			for _, k := range ks {
				if k <= 0 || k > maxSinceMark {
					return nil, fmt.Errorf("since(%q): time mark %d s out of range (1..%d)", typ, k, maxSinceMark)
				}
				if s.SinceMarks == nil {
					s.SinceMarks = map[string][]int64{}
				}
				s.SinceMarks[typ] = append(s.SinceMarks[typ], k)
			}
		}
		for name, ms := range m.Score {
			if _, ok := scores[name]; !ok && len(ms) > 0 {
				return nil, fmt.Errorf("score(%q): time mark for a score that is not configured", name)
			}
			for _, v := range ms {
				if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
					return nil, fmt.Errorf("score(%q): time mark %v is not a finite non-zero number", name, v)
				}
				if s.ScoreMarks == nil {
					s.ScoreMarks = map[string][]float64{}
				}
				s.ScoreMarks[name] = append(s.ScoreMarks[name], v)
			}
		}
	}
	for typ, ks := range s.SinceMarks {
		slices.Sort(ks)
		s.SinceMarks[typ] = slices.Compact(ks)
	}
	for name, ms := range s.ScoreMarks {
		slices.Sort(ms)
		s.ScoreMarks[name] = slices.Compact(ms)
	}
	return s, nil
}

// SeriesKey names one bucketed series of a profile: the count of Type (Prop == "") or the sum of
// Prop over events of Type, in buckets of Res. Its text form ("n:<res ms>:<type>" or
// "s:<res ms>:<type>:<prop>") is used as a JSON map key and as the Redis hash field.
type SeriesKey struct {
	Type, Prop string
	Res        time.Duration
}

func (k SeriesKey) String() string {
	ms := strconv.FormatInt(k.Res.Milliseconds(), 10)
	if k.Prop == "" {
		return "n:" + ms + ":" + k.Type
	}
	return "s:" + ms + ":" + k.Type + ":" + k.Prop
}

// MarshalText implements encoding.TextMarshaler.
func (k SeriesKey) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *SeriesKey) UnmarshalText(b []byte) error {
	p, err := ParseSeriesKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// ParseSeriesKey parses the text form of a SeriesKey.
func ParseSeriesKey(s string) (SeriesKey, error) {
	parts := strings.SplitN(s, ":", 4)
	if len(parts) < 3 || (parts[0] == "n") != (len(parts) == 3) || (parts[0] != "n" && parts[0] != "s") {
		return SeriesKey{}, fmt.Errorf("parse series key %q: want n:<ms>:<type> or s:<ms>:<type>:<prop>", s)
	}
	ms, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || ms <= 0 {
		return SeriesKey{}, fmt.Errorf("parse series key %q: bad bucket size", s)
	}
	k := SeriesKey{Type: parts[2], Res: time.Duration(ms) * time.Millisecond}
	if len(parts) == 4 {
		k.Prop = parts[3]
	}
	return k, nil
}

// seriesPlan is one series an event of some type updates, kept for Keep (its longest window).
type seriesPlan struct {
	key  SeriesKey
	keep time.Duration
}

type scorePlan struct {
	name     string
	weight   float64
	halfLife time.Duration
}

type typePlan struct {
	series []seriesPlan
	scores []scorePlan
}

// plan returns what an event of type typ updates (nil: only last-seen and version).
func (s *Spec) plan(typ string) *typePlan {
	s.once.Do(s.compile)
	return s.plans[typ]
}

func (s *Spec) compile() {
	s.plans = map[string]*typePlan{}
	get := func(typ string) *typePlan {
		p := s.plans[typ]
		if p == nil {
			p = &typePlan{}
			s.plans[typ] = p
		}
		return p
	}
	addSeries := func(typ string, key SeriesKey, window time.Duration) {
		p := get(typ)
		for i := range p.series {
			if p.series[i].key == key {
				p.series[i].keep = max(p.series[i].keep, window)
				return
			}
		}
		p.series = append(p.series, seriesPlan{key: key, keep: window})
	}
	for typ, windows := range s.Counts {
		for _, w := range windows {
			addSeries(typ, SeriesKey{Type: typ, Res: BucketSize(w)}, w)
		}
	}
	for k, windows := range s.Sums {
		for _, w := range windows {
			addSeries(k.Type, SeriesKey{Type: k.Type, Prop: k.Prop, Res: BucketSize(w)}, w)
		}
	}
	for name, sc := range s.Scores {
		for typ, w := range sc.Weights {
			if w != 0 && sc.HalfLife > 0 {
				p := get(typ)
				p.scores = append(p.scores, scorePlan{name: name, weight: w, halfLife: sc.HalfLife})
			}
		}
	}
	for _, p := range s.plans {
		slices.SortFunc(p.series, func(a, b seriesPlan) int { return strings.Compare(a.key.String(), b.key.String()) })
		slices.SortFunc(p.scores, func(a, b scorePlan) int { return strings.Compare(a.name, b.name) })
	}
}
