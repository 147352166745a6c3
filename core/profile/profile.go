// Package profile is the profile model and its semantics, independent of where profiles are
// stored: what an event changes (Spec.Plan and Profile.Apply), and what a feature reads at a
// given time (Profile.Value). Stores (origin/store) persist the same state and must produce the
// same results; their conformance suite holds them to it.
package profile

import (
	"maps"
	"math"
	"slices"
	"time"

	"github.com/segedge/segedge/core/event"
)

// Profile is everything known about one user.
type Profile struct {
	UserID  string    `json:"user_id"`
	Version int64     `json:"version"` // incremented by every applied event
	Created time.Time `json:"created"` // server time of the first applied event
	Updated time.Time `json:"updated"` // server time of the last applied event
	// Traits set by identify events; a deleted trait stays as a tombstone (absent Value) so that a
	// late, older identify cannot bring it back.
	Traits   map[string]Trait      `json:"traits,omitempty"`
	LastSeen map[string]time.Time  `json:"last_seen,omitempty"` // event type → latest event ts
	Series   map[SeriesKey]*Series `json:"series,omitempty"`
	Scores   map[string]Score      `json:"scores,omitempty"`
}

// Trait is a trait value and the ts of the event that set it.
type Trait struct {
	Value Value     `json:"value"`
	TS    time.Time `json:"ts"`
}

// Series holds the non-empty buckets of one count or sum, oldest first.
type Series struct {
	Buckets []Bucket `json:"buckets"`
}

// Bucket is the count or sum of the events whose ts falls in [Idx·res, (Idx+1)·res) (Unix time).
type Bucket struct {
	Idx int64   `json:"i"`
	V   float64 `json:"v"`
}

// Score is a decayed score as of AsOf; read it with Profile.Value, which decays it to now.
type Score struct {
	Value    float64       `json:"value"`
	AsOf     time.Time     `json:"as_of"`
	HalfLife time.Duration `json:"half_life"`
}

// New returns an empty profile.
func New(userID string) *Profile {
	return &Profile{UserID: userID}
}

// Update is everything one event changes in a profile, computed from the event and the Spec by
// Spec.Plan. Stores apply it atomically: the memory store with Profile.Apply, the Redis store
// in one Lua script with the same arithmetic.
type Update struct {
	EventID string
	UserID  string
	Type    string
	TS      time.Time // the event's time: decides buckets, last-seen, trait order, score decay
	Now     time.Time // the server's time: created/updated, bucket pruning
	Traits  []TraitUpdate
	Series  []SeriesUpdate
	Scores  []ScoreUpdate
}

// TraitUpdate sets (or, with an absent Value, deletes) a trait.
type TraitUpdate struct {
	Name  string
	Value Value
}

// SeriesUpdate adds Delta to bucket Idx of series Key, and drops every bucket below MinIdx (the
// buckets that no window of the series can reach any more). When Idx < MinIdx the event is too
// old for the series and only the pruning happens.
type SeriesUpdate struct {
	Key    SeriesKey
	Idx    int64
	Delta  float64
	MinIdx int64
}

// ScoreUpdate adds Weight at the event's ts to score Name.
type ScoreUpdate struct {
	Name     string
	Weight   float64
	HalfLife time.Duration
}

// Plan computes what ev changes under spec at server time now. A nil spec maintains only
// traits, last-seen and the version.
func (s *Spec) Plan(ev event.Event, now time.Time) Update {
	// Times are kept to the millisecond, as every store persists them.
	u := Update{EventID: ev.ID, UserID: ev.UserID, Type: ev.Type,
		TS: ev.TS.Truncate(time.Millisecond).UTC(), Now: now.Truncate(time.Millisecond).UTC()}
	if ev.Type == TraitEventType {
		for name, x := range ev.Props {
			u.Traits = append(u.Traits, TraitUpdate{Name: name, Value: ValueOf(x)})
		}
		slices.SortFunc(u.Traits, func(a, b TraitUpdate) int {
			if a.Name < b.Name {
				return -1
			}
			if a.Name > b.Name {
				return 1
			}
			return 0
		})
	}
	if s == nil {
		return u
	}
	p := s.plan(ev.Type)
	if p == nil {
		return u
	}
	tsMs, nowMs := u.TS.UnixMilli(), u.Now.UnixMilli()
	for _, sp := range p.series {
		delta := 1.0
		if sp.key.Prop != "" {
			f, ok := number(ev.Props[sp.key.Prop])
			if !ok {
				continue
			}
			delta = f
		}
		res := sp.key.Res.Milliseconds()
		u.Series = append(u.Series, SeriesUpdate{
			Key: sp.key, Idx: floorDiv(tsMs, res), Delta: delta,
			MinIdx: floorDiv(nowMs-sp.keep.Milliseconds(), res),
		})
	}
	for _, sc := range p.scores {
		u.Scores = append(u.Scores, ScoreUpdate{Name: sc.name, Weight: sc.weight, HalfLife: sc.halfLife})
	}
	return u
}

// Apply applies an update: version+1, updated (and created, the first time), last-seen kept at
// the maximum ts, traits last-writer-wins by ts, buckets added and pruned, scores decayed and
// added. Apply does not deduplicate by event id; stores do.
func (p *Profile) Apply(u Update) {
	p.Version++
	now := u.Now.UTC()
	if p.Created.IsZero() {
		p.Created = now
	}
	p.Updated = now
	ts := u.TS.UTC()
	if last, ok := p.LastSeen[u.Type]; !ok || ts.After(last) {
		if p.LastSeen == nil {
			p.LastSeen = map[string]time.Time{}
		}
		p.LastSeen[u.Type] = ts
	}
	for _, t := range u.Traits {
		if old, ok := p.Traits[t.Name]; ok && old.TS.After(ts) {
			continue
		}
		if p.Traits == nil {
			p.Traits = map[string]Trait{}
		}
		p.Traits[t.Name] = Trait{Value: t.Value, TS: ts}
	}
	for _, su := range u.Series {
		if p.Series == nil {
			p.Series = map[SeriesKey]*Series{}
		}
		s := p.Series[su.Key]
		if s == nil {
			s = &Series{}
			p.Series[su.Key] = s
		}
		s.add(su)
		if len(s.Buckets) == 0 {
			delete(p.Series, su.Key)
		}
	}
	for _, su := range u.Scores {
		if p.Scores == nil {
			p.Scores = map[string]Score{}
		}
		p.Scores[su.Name] = addScore(p.Scores[su.Name], su, ts)
	}
}

func (s *Series) add(su SeriesUpdate) {
	// Prune: buckets are sorted, so drop a prefix.
	drop := 0
	for drop < len(s.Buckets) && s.Buckets[drop].Idx < su.MinIdx {
		drop++
	}
	s.Buckets = slices.Delete(s.Buckets, 0, drop)
	if su.Idx < su.MinIdx {
		return
	}
	i, found := slices.BinarySearchFunc(s.Buckets, su.Idx, func(b Bucket, idx int64) int {
		switch {
		case b.Idx < idx:
			return -1
		case b.Idx > idx:
			return 1
		}
		return 0
	})
	if found {
		s.Buckets[i].V += su.Delta
		return
	}
	s.Buckets = slices.Insert(s.Buckets, i, Bucket{Idx: su.Idx, V: su.Delta})
}

// addScore adds a weight at ts: a newer event decays the stored value to ts first; an older
// (out-of-order) event adds its weight already decayed to the stored as-of time.
func addScore(sc Score, su ScoreUpdate, ts time.Time) Score {
	if sc.AsOf.IsZero() {
		return Score{Value: su.Weight, AsOf: ts, HalfLife: su.HalfLife}
	}
	sc.HalfLife = su.HalfLife
	if !ts.Before(sc.AsOf) {
		sc.Value = sc.Value*decay(ts.Sub(sc.AsOf), su.HalfLife) + su.Weight
		sc.AsOf = ts
	} else {
		sc.Value += su.Weight * decay(sc.AsOf.Sub(ts), su.HalfLife)
	}
	return sc
}

// decay is 2^(-d/halfLife), computed on milliseconds as the Redis script does.
func decay(d, halfLife time.Duration) float64 {
	if d <= 0 || halfLife <= 0 {
		return 1
	}
	return math.Pow(2, -float64(d.Milliseconds())/float64(halfLife.Milliseconds()))
}

// Value computes feature f at time now:
//   - trait: the trait's value; absent (false) when never set or deleted;
//   - count: an Int, the events of the type in the trailing window (bucket-aligned, see
//     BucketSize); 0 when none. Only windows of the Spec the events were applied with are
//     meaningful: another window reads whatever buckets its bucket size happens to keep;
//   - sum: a Double, the sum of the prop over the window; 0 when none;
//   - since: an Int, whole seconds since the latest event of the type (0 if it is in the future);
//     absent when never seen;
//   - score: a Double, the score decayed to now; 0 when never scored.
//
// Value does not allocate.
func (p *Profile) Value(f Feature, now time.Time) (Value, bool) {
	switch f.Kind {
	case FeatureTrait:
		t, ok := p.Traits[f.Name]
		if !ok || t.Value.IsAbsent() {
			return Value{}, false
		}
		return t.Value, true
	case FeatureCount:
		return IntValue(int64(math.Round(p.window(f.Name, "", f.Window, now)))), true
	case FeatureSum:
		return DoubleValue(p.window(f.Name, f.Prop, f.Window, now)), true
	case FeatureSince:
		last, ok := p.LastSeen[f.Name]
		if !ok {
			return Value{}, false
		}
		return IntValue(max(0, int64(now.Sub(last)/time.Second))), true
	case FeatureScore:
		sc, ok := p.Scores[f.Name]
		if !ok {
			return DoubleValue(0), true
		}
		v := sc.Value
		if now.After(sc.AsOf) {
			v *= decay(now.Sub(sc.AsOf), sc.HalfLife)
		}
		return DoubleValue(v), true
	}
	return Value{}, false
}

// window sums the buckets that overlap (now-w, now] (and any ahead of now, from clock skew).
func (p *Profile) window(typ, prop string, w time.Duration, now time.Time) float64 {
	if w <= 0 {
		return 0
	}
	key := SeriesKey{Type: typ, Prop: prop, Res: BucketSize(w)}
	s := p.Series[key]
	if s == nil {
		return 0
	}
	from := floorDiv(now.UnixMilli()-w.Milliseconds(), key.Res.Milliseconds())
	total := 0.0
	for i := len(s.Buckets) - 1; i >= 0 && s.Buckets[i].Idx >= from; i-- {
		total += s.Buckets[i].V
	}
	return total
}

// NextExpiry returns the earliest time after now at which a feature of spec changes with no
// new event in a way a rule can notice, so the origin can re-evaluate time-based segment
// changes then. false: nothing will change.
//
//   - a windowed count or sum changes when the oldest counted bucket leaves its window;
//   - since(type) reaches a mark k (Spec.SinceMarks) at last + k s: Value is whole seconds, so
//     evaluated at that instant it is already k;
//   - score(name) crosses a mark M (Spec.ScoreMarks) when its magnitude falls below |M|. The
//     instant returned is the first millisecond at which Value is strictly nearer 0 than M,
//     so rules on either side of M (> M, >= M, < M, <= M) have turned by then.
//
// NextExpiry does not allocate: the engine calls it after every evaluation.
func (p *Profile) NextExpiry(spec *Spec, now time.Time) (time.Time, bool) {
	if spec == nil {
		return time.Time{}, false
	}
	var best int64
	found := false
	nowMs := now.UnixMilli()
	consider := func(at int64) {
		if at > nowMs && (!found || at < best) {
			best, found = at, true
		}
	}
	check := func(typ, prop string, windows []time.Duration) {
		for _, w := range windows {
			if w <= 0 {
				continue
			}
			key := SeriesKey{Type: typ, Prop: prop, Res: BucketSize(w)}
			s := p.Series[key]
			if s == nil {
				continue
			}
			res, wMs := key.Res.Milliseconds(), w.Milliseconds()
			from := floorDiv(nowMs-wMs, res)
			for _, b := range s.Buckets {
				if b.Idx < from || b.V == 0 {
					continue
				}
				// The bucket stops overlapping the window when now-w reaches its end.
				consider((b.Idx+1)*res + wMs)
				break
			}
		}
	}
	for typ, windows := range spec.Counts {
		check(typ, "", windows)
	}
	for k, windows := range spec.Sums {
		check(k.Type, k.Prop, windows)
	}
	for typ, marks := range spec.SinceMarks {
		last, ok := p.LastSeen[typ]
		if !ok {
			continue
		}
		lastMs := last.UnixMilli()
		for _, k := range marks { // ascending: the first one ahead is this type's earliest
			if at := lastMs + k*1000; at > nowMs {
				consider(at)
				break
			}
		}
	}
	for name, marks := range spec.ScoreMarks {
		sc, ok := p.Scores[name]
		if !ok {
			continue
		}
		// The score decays towards 0, so the marks it crosses come in order from the one
		// nearest its value to the one nearest 0: the first still ahead is this score's
		// earliest (one logarithm in the common case, right after an event).
		if sc.Value > 0 {
			for i := len(marks) - 1; i >= 0 && marks[i] > 0; i-- {
				if at, ok := scoreCrossing(sc, marks[i]); ok && at > nowMs {
					consider(at)
					break
				}
			}
		} else {
			for i := 0; i < len(marks) && marks[i] < 0; i++ {
				if at, ok := scoreCrossing(sc, marks[i]); ok && at > nowMs {
					consider(at)
					break
				}
			}
		}
	}
	if !found {
		return time.Time{}, false
	}
	return time.UnixMilli(best).UTC(), true
}

// scoreCrossing returns the first Unix millisecond at which sc, decaying with no new event, is
// strictly nearer 0 than mark m; false when it never crosses m (m of the other sign, or
// farther from 0 than the stored value; a score standing exactly at m crosses it 1 ms later). The closed form AsOf + halfLife·log2(v0/m) is rounded to a
// whole millisecond past the crossing and then checked with decay itself, the function Value
// reads the score with, so floating-point rounding cannot schedule it a millisecond early.
func scoreCrossing(sc Score, m float64) (int64, bool) {
	v0 := sc.Value
	if sc.HalfLife <= 0 || !(math.Abs(m) <= math.Abs(v0)) || (m < 0) != (v0 < 0) || m == 0 {
		return 0, false
	}
	d := math.Floor(float64(sc.HalfLife.Milliseconds())*math.Log2(v0/m)) + 1
	if !(d < float64(math.MaxInt64/int64(time.Millisecond))/2) {
		return 0, false // beyond any time.Time the engine can schedule
	}
	dMs := int64(d)
	for range 3 {
		if math.Abs(v0*decay(time.Duration(dMs)*time.Millisecond, sc.HalfLife)) < math.Abs(m) {
			return sc.AsOf.UnixMilli() + dMs, true
		}
		dMs++
	}
	return 0, false
}

// With returns the profile p becomes after u, equal to what p.Clone() then Apply(u) gives, but
// without copying what u leaves alone: the result shares p's untouched maps and series. Stores
// keep profiles immutable once handed out (a new state is a new profile), and copying every map
// and series for every event was 13 % of the origin's CPU with the memory store; an event
// touches its last-seen time and a few features. Neither p nor the result may be modified in
// place afterwards.
func (p *Profile) With(u Update) *Profile {
	c := *p
	c.Version++
	now := u.Now.UTC()
	if c.Created.IsZero() {
		c.Created = now
	}
	c.Updated = now
	ts := u.TS.UTC()
	if last, ok := p.LastSeen[u.Type]; !ok || ts.After(last) {
		c.LastSeen = cloneMap(p.LastSeen, 1)
		c.LastSeen[u.Type] = ts
	}
	copied := false
	for _, t := range u.Traits {
		if old, ok := c.Traits[t.Name]; ok && old.TS.After(ts) {
			continue
		}
		if !copied {
			c.Traits, copied = cloneMap(p.Traits, len(u.Traits)), true
		}
		c.Traits[t.Name] = Trait{Value: t.Value, TS: ts}
	}
	if len(u.Series) > 0 {
		c.Series = cloneMap(p.Series, len(u.Series))
		for _, su := range u.Series {
			s := &Series{}
			if old := c.Series[su.Key]; old != nil {
				s.Buckets = slices.Clone(old.Buckets)
			}
			s.add(su)
			if len(s.Buckets) == 0 {
				delete(c.Series, su.Key)
			} else {
				c.Series[su.Key] = s
			}
		}
	}
	if len(u.Scores) > 0 {
		c.Scores = cloneMap(p.Scores, len(u.Scores))
		for _, su := range u.Scores {
			c.Scores[su.Name] = addScore(c.Scores[su.Name], su, ts)
		}
	}
	return &c
}

// cloneMap copies m into a new map with room for extra more entries.
func cloneMap[K comparable, V any](m map[K]V, extra int) map[K]V {
	c := make(map[K]V, len(m)+extra)
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Clone returns a deep copy, so a store can hand out profiles that callers may keep.
func (p *Profile) Clone() *Profile {
	c := *p
	c.Traits = maps.Clone(p.Traits)
	c.LastSeen = maps.Clone(p.LastSeen)
	c.Scores = maps.Clone(p.Scores)
	if p.Series != nil {
		c.Series = make(map[SeriesKey]*Series, len(p.Series))
		for k, v := range p.Series {
			c.Series[k] = &Series{Buckets: slices.Clone(v.Buckets)}
		}
	}
	return &c
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
