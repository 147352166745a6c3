package event

import (
	"encoding/json"
	"fmt"
	"time"
)

// wire is the JetStream form of an accepted event: compact JSON with ts in Unix milliseconds and
// accepted_at in Unix nanoseconds (when the receiver appended it), so the pipeline can measure
// accepted → applied latency at microsecond resolution.
type wire struct {
	ID         string         `json:"event_id"`
	UserID     string         `json:"user_id"`
	Type       string         `json:"type"`
	TS         int64          `json:"ts"`
	Props      map[string]any `json:"props,omitempty"`
	AcceptedAt int64          `json:"accepted_at"`
}

// EncodeWire returns the message body for an event accepted at acceptedAt.
func EncodeWire(ev Event, acceptedAt time.Time) ([]byte, error) {
	b, err := json.Marshal(wire{
		ID: ev.ID, UserID: ev.UserID, Type: ev.Type, TS: ev.TS.UnixMilli(),
		Props: ev.Props, AcceptedAt: acceptedAt.UnixNano(),
	})
	if err != nil {
		return nil, fmt.Errorf("encode event %q: %w", ev.ID, err)
	}
	return b, nil
}

// DecodeWire parses a message body written by EncodeWire. It checks the shape (ids, type) but
// not the time limits: the event was validated when it was accepted.
func DecodeWire(b []byte) (Event, time.Time, error) {
	var w wire
	if err := json.Unmarshal(b, &w); err != nil {
		return Event{}, time.Time{}, fmt.Errorf("decode wire event: %w", err)
	}
	if w.ID == "" || w.UserID == "" || !ValidType(w.Type) {
		return Event{}, time.Time{}, fmt.Errorf("decode wire event %q: missing event_id, user_id or valid type", w.ID)
	}
	ev := Event{ID: w.ID, UserID: w.UserID, Type: w.Type, TS: time.UnixMilli(w.TS).UTC(), Props: w.Props}
	return ev, time.Unix(0, w.AcceptedAt).UTC(), nil
}
