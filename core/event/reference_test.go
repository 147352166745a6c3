package event

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// referenceDecode is Decode as it was before the scanner: encoding/json for everything. The
// fuzz targets below hold the scanner to it.
func referenceDecode(body []byte, contentType string, lim Limits, now time.Time) ([]Event, []FieldError, error) {
	lim = lim.withDefaults()
	if len(body) > lim.MaxBodyBytes {
		return nil, nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrBodyTooLarge, len(body), lim.MaxBodyBytes)
	}
	records, err := split(body, isNDJSON(contentType))
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
		ev, ferrs := decodeOne(rec, lim, now)
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

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

var agreeSeeds = []string{
	`[{"event_id":"e1","user_id":"u1","type":"page_view","ts":"2026-11-29T11:00:00Z","props":{"a":1,"b":[true,null,"x"],"c":{"d":-1.5e3}}}]`,
	` [ {"event_id":"e1","user_id":"u1","type":"a","ts":1795950000000} , {"event_id":"e2","user_id":"u1","type":"b"} ] `,
	`{"event_id":"e1","user_id":"u1","type":"page_view","ts":1795950000000}`,
	"{\"event_id\":\"e1\",\"user_id\":\"u1\",\"type\":\"a\"}\n{\"event_id\":\"e2\"}\n",
	`[{"event_id":"e\u0031","user_id":"u1","type":"a","props":{"k\u00e9":"v\ud83d\ude00","\u006b":"\xff"}}]`,
	`[{"Event_ID":"e1","user_id":"u1","type":"a"},{"event_id":"e2","user_id":"u1","type":"a","event_id":null}]`,
	`[{"event_id":"e1","user_id":"u1","type":"a","props":{"big":1e400}},{"event_id":"e2","user_id":"u1","type":"a","ts":1.5}]`,
	`[{"event_id":"e1","user_id":"u1","type":"a","props":{"a":{"b":{"c":{"d":{"e":{}}}}}}}]`,
	`[{"event_id":"e1","user_id":"u1","type":"a"}] x`,
	`[{"event_id":"e1","user_id":"u1","type":"a",}]`,
	"\v[{\"event_id\":\"e1\",\"user_id\":\"u1\",\"type\":\"a\"}]",
	`[01]`, `[]`, `[[[[[[]]]]]]`, `{}`, ``, `[`, `"x"`,
}

// FuzzDecodeAgreesWithEncodingJSON: Decode (the scanner, falling back to encoding/json) returns
// exactly what the encoding/json decoder returns — the same events, the same field errors, the
// same whole-request error — for any body, media type and cookie user.
func FuzzDecodeAgreesWithEncodingJSON(f *testing.F) {
	for _, s := range agreeSeeds {
		f.Add([]byte(s), "application/json", "")
		f.Add([]byte(s), "application/x-ndjson", "u1")
	}
	lim := Limits{MaxBodyBytes: 1 << 16, MaxBatch: 50, MaxPropsBytes: 1024}
	f.Fuzz(func(t *testing.T, body []byte, contentType, fixed string) {
		lim := lim
		lim.FixedUserID = fixed
		evs, errs, err := Decode(body, contentType, lim, now)
		wevs, werrs, werr := referenceDecode(body, contentType, lim, now)
		if errText(err) != errText(werr) {
			t.Fatalf("error %q, encoding/json says %q", errText(err), errText(werr))
		}
		if !reflect.DeepEqual(errs, werrs) {
			t.Fatalf("field errors %v, encoding/json says %v", errs, werrs)
		}
		if !reflect.DeepEqual(evs, wevs) {
			t.Fatalf("events %+v, encoding/json says %+v", evs, wevs)
		}
	})
}

// FuzzDecodeMessageAgreesWithEncodingJSON: the worker's scanner reads every EVENTS message
// exactly as encoding/json does, errors included.
func FuzzDecodeMessageAgreesWithEncodingJSON(f *testing.F) {
	one, _ := EncodeWire(Event{ID: "e", UserID: "u", Type: "t", TS: now, Props: map[string]any{"a": 1.0, "b": []any{"x", nil}}}, now)
	f.Add(one)
	f.Add([]byte(string(one) + "\n" + string(one) + "\n"))
	f.Add([]byte(string(one) + "{\"event_id\":\"x\"}"))
	f.Add([]byte(`{"event_id":"e","user_id":"u","type":"t","event_id":null,"ts":1.0,"accepted_at":-5}`))
	f.Add([]byte(`{"event_id":"e","user_id":"u","type":"t","TS":12,"props":null}` + "\n" + `{"event_id":"e\u0032","user_id":"u","type":"t","ts":"1"}`))
	f.Add([]byte("{\n \"event_id\": \"e\", \"user_id\": \"u\", \"type\": \"t\"\n}"))
	f.Add([]byte("\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, at, err := DecodeMessage(b, nil, nil)
		wevs, wat, werr := decodeMessageStd(b, nil, nil)
		if errText(err) != errText(werr) {
			t.Fatalf("error %q, encoding/json says %q", errText(err), errText(werr))
		}
		if !reflect.DeepEqual(evs, wevs) || !reflect.DeepEqual(at, wat) {
			t.Fatalf("events %+v at %v, encoding/json says %+v at %v", evs, at, wevs, wat)
		}
	})
}

// FuzzAppendWireMatchesMarshal: the hand-written encoder writes exactly the bytes json.Marshal
// writes, whenever it does not step aside, for ids, types and props of any content.
func FuzzAppendWireMatchesMarshal(f *testing.F) {
	f.Add("e1", "u1", "page_view", `{"path":"/a?b=<c>&d","n":1e21,"m":1e-7,"z":-0,"x":[true,null,{"k":"\u2028\t\u0001"}]}`, int64(1795950000000))
	f.Add("é", "u\x00", "", `{"big":123456789012345678901234567890,"small":0.000001,"a":{"b":[[],{}]}}`, int64(-1))
	f.Add("\xff", "u", "t", `{}`, int64(0))
	f.Fuzz(func(t *testing.T, id, user, typ, props string, ts int64) {
		ev := Event{ID: id, UserID: user, Type: typ, TS: time.UnixMilli(ts)}
		if json.Unmarshal([]byte(props), &ev.Props) != nil {
			ev.Props = nil
		}
		want, werr := json.Marshal(wire{ID: ev.ID, UserID: ev.UserID, Type: ev.Type, TS: ev.TS.UnixMilli(), Props: ev.Props, AcceptedAt: now.UnixNano()})
		got, ok := appendWireFast([]byte("prefix"), ev, now)
		if ok && (werr != nil || string(got) != "prefix"+string(want)) {
			t.Fatalf("appendWireFast wrote %s, json.Marshal %s (%v)", got, want, werr)
		}
		all, err := AppendWire(nil, ev, now)
		if (err != nil) != (werr != nil) || err == nil && string(all) != string(want) {
			t.Fatalf("AppendWire = %s, %v; json.Marshal = %s, %v", all, err, want, werr)
		}
	})
}

// Props of Go types a decoded event never holds (ints, structs) still encode, through
// json.Marshal; a NaN is still refused.
func TestAppendWireOtherTypes(t *testing.T) {
	ev := Event{ID: "e", UserID: "u", Type: "t", TS: now, Props: map[string]any{"n": 3, "s": struct{ A int }{1}, "u": "\xffok"}}
	got, err := AppendWire(nil, ev, now)
	if err != nil || !strings.Contains(string(got), `"props":{"n":3,"s":{"A":1},"u":"\ufffdok"}`) {
		t.Errorf("AppendWire = %s, %v", got, err)
	}
	ev.Props = map[string]any{"x": math.NaN()}
	if _, err := AppendWire(nil, ev, now); err == nil {
		t.Error("a NaN prop was encoded")
	}
}
