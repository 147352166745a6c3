package event

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"mime"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Decode parses a request body of events — a JSON array of event objects, a single event object,
// or NDJSON (one object per line) — and validates every event against lim at server time now.
//
// The format comes from contentType: a media type containing "ndjson", "jsonl" or "json-seq"
// (application/x-ndjson, application/jsonl, …) means NDJSON; anything else is sniffed: a body
// starting with '[' is an array, a body that is one JSON object is a batch of one (pretty-printed
// or not), anything else is read as NDJSON.
//
// Good events are returned in batch order; each bad one yields a FieldError and is skipped. A
// body larger than lim.MaxBodyBytes, more than lim.MaxBatch events, or a body that is not an
// array/NDJSON at all is a whole-request error (ErrBodyTooLarge, ErrBatchTooLarge, ErrMalformed,
// wrapped with detail) and no events are returned. An event without ts gets now.
func Decode(body []byte, contentType string, lim Limits, now time.Time) ([]Event, []FieldError, error) {
	lim = lim.withDefaults()
	if len(body) > lim.MaxBodyBytes {
		return nil, nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrBodyTooLarge, len(body), lim.MaxBodyBytes)
	}
	records, err := splitFast(body, isNDJSON(contentType))
	if err != nil {
		return nil, nil, err
	}
	if len(records) > lim.MaxBatch {
		return nil, nil, fmt.Errorf("%w: %d events, the limit is %d", ErrBatchTooLarge, len(records), lim.MaxBatch)
	}
	if len(records) == 0 {
		return nil, nil, fmt.Errorf("%w: no events", ErrMalformed)
	}
	events := make([]Event, 0, len(records))
	var errs []FieldError
	for i, rec := range records {
		ev, ferrs := decodeRecord(rec, lim, now)
		if len(ferrs) > 0 {
			for _, fe := range ferrs {
				fe.Index = i
				errs = append(errs, fe)
			}
			continue
		}
		events = append(events, ev)
	}
	return events, errs, nil
}

func isNDJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	return strings.Contains(mt, "ndjson") || strings.Contains(mt, "jsonl") || strings.Contains(mt, "json-seq")
}

// splitFast cuts the body into one raw JSON value per event, as split does, with the scanner;
// anything it cannot cut exactly as split would goes to split.
func splitFast(body []byte, ndjson bool) ([]json.RawMessage, error) {
	i := skipSpace(body, 0)
	if ndjson || i == len(body) || (body[i] != '[' && body[i] != '{') {
		return split(body, ndjson)
	}
	if body[i] == '{' {
		if end := scanValue(body, i, 0); end > 0 && skipSpace(body, end) == len(body) {
			return []json.RawMessage{body[i:end]}, nil
		}
		return split(body, ndjson)
	}
	var recs []json.RawMessage
	i = skipSpace(body, i+1)
	if i < len(body) && body[i] == ']' {
		if skipSpace(body, i+1) == len(body) {
			return recs, nil
		}
		return split(body, ndjson)
	}
	for {
		end := scanValue(body, i, 1)
		if end < 0 {
			return split(body, ndjson)
		}
		recs = append(recs, body[i:end])
		if i = skipSpace(body, end); i >= len(body) {
			return split(body, ndjson)
		}
		switch body[i] {
		case ',':
			i = skipSpace(body, i+1)
		case ']':
			if skipSpace(body, i+1) == len(body) {
				return recs, nil
			}
			return split(body, ndjson)
		default:
			return split(body, ndjson)
		}
	}
}

// split cuts the body into one raw JSON value per event.
func split(body []byte, ndjson bool) ([]json.RawMessage, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("%w: empty body", ErrMalformed)
	}
	if !ndjson && trimmed[0] == '[' {
		var arr []json.RawMessage
		if err := json.Unmarshal(trimmed, &arr); err != nil {
			return nil, fmt.Errorf("%w: not a JSON array of events: %v", ErrMalformed, err)
		}
		return arr, nil
	}
	if !ndjson && trimmed[0] == '{' && json.Valid(trimmed) {
		// One event object, possibly pretty-printed over several lines.
		return []json.RawMessage{trimmed}, nil
	}
	var recs []json.RawMessage
	for line := range bytes.SplitSeq(trimmed, []byte{'\n'}) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		recs = append(recs, json.RawMessage(line))
	}
	return recs, nil
}

// rawEvent keeps each field raw so that a wrong type is reported against that field.
type rawEvent struct {
	ID     json.RawMessage `json:"event_id"`
	UserID json.RawMessage `json:"user_id"`
	Type   json.RawMessage `json:"type"`
	TS     json.RawMessage `json:"ts"`
	Props  json.RawMessage `json:"props"`
}

// typedEvent is the fast path: one Unmarshal for a well-formed event.
type typedEvent struct {
	ID     string          `json:"event_id"`
	UserID *string         `json:"user_id"` // nil: absent or null
	Type   string          `json:"type"`
	TS     json.RawMessage `json:"ts"`
	Props  json.RawMessage `json:"props"`
}

// eventFields are the members decodeScan reads, in the order of its out slots.
var eventFields = []string{"event_id", "user_id", "type", "ts", "props"}

// decodeRecord decodes and validates one event: with the scanner when the event is valid and
// plain, else as decodeOne.
func decodeRecord(rec json.RawMessage, lim Limits, now time.Time) (Event, []FieldError) {
	if ev, ok := decodeScan(rec, lim, now); ok {
		return ev, nil
	}
	return decodeOne(rec, lim, now)
}

// decodeScan is decodeFast without encoding/json: it accepts what decodeFast accepts (or
// less) and returns the same event.
func decodeScan(rec []byte, lim Limits, now time.Time) (Event, bool) {
	var f [5][]byte
	if len(rec) == 0 || rec[0] != '{' || !scanFields(rec, eventFields, f[:]) {
		return Event{}, false
	}
	var ev Event
	var ok bool
	if ev.ID, ok = plainString(f[0]); !ok || !validID(ev.ID, lim.MaxIDLen) {
		return Event{}, false
	}
	if ev.Type, ok = plainString(f[2]); !ok || !ValidType(ev.Type) {
		return Event{}, false
	}
	if isNull(f[1]) {
		if lim.FixedUserID == "" {
			return Event{}, false
		}
		ev.UserID = lim.FixedUserID
	} else {
		u, ok := plainString(f[1])
		if !ok || (lim.FixedUserID == "" && !validID(u, lim.MaxIDLen)) || (lim.FixedUserID != "" && u != lim.FixedUserID) {
			return Event{}, false
		}
		ev.UserID = u
	}
	if ev.TS, ok = tsScan(f[3], lim, now); !ok {
		return Event{}, false
	}
	if !isNull(f[4]) {
		raw := f[4]
		if raw[0] != '{' || len(raw) > lim.MaxPropsBytes || depth(raw) > lim.MaxPropsDepth {
			return Event{}, false
		}
		if ev.Props, ok = parseObject(raw); !ok {
			return Event{}, false
		}
	}
	return ev, true
}

// tsScan is tsField for the plain cases; false: leave it to tsField.
func tsScan(raw []byte, lim Limits, now time.Time) (time.Time, bool) {
	if isNull(raw) {
		return now, true
	}
	var ts time.Time
	if raw[0] == '"' {
		s, ok := plainString(raw)
		if !ok {
			return time.Time{}, false
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return time.Time{}, false
		}
		ts = t
	} else {
		if scanNumber(raw, 0) != len(raw) {
			return time.Time{}, false
		}
		ms, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || ms != math.Trunc(ms) || math.Abs(ms) > 1e15 {
			return time.Time{}, false
		}
		ts = time.UnixMilli(int64(ms))
	}
	if ts.After(now.Add(lim.MaxFuture)) || ts.Before(now.Add(-lim.Retention)) {
		return time.Time{}, false
	}
	return ts.UTC(), true
}

// decodeOne decodes and validates one event. The common case — a valid event — takes one typed
// Unmarshal; anything unusual is re-decoded field by field to say exactly what is wrong.
func decodeOne(rec json.RawMessage, lim Limits, now time.Time) (Event, []FieldError) {
	if len(rec) == 0 || rec[0] != '{' {
		return Event{}, []FieldError{{Reason: "an event must be a JSON object"}}
	}
	if ev, ok := decodeFast(rec, lim, now); ok {
		return ev, nil
	}
	return decodeSlow(rec, lim, now)
}

func decodeFast(rec json.RawMessage, lim Limits, now time.Time) (Event, bool) {
	var te typedEvent
	if json.Unmarshal(rec, &te) != nil || !validID(te.ID, lim.MaxIDLen) || !ValidType(te.Type) {
		return Event{}, false
	}
	ev := Event{ID: te.ID, Type: te.Type}
	switch {
	case lim.FixedUserID == "" && te.UserID != nil && validID(*te.UserID, lim.MaxIDLen):
		ev.UserID = *te.UserID
	case lim.FixedUserID != "" && (te.UserID == nil || *te.UserID == lim.FixedUserID):
		ev.UserID = lim.FixedUserID
	default:
		return Event{}, false
	}
	var reason string
	if ev.TS, reason = tsField(te.TS, lim, now); reason != "" {
		return Event{}, false
	}
	if ev.Props, reason = propsField(te.Props, lim); reason != "" {
		return Event{}, false
	}
	return ev, true
}

func validID(s string, maxLen int) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f {
			// Control, space or non-ASCII: let the slow path check the runes.
			return false
		}
	}
	return true
}

func decodeSlow(rec json.RawMessage, lim Limits, now time.Time) (Event, []FieldError) {
	var raw rawEvent
	if err := json.Unmarshal(rec, &raw); err != nil {
		return Event{}, []FieldError{{Reason: "invalid JSON: " + err.Error()}}
	}
	var ev Event
	var errs []FieldError
	fail := func(field, reason string) { errs = append(errs, FieldError{Field: field, Reason: reason}) }

	if id, reason := idField(raw.ID, lim.MaxIDLen); reason != "" {
		fail("event_id", reason)
	} else {
		ev.ID = id
	}

	if lim.FixedUserID != "" && isNull(raw.UserID) {
		ev.UserID = lim.FixedUserID
	} else if id, reason := idField(raw.UserID, lim.MaxIDLen); reason != "" {
		fail("user_id", reason)
	} else if lim.FixedUserID != "" && id != lim.FixedUserID {
		fail("user_id", "does not match the user of this request")
	} else {
		ev.UserID = id
	}

	if typ, reason := typeField(raw.Type); reason != "" {
		fail("type", reason)
	} else {
		ev.Type = typ
	}

	if ts, reason := tsField(raw.TS, lim, now); reason != "" {
		fail("ts", reason)
	} else {
		ev.TS = ts
	}

	if props, reason := propsField(raw.Props, lim); reason != "" {
		fail("props", reason)
	} else {
		ev.Props = props
	}
	return ev, errs
}

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

func stringField(raw json.RawMessage) (string, string) {
	if isNull(raw) {
		return "", "required"
	}
	var s string
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", "must be a string"
	}
	return s, ""
}

// idField checks an event or user id: non-empty, at most maxLen bytes, valid UTF-8 of visible
// characters (no spaces or control characters), so ids are safe in keys, logs and headers.
func idField(raw json.RawMessage, maxLen int) (string, string) {
	s, reason := stringField(raw)
	if reason != "" {
		return "", reason
	}
	if s == "" {
		return "", "must not be empty"
	}
	if len(s) > maxLen {
		return "", fmt.Sprintf("longer than %d bytes", maxLen)
	}
	if !utf8.ValidString(s) {
		return "", "not valid UTF-8"
	}
	for _, r := range s {
		if !unicode.IsGraphic(r) || unicode.IsSpace(r) {
			return "", fmt.Sprintf("contains the non-printable or space character %U", r)
		}
	}
	return s, ""
}

// ValidType reports whether t is a valid event type: ^[a-z][a-z0-9_]{0,62}$.
func ValidType(t string) bool {
	if len(t) == 0 || len(t) > 63 || t[0] < 'a' || t[0] > 'z' {
		return false
	}
	for i := 1; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func typeField(raw json.RawMessage) (string, string) {
	s, reason := stringField(raw)
	if reason != "" {
		return "", reason
	}
	if !ValidType(s) {
		return "", "must match ^[a-z][a-z0-9_]{0,62}$"
	}
	return s, ""
}

// tsField accepts an RFC 3339 string or a number of Unix milliseconds; absent or null means now.
func tsField(raw json.RawMessage, lim Limits, now time.Time) (time.Time, string) {
	if isNull(raw) {
		return now, ""
	}
	var ts time.Time
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return time.Time{}, "invalid string"
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return time.Time{}, "not an RFC 3339 time (e.g. 2026-01-02T15:04:05Z)"
		}
		ts = t
	default:
		var ms float64
		if err := json.Unmarshal(raw, &ms); err != nil {
			return time.Time{}, "must be an RFC 3339 string or Unix milliseconds"
		}
		if ms != math.Trunc(ms) || math.Abs(ms) > 1e15 {
			return time.Time{}, "Unix milliseconds must be a whole number within range"
		}
		ts = time.UnixMilli(int64(ms))
	}
	if ts.After(now.Add(lim.MaxFuture)) {
		return time.Time{}, fmt.Sprintf("more than %s in the future", lim.MaxFuture)
	}
	if ts.Before(now.Add(-lim.Retention)) {
		return time.Time{}, fmt.Sprintf("older than the retention of %s", lim.Retention)
	}
	return ts.UTC(), ""
}

// propsField accepts a JSON object within the size and depth limits; absent or null is no props.
func propsField(raw json.RawMessage, lim Limits) (map[string]any, string) {
	if isNull(raw) {
		return nil, ""
	}
	if raw[0] != '{' {
		return nil, "must be a JSON object"
	}
	if len(raw) > lim.MaxPropsBytes {
		return nil, fmt.Sprintf("larger than %d bytes", lim.MaxPropsBytes)
	}
	if d := depth(raw); d > lim.MaxPropsDepth {
		return nil, fmt.Sprintf("nested %d deep, the limit is %d", d, lim.MaxPropsDepth)
	}
	var props map[string]any
	if err := json.Unmarshal(raw, &props); err != nil {
		return nil, "invalid JSON: " + err.Error()
	}
	return props, ""
}

// depth returns the deepest nesting of objects and arrays in valid JSON, without decoding it.
func depth(raw []byte) int {
	d, deepest := 0, 0
	inString, escaped := false, false
	for _, c := range raw {
		switch {
		case inString:
			if escaped {
				escaped = false
			} else if c == '\\' {
				escaped = true
			} else if c == '"' {
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			d++
			deepest = max(deepest, d)
		case c == '}' || c == ']':
			d--
		}
	}
	return deepest
}
