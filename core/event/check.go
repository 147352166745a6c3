package event

import (
	"bytes"
	"encoding/json"
	"time"
)

// CheckMessage validates the events of an EVENTS message body (the format DecodeMessage reads)
// as Decode validates the events of a POST /v1/events request: lengths of the ids, the type,
// the ts range, the size and depth of props. The origin's and the edge's ingest check every
// event before they publish it; a backend that publishes on EVENTS itself bypasses them, so the
// origin's worker checks such messages with this. now is when the message was stored (ts is
// checked against it). It returns the problems found, FieldError.Index being the event's place
// in the message; nil: every event passes. A body that is not a sequence of JSON values gets
// one error for the value that cannot be read (DecodeMessage refuses such a body anyway).
func CheckMessage(b []byte, lim Limits, now time.Time) []FieldError {
	lim = lim.withDefaults()
	lim.FixedUserID = ""
	var errs []FieldError
	dec := json.NewDecoder(bytes.NewReader(b))
	for i := 0; dec.More(); i++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return append(errs, FieldError{Index: i, Reason: "not a JSON value"})
		}
		_, fes := decodeRecord(raw, lim, now)
		for _, fe := range fes {
			fe.Index = i
			errs = append(errs, fe)
		}
	}
	return errs
}
