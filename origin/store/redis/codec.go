package redis

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/profile"
)

func encodeValue(v profile.Value) string {
	switch v.Kind {
	case profile.KindBool:
		if v.Bool {
			return "b1"
		}
		return "b0"
	case profile.KindInt:
		return "i" + strconv.FormatInt(v.Int, 10)
	case profile.KindDouble:
		return "d" + strconv.FormatFloat(v.Double, 'g', -1, 64)
	case profile.KindString:
		return "s" + v.Str
	default:
		return ""
	}
}

var errBadValue = errors.New("bad encoded value")

func decodeValue(s string) (profile.Value, error) {
	if s == "" {
		return profile.Value{}, nil
	}
	body := s[1:]
	switch s[0] {
	case 'b':
		return profile.BoolValue(body == "1"), nil
	case 'i':
		i, err := strconv.ParseInt(body, 10, 64)
		if err != nil {
			return profile.Value{}, errBadValue
		}
		return profile.IntValue(i), nil
	case 'd':
		f, err := strconv.ParseFloat(body, 64)
		if err != nil {
			return profile.Value{}, errBadValue
		}
		return profile.DoubleValue(f), nil
	case 's':
		return profile.StringValue(body), nil
	}
	return profile.Value{}, errBadValue
}

func ms(s string) (time.Time, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(n).UTC(), nil
}

// decodeProfile builds a profile from HGETALL's field/value pairs.
func decodeProfile(userID string, kv []any) (*profile.Profile, error) {
	p := profile.New(userID)
	for i := 0; i+1 < len(kv); i += 2 {
		f, _ := kv[i].(string)
		v, _ := kv[i+1].(string)
		if err := decodeField(p, f, v); err != nil {
			return nil, fmt.Errorf("decode profile of user %s field %q: %w", ops.UserRef(userID), f, err)
		}
	}
	return p, nil
}

func decodeField(p *profile.Profile, f, v string) error {
	var err error
	switch {
	case f == "v":
		p.Version, err = strconv.ParseInt(v, 10, 64)
	case f == "c":
		p.Created, err = ms(v)
	case f == "u":
		p.Updated, err = ms(v)
	case strings.HasPrefix(f, "l:"):
		var t time.Time
		if t, err = ms(v); err == nil {
			if p.LastSeen == nil {
				p.LastSeen = map[string]time.Time{}
			}
			p.LastSeen[f[2:]] = t
		}
	case strings.HasPrefix(f, "t:"):
		tss, enc, ok := strings.Cut(v, "|")
		if !ok {
			return errBadValue
		}
		var tr profile.Trait
		if tr.TS, err = ms(tss); err != nil {
			return err
		}
		if tr.Value, err = decodeValue(enc); err != nil {
			return err
		}
		if p.Traits == nil {
			p.Traits = map[string]profile.Trait{}
		}
		p.Traits[f[2:]] = tr
	case strings.HasPrefix(f, "n:") || strings.HasPrefix(f, "s:"):
		key, err := profile.ParseSeriesKey(f)
		if err != nil {
			return err
		}
		series := &profile.Series{}
		for part := range strings.SplitSeq(v, ",") {
			is, vs, ok := strings.Cut(part, ":")
			idx, err1 := strconv.ParseInt(is, 10, 64)
			val, err2 := strconv.ParseFloat(vs, 64)
			if !ok || err1 != nil || err2 != nil {
				return errBadValue
			}
			series.Buckets = append(series.Buckets, profile.Bucket{Idx: idx, V: val})
		}
		if p.Series == nil {
			p.Series = map[profile.SeriesKey]*profile.Series{}
		}
		p.Series[key] = series
	case strings.HasPrefix(f, "o:"):
		parts := strings.Split(v, "|")
		if len(parts) != 3 {
			return errBadValue
		}
		val, err1 := strconv.ParseFloat(parts[0], 64)
		asOf, err2 := ms(parts[1])
		hl, err3 := strconv.ParseInt(parts[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return errBadValue
		}
		if p.Scores == nil {
			p.Scores = map[string]profile.Score{}
		}
		p.Scores[f[2:]] = profile.Score{Value: val, AsOf: asOf, HalfLife: time.Duration(hl) * time.Millisecond}
	}
	return err
}

// fieldLast is the hash field holding the id of the last event written to the profile: with v
// and c it is what the compare-and-set compares (cas.lua).
const fieldLast = "e"

// decodeState builds a stored state from HGETALL's field/value pairs; no pairs is a new profile.
func decodeState(userID string, kv []any) (state, error) {
	p, err := decodeProfile(userID, kv)
	if err != nil {
		return state{}, err
	}
	st := state{p: p}
	for i := 0; i+1 < len(kv); i += 2 {
		if f, _ := kv[i].(string); f == fieldLast {
			st.last, _ = kv[i+1].(string)
		}
	}
	return st, nil
}

// hashPairs turns an HGETALL map into the field/value pairs decodeProfile reads.
func hashPairs(m map[string]string) []any {
	kv := make([]any, 0, 2*len(m))
	for k, v := range m {
		kv = append(kv, k, v)
	}
	return kv
}

// casArgs builds cas.lua's ARGV for event id going from state from to state to by update u: the
// expectation (from's v, c and e), the series u emptied (deleted) and the fields u names, with
// their values in to. Fields u does not name are unchanged by Profile.Apply, so they are not
// sent; a named field whose value did not change (an older trait) is rewritten as it was.
func casArgs(id string, nowMs, windowMs, ttlMs int64, from, to *profile.Profile, last string, u profile.Update) []any {
	args := make([]any, 0, 18+2*(len(u.Traits)+len(u.Series)+len(u.Scores)))
	args = append(args, id, nowMs, windowMs, ttlMs, from.Version, msField(from.Created), last)
	ndel := len(args)
	args = append(args, 0)
	for _, su := range u.Series {
		if to.Series[su.Key] == nil && from.Series[su.Key] != nil {
			args = append(args, su.Key.String())
		}
	}
	args[ndel] = len(args) - ndel - 1
	args = append(args, "v", to.Version, "u", to.Updated.UnixMilli(), fieldLast, id,
		"l:"+u.Type, to.LastSeen[u.Type].UnixMilli())
	if from.Created.IsZero() {
		args = append(args, "c", to.Created.UnixMilli())
	}
	var buf []byte
	for _, t := range u.Traits {
		tr := to.Traits[t.Name]
		buf = strconv.AppendInt(buf[:0], tr.TS.UnixMilli(), 10)
		buf = append(buf, '|')
		buf = append(buf, encodeValue(tr.Value)...)
		args = append(args, "t:"+t.Name, string(buf))
	}
	for _, su := range u.Series {
		if s := to.Series[su.Key]; s != nil {
			args = append(args, su.Key.String(), string(appendSeries(buf[:0], s)))
		}
	}
	for _, sc := range u.Scores {
		o := to.Scores[sc.Name]
		buf = appendFloat(buf[:0], o.Value)
		buf = append(buf, '|')
		buf = strconv.AppendInt(buf, o.AsOf.UnixMilli(), 10)
		buf = append(buf, '|')
		buf = strconv.AppendInt(buf, o.HalfLife.Milliseconds(), 10)
		args = append(args, "o:"+sc.Name, string(buf))
	}
	return args
}

// msField is a time as stored in a hash field: Unix ms, or "" for the zero time (no field).
func msField(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return strconv.FormatInt(t.UnixMilli(), 10)
}

// appendSeries appends a series' hash value: "<idx>:<value>,…" oldest bucket first.
func appendSeries(b []byte, s *profile.Series) []byte {
	for i, bk := range s.Buckets {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, bk.Idx, 10)
		b = append(b, ':')
		b = appendFloat(b, bk.V)
	}
	return b
}

// appendFloat appends the shortest text that parses back to exactly f; whole numbers (counts,
// the common case) as plain integers ("1000000", not "1e+06").
func appendFloat(b []byte, f float64) []byte {
	if f == math.Trunc(f) && math.Abs(f) < 1e15 && (f != 0 || !math.Signbit(f)) {
		return strconv.AppendInt(b, int64(f), 10)
	}
	return strconv.AppendFloat(b, f, 'g', -1, 64)
}
