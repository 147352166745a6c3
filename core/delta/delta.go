// Package delta is the wire format of segment-membership changes, published by the origin on
// the stream DELTAS (subject seg.deltas.<partition of the user>) and applied by every edge.
//
// A delta carries the user's whole profile-scoped membership after the change, not only what
// entered and exited, so an edge that missed earlier deltas (a new edge, a trimmed stream) is
// right after the next one. Version increases strictly per user: an edge drops a delta whose
// version is not newer than what it holds, which makes redelivery and reordering harmless.
package delta

import (
	"encoding/json"
	"errors"
	"fmt"
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
	// Features are the profile values that request-scoped rules read at the edge.
	Features []FeatureValue `json:"features,omitempty"`
	// Erased: the profile is gone; the edge forgets the user.
	Erased bool `json:"erased,omitempty"`
	// AcceptedAt is when the event that caused this delta was accepted (Unix ms), so the edge can
	// measure event-accepted → applied latency. Zero for deltas not caused by an event.
	AcceptedAt int64 `json:"accepted_at,omitempty"`
	// Due is, for an expiry delta, when the change was due (Unix ms).
	Due int64 `json:"due,omitempty"`
}

// FeatureValue is one feature's value at the time of the delta.
type FeatureValue struct {
	Key   string        `json:"k"` // FeatureKey of the feature
	Value profile.Value `json:"v"`
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

// Encode returns the message body.
func Encode(d *Delta) ([]byte, error) { return json.Marshal(d) }

// Decode parses a message body and checks the fields an edge relies on.
func Decode(b []byte) (*Delta, error) {
	var d Delta
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("decode delta: %w", err)
	}
	if d.UserID == "" {
		return nil, errors.New("decode delta: no user_id")
	}
	if d.Version == 0 {
		return nil, fmt.Errorf("decode delta for a user: version 0")
	}
	return &d, nil
}

// MsgID is the JetStream message id of a delta, so a republish after a crash is dropped by
// JetStream's duplicate window.
func MsgID(d *Delta) string { return fmt.Sprintf("%s/%d", d.UserID, d.Version) }
