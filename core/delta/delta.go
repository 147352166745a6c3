// Package delta is the wire format of segment-membership changes, published by the origin on
// the stream DELTAS (subject seg.deltas.<partition of the user>) and applied by every edge.
//
// A delta carries the user's whole profile-scoped membership after the change, not only what
// entered and exited, so an edge that missed earlier deltas (a new edge, a trimmed stream) has
// the right memberships after the next one. Features, the profile values request-scoped rules
// read at the edge, travel whole in a user's first delta and only when changed afterwards (Base):
// an edge that missed the earlier deltas asks the origin for the rest. Version increases strictly per user: an edge drops a delta whose
// version is not newer than what it holds, which makes redelivery and reordering harmless.
package delta

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/segedge/segedge/core/profile"
)

// Cause says why a delta was published.
type Cause string

const (
	CauseEvent   Cause = "event"   // an event changed the profile
	CauseExpiry  Cause = "expiry"  // a windowed aggregate changed with time
	CauseRuleset Cause = "ruleset" // a new ruleset re-evaluated the profile
	CauseErase   Cause = "erase"   // the profile was deleted
)

// Delta is one change of one user.
type Delta struct {
	UserID  string `json:"user_id"`
	Version uint64 `json:"version"`
	Ruleset uint64 `json:"ruleset"`
	Cause   Cause  `json:"cause"`
	// Members are the segments (evaluable without a request) the user is in after the change.
	Members []string `json:"members"`
	Entered []string `json:"entered,omitempty"`
	Exited  []string `json:"exited,omitempty"`
	// Features are the profile values that request-scoped rules read at the edge: all of them
	// (Base 0), or only those that changed since version Base.
	Features []FeatureValue `json:"features,omitempty"`
	// Base, when not 0, is the user's version that Features are relative to (the one before
	// Version): features not listed, and not in Gone, have the value they had at Base. An edge
	// that holds exactly version Base merges; one that holds less knows the memberships but not
	// every feature, and asks the origin for the user when a request needs them. Most events
	// change one or two features of many, and an event that changes none of them and no
	// membership publishes no delta at all.
	Base uint64 `json:"base,omitempty"`
	// Gone are the feature keys that had a value at Base and have none now (a trait removed).
	Gone []string `json:"gone,omitempty"`
	// Erased: the profile is gone; the edge forgets the user.
	Erased bool `json:"erased,omitempty"`
	// AcceptedAt is when the event that caused this delta was accepted (Unix ms), so the edge can
	// measure event-accepted → applied latency. Zero for deltas not caused by an event.
	AcceptedAt int64 `json:"accepted_at,omitempty"`
	// Due is, for an expiry delta, when the change was due (Unix ms).
	Due int64 `json:"due,omitempty"`
	// TraceParent is the W3C traceparent of the origin's delta.publish span, set only when
	// tracing is on, so each edge's replica.apply continues the trace of the event that caused
	// this delta even though many deltas share one message (and its headers).
	TraceParent string `json:"traceparent,omitempty"`
}

// FeatureValue is one feature's value at the time of the delta. On the wire it carries its kind
// ("t": b, i, d or s) beside the value, so a double score of 42 stays a double.
type FeatureValue struct {
	Key   string // FeatureKey of the feature
	Value profile.Value
}

type wireFeature struct {
	K string          `json:"k"`
	T string          `json:"t"`
	V json.RawMessage `json:"v"`
}

// MarshalJSON implements json.Marshaler.
func (f FeatureValue) MarshalJSON() ([]byte, error) {
	w := wireFeature{K: f.Key}
	var err error
	switch f.Value.Kind {
	case profile.KindBool:
		w.T, w.V = "b", json.RawMessage(strconv.FormatBool(f.Value.Bool))
	case profile.KindInt:
		w.T, w.V = "i", json.RawMessage(strconv.FormatInt(f.Value.Int, 10))
	case profile.KindDouble:
		if math.IsNaN(f.Value.Double) || math.IsInf(f.Value.Double, 0) {
			return nil, fmt.Errorf("feature %s: %v cannot be sent", f.Key, f.Value.Double)
		}
		w.T, w.V = "d", json.RawMessage(strconv.FormatFloat(f.Value.Double, 'g', -1, 64))
	case profile.KindString:
		w.T = "s"
		w.V, err = json.Marshal(f.Value.Str)
	default:
		return nil, fmt.Errorf("feature %s: absent values are not sent", f.Key)
	}
	if err != nil {
		return nil, err
	}
	return json.Marshal(w)
}

// UnmarshalJSON implements json.Unmarshaler.
func (f *FeatureValue) UnmarshalJSON(b []byte) error {
	var w wireFeature
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	v, err := w.value()
	if err != nil {
		return err
	}
	*f = v
	return nil
}

// value converts the wire form. Numbers and booleans are parsed from the raw value directly (an
// edge decodes every delta's features; a json.Unmarshal per value cost more than the rest).
func (w *wireFeature) value() (FeatureValue, error) {
	f := FeatureValue{Key: w.K}
	var err error
	switch w.T {
	case "b":
		switch string(w.V) {
		case "true":
			f.Value = profile.BoolValue(true)
		case "false":
			f.Value = profile.BoolValue(false)
		default:
			err = fmt.Errorf("%.20q is not a bool", w.V)
		}
	case "i":
		var v int64
		v, err = strconv.ParseInt(string(w.V), 10, 64)
		f.Value = profile.IntValue(v)
	case "d":
		var v float64
		v, err = parseJSONFloat(w.V)
		f.Value = profile.DoubleValue(v)
	case "s":
		var v string
		err = json.Unmarshal(w.V, &v)
		f.Value = profile.StringValue(v)
	default:
		return FeatureValue{}, fmt.Errorf("feature %s: unknown kind %q", w.K, w.T)
	}
	if err != nil {
		return FeatureValue{}, fmt.Errorf("feature %s: %w", w.K, err)
	}
	return f, nil
}

// parseJSONFloat parses a JSON number (the outer decoder checked the syntax of the raw value, so
// only a number, a string or a literal can get here; the last two fail ParseFloat, as do
// ParseFloat's own extras like "Inf", which are not JSON).
func parseJSONFloat(raw []byte) (float64, error) {
	if len(raw) == 0 || !(raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9') {
		return 0, fmt.Errorf("%.20q is not a number", raw)
	}
	v, err := strconv.ParseFloat(string(raw), 64)
	if err != nil {
		return 0, fmt.Errorf("%.20q is not a finite number", raw)
	}
	return v, nil
}

// FeatureKey names a feature on the wire: "trait:plan", "count:add_to_cart:30m0s",
// "sum:purchase_completed:amount:168h0m0s", "since:page_view", "score:engagement".
func FeatureKey(f profile.Feature) string {
	switch f.Kind {
	case profile.FeatureTrait:
		return "trait:" + f.Name
	case profile.FeatureCount:
		return "count:" + f.Name + ":" + f.Window.String()
	case profile.FeatureSum:
		return "sum:" + f.Name + ":" + f.Prop + ":" + f.Window.String()
	case profile.FeatureSince:
		return "since:" + f.Name
	case profile.FeatureScore:
		return "score:" + f.Name
	}
	return fmt.Sprintf("unknown%d:%s", f.Kind, f.Name)
}

// ParseFeatureKey is the inverse of FeatureKey.
func ParseFeatureKey(k string) (profile.Feature, error) {
	parts := strings.Split(k, ":")
	bad := fmt.Errorf("feature key %q: want kind:name[:prop][:window]", k)
	window := func(s string) (time.Duration, error) {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return 0, bad
		}
		return d, nil
	}
	switch {
	case len(parts) == 2 && parts[0] == "trait":
		return profile.Feature{Kind: profile.FeatureTrait, Name: parts[1]}, nil
	case len(parts) == 2 && parts[0] == "since":
		return profile.Feature{Kind: profile.FeatureSince, Name: parts[1]}, nil
	case len(parts) == 2 && parts[0] == "score":
		return profile.Feature{Kind: profile.FeatureScore, Name: parts[1]}, nil
	case len(parts) == 3 && parts[0] == "count":
		w, err := window(parts[2])
		return profile.Feature{Kind: profile.FeatureCount, Name: parts[1], Window: w}, err
	case len(parts) == 4 && parts[0] == "sum":
		w, err := window(parts[3])
		return profile.Feature{Kind: profile.FeatureSum, Name: parts[1], Prop: parts[2], Window: w}, err
	}
	return profile.Feature{}, bad
}

// Encode returns the body of a message holding only d (format 0, what origins published before
// batches; see EncodeBatch).
func Encode(d *Delta) ([]byte, error) {
	b, err := appendDelta(make([]byte, 0, 256), d)
	if err != nil {
		return nil, fmt.Errorf("encode delta: %w", err)
	}
	return b, nil
}

// Decode parses a format-0 message body (one delta) and checks the fields an edge relies on.
// DecodeBatch reads both formats.
func Decode(b []byte) (*Delta, error) {
	var d Delta
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("decode delta: %w", err)
	}
	if err := d.check(); err != nil {
		return nil, fmt.Errorf("decode delta: %w", err)
	}
	return &d, nil
}

// check validates what an edge relies on.
func (d *Delta) check() error {
	if d.UserID == "" {
		return errors.New("no user_id")
	}
	if d.Version == 0 {
		return errors.New("version 0")
	}
	if d.Base >= d.Version {
		return fmt.Errorf("base %d is not before version %d", d.Base, d.Version)
	}
	if len(d.Gone) > 0 && d.Base == 0 {
		return errors.New("gone features without a base")
	}
	return nil
}

// Partial reports whether d's features are relative to an earlier version (Base).
func (d *Delta) Partial() bool { return d.Base != 0 }

// MsgID is the JetStream message id of a delta, so a republish after a crash is dropped by
// JetStream's duplicate window.
func MsgID(d *Delta) string { return fmt.Sprintf("%s/%d", d.UserID, d.Version) }
