package event

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// The EVENTS message format, version 1 (documented in docs/architecture.md, "The EVENTS
// message"): the body is one or more wire objects — the compact JSON of one event, below —
// separated by a newline ("\n", NDJSON), in the order the events were accepted, all of one
// partition. A message of one object is exactly the single-event message of earlier releases,
// so a backend may still publish one event per message on seg.events.<p> itself, pretty-printed
// or not. A body whose first non-space byte is not '{' is reserved for a later (binary)
// version and is refused as unreadable, so an old origin never misreads a newer producer.

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
	return AppendWire(nil, ev, acceptedAt)
}

// AppendWire appends the wire object of ev (no newline) to dst; on error dst is returned as
// it was.
func AppendWire(dst []byte, ev Event, acceptedAt time.Time) ([]byte, error) {
	if out, ok := appendWireFast(dst, ev, acceptedAt); ok {
		return out, nil
	}
	return appendWireStd(dst, ev, acceptedAt)
}

// appendWireStd is AppendWire with json.Marshal: for what appendWireFast leaves, and the
// reference it is fuzzed against.
func appendWireStd(dst []byte, ev Event, acceptedAt time.Time) ([]byte, error) {
	b, err := json.Marshal(wire{
		ID: ev.ID, UserID: ev.UserID, Type: ev.Type, TS: ev.TS.UnixMilli(),
		Props: ev.Props, AcceptedAt: acceptedAt.UnixNano(),
	})
	if err != nil {
		return dst, fmt.Errorf("encode event %q: %w", ev.ID, err)
	}
	return append(dst, b...), nil
}

// DecodeWire parses a message body written by EncodeWire: exactly one event. It checks the
// shape (ids, type) but not the time limits: the event was validated when it was accepted.
func DecodeWire(b []byte) (Event, time.Time, error) {
	var w wire
	if err := json.Unmarshal(b, &w); err != nil {
		return Event{}, time.Time{}, fmt.Errorf("decode wire event: %w", err)
	}
	return w.event()
}

func (w *wire) event() (Event, time.Time, error) {
	if w.ID == "" || w.UserID == "" || !ValidType(w.Type) {
		return Event{}, time.Time{}, fmt.Errorf("decode wire event %q: missing event_id, user_id or valid type", w.ID)
	}
	ev := Event{ID: w.ID, UserID: w.UserID, Type: w.Type, TS: time.UnixMilli(w.TS).UTC(), Props: w.Props}
	return ev, time.Unix(0, w.AcceptedAt).UTC(), nil
}

// ErrUnknownFormat is returned by DecodeMessage for a body that is not version 1 (JSON objects).
var ErrUnknownFormat = errors.New("not an EVENTS message of a known format")

// DecodeMessage parses an EVENTS message body (one or more wire objects, see the format above)
// and appends its events and their acceptance times to evs and at. A message is read whole or
// not at all: on error evs and at are returned as they were, so its events are never half
// applied.
func DecodeMessage(b []byte, evs []Event, at []time.Time) ([]Event, []time.Time, error) {
	n0 := len(evs)
	i := skipSpace(b, 0)
	if i == len(b) || b[i] != '{' {
		return decodeMessageStd(b, evs, at)
	}
	for n := 0; i < len(b); n++ {
		end := scanValue(b, i, 0)
		if end < 0 || b[i] != '{' {
			return decodeMessageStd(b, evs[:n0], at[:n0])
		}
		var w wire
		if !scanWire(b[i:end], &w) {
			if err := json.Unmarshal(b[i:end], &w); err != nil {
				return decodeMessageStd(b, evs[:n0], at[:n0])
			}
		}
		ev, t, err := w.event()
		if err != nil {
			return evs[:n0], at[:n0], fmt.Errorf("decode events message, event %d: %w", n, err)
		}
		evs, at = append(evs, ev), append(at, t)
		i = skipSpace(b, end)
	}
	return evs, at, nil
}

// wireFields are the members scanWire reads, in the order of its out slots.
var wireFields = []string{"event_id", "user_id", "type", "ts", "props", "accepted_at"}

// scanWire fills w from the wire object obj as json.Unmarshal would, without reflection;
// false: leave obj to json.Unmarshal.
func scanWire(obj []byte, w *wire) bool {
	var f [6][]byte
	if !scanFields(obj, wireFields, f[:]) {
		return false
	}
	// An explicit null is left to encoding/json: it keeps an earlier value of a repeated member.
	for k, dst := range [...]*string{&w.ID, &w.UserID, &w.Type} {
		if f[k] == nil {
			continue
		}
		s, ok := plainString(f[k])
		if !ok {
			return false
		}
		*dst = s
	}
	for _, x := range [...]struct {
		k   int
		dst *int64
	}{{3, &w.TS}, {5, &w.AcceptedAt}} {
		if f[x.k] == nil {
			continue
		}
		if scanNumber(f[x.k], 0) != len(f[x.k]) {
			return false
		}
		n, err := strconv.ParseInt(string(f[x.k]), 10, 64)
		if err != nil {
			return false
		}
		*x.dst = n
	}
	if f[4] != nil {
		props, ok := parseObject(f[4])
		if !ok {
			return false
		}
		w.Props = props
	}
	return true
}

// decodeMessageStd is DecodeMessage with encoding/json only: the reference the scanner is
// fuzzed against, and the path that words the error of a message the scanner refuses.
func decodeMessageStd(b []byte, evs []Event, at []time.Time) ([]Event, []time.Time, error) {
	n0 := len(evs)
	body := bytes.TrimLeft(b, " \t\r\n")
	if len(body) == 0 {
		return evs, at, fmt.Errorf("decode events message: %w: empty body", ErrUnknownFormat)
	}
	if body[0] != '{' {
		return evs, at, fmt.Errorf("decode events message: %w: starts with %#02x", ErrUnknownFormat, body[0])
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	for i := 0; ; i++ {
		var w wire
		err := dec.Decode(&w)
		if errors.Is(err, io.EOF) && i > 0 {
			return evs, at, nil
		}
		if err == nil {
			var ev Event
			var t time.Time
			if ev, t, err = w.event(); err == nil {
				evs, at = append(evs, ev), append(at, t)
				continue
			}
		}
		return evs[:n0], at[:n0], fmt.Errorf("decode events message, event %d: %w", i, err)
	}
}

// MessageID is the Nats-Msg-Id of a message carrying events with these ids, in this order:
// the event id itself for one event (as single-event messages always had), else "b-" and a
// hash of the ids, so a client retrying the same request within JetStream's duplicate window
// publishes the same ids and stores nothing twice. A retry grouped differently gets other ids;
// the profile store's dedup by event id keeps it from counting twice.
func MessageID(ids []string) string {
	if len(ids) == 1 {
		return ids[0]
	}
	h := sha256.New()
	for _, id := range ids {
		h.Write([]byte(id))
		h.Write([]byte{'\n'})
	}
	var sum [sha256.Size]byte
	return "b-" + hex.EncodeToString(h.Sum(sum[:0])[:16])
}
