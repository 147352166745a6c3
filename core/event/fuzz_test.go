package event

import (
	"testing"
	"time"
)

// FuzzDecode guards that no body, however broken, makes Decode panic, and that every event it
// returns is valid.
func FuzzDecode(f *testing.F) {
	seeds := []string{
		`[{"event_id":"e1","user_id":"u1","type":"page_view","ts":"2026-11-29T11:00:00Z","props":{"a":1}}]`,
		`{"event_id":"e1","user_id":"u1","type":"page_view","ts":1795950000000}`,
		"{\"event_id\":\"e1\",\"user_id\":\"u1\",\"type\":\"a\"}\n{\"event_id\":\"e2\"}\n",
		`[{"props":{"a":[[[[[[]]]]]]}}]`,
		`[{"event_id":"\u0000","user_id":"","type":"","ts":-1e308}]`,
		`[1,"x",null,{}]`,
		`{"props":"\"}{"}`,
		``,
		`[`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), "application/json")
		f.Add([]byte(s), "application/x-ndjson")
	}
	lim := Limits{MaxBodyBytes: 1 << 16, MaxBatch: 50, MaxPropsBytes: 1024}
	f.Fuzz(func(t *testing.T, body []byte, contentType string) {
		evs, errs, err := Decode(body, contentType, lim, now)
		if err != nil && (evs != nil || errs != nil) {
			t.Fatalf("whole-request error %v also returned events", err)
		}
		for _, ev := range evs {
			if ev.ID == "" || ev.UserID == "" || !ValidType(ev.Type) {
				t.Fatalf("invalid event returned: %+v", ev)
			}
			if ev.TS.After(now.Add(DefaultMaxFuture)) || ev.TS.Before(now.Add(-DefaultRetention)) {
				t.Fatalf("ts out of range returned: %v", ev.TS)
			}
			if _, err := EncodeWire(ev, time.Now()); err != nil {
				t.Fatalf("a decoded event does not encode: %v", err)
			}
		}
	})
}

// FuzzDecodeWire guards the consumer side: a corrupt JetStream message is an error, never a panic.
func FuzzDecodeWire(f *testing.F) {
	good, _ := EncodeWire(Event{ID: "e", UserID: "u", Type: "t", TS: now, Props: map[string]any{"a": 1.0}}, now)
	f.Add(good)
	f.Add([]byte(`{"event_id":"e","user_id":"u","type":"t","ts":-9223372036854775808,"accepted_at":1e400}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, _, err := DecodeWire(b)
		if err == nil && (ev.ID == "" || ev.UserID == "" || !ValidType(ev.Type)) {
			t.Fatalf("accepted an invalid event: %+v", ev)
		}
	})
}

// FuzzFastPathAgreesWithSlowPath guards the decoder's fast path: whatever it accepts, the
// field-by-field path accepts too, with the same result.
func FuzzFastPathAgreesWithSlowPath(f *testing.F) {
	f.Add([]byte(`{"event_id":"e1","user_id":"u1","type":"page_view","ts":"2026-11-29T11:00:00Z","props":{"a":1}}`), "")
	f.Add([]byte(`{"event_id":"e1","type":"page_view"}`), "cookie")
	f.Add([]byte(`{"event_id":"e1","user_id":"cookie","type":"a","user_id":"x"}`), "cookie")
	f.Add([]byte(`{"event_id":"é","user_id":"u","type":"a","ts":null,"props":null}`), "")
	f.Fuzz(func(t *testing.T, rec []byte, fixed string) {
		lim := Limits{FixedUserID: fixed}.withDefaults()
		fast, ok := decodeFast(rec, lim, now)
		if !ok {
			return
		}
		slow, errs := decodeSlow(rec, lim, now)
		if len(errs) > 0 {
			t.Fatalf("fast path accepted %s, slow path says %v", rec, errs)
		}
		if fast.ID != slow.ID || fast.UserID != slow.UserID || fast.Type != slow.Type || !fast.TS.Equal(slow.TS) || len(fast.Props) != len(slow.Props) {
			t.Fatalf("fast %+v != slow %+v", fast, slow)
		}
	})
}

// FuzzDecodeMessage guards the worker's decoder of EVENTS messages: no body makes it panic,
// a refused message appends nothing, and every event it returns has an id, a user and a valid
// type.
func FuzzDecodeMessage(f *testing.F) {
	one, _ := EncodeWire(Event{ID: "e", UserID: "u", Type: "t", TS: now, Props: map[string]any{"a": 1.0}}, now)
	f.Add(one)
	f.Add([]byte(string(one) + "\n" + string(one) + "\n"))
	f.Add([]byte(string(one) + "\n{\"event_id\":\"x\"}"))
	f.Add([]byte("{\n \"event_id\": \"e\", \"user_id\": \"u\", \"type\": \"t\"\n}"))
	f.Add([]byte("\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, at, err := DecodeMessage(b, nil, nil)
		if len(evs) != len(at) {
			t.Fatalf("%d events but %d acceptance times", len(evs), len(at))
		}
		if err != nil && len(evs) != 0 {
			t.Fatalf("refused (%v) but appended %d events", err, len(evs))
		}
		if err == nil && len(evs) == 0 {
			t.Fatal("accepted a message of no events")
		}
		for _, ev := range evs {
			if ev.ID == "" || ev.UserID == "" || !ValidType(ev.Type) {
				t.Fatalf("accepted an invalid event: %+v", ev)
			}
		}
		// The worker checks a directly published message it read with CheckMessage: every
		// problem names one of its events, so the others can be applied.
		if err == nil {
			for _, fe := range CheckMessage(b, Limits{}, now) {
				if fe.Index < 0 || fe.Index >= len(evs) || fe.Reason == "" {
					t.Fatalf("CheckMessage problem %+v for a message of %d events", fe, len(evs))
				}
			}
		}
	})
}
