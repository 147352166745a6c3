package event

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// ndjson joins the wire objects of evs into one EVENTS message, as the ingest publisher does.
func ndjson(t testing.TB, accepted time.Time, evs ...Event) []byte {
	t.Helper()
	var b []byte
	for i, ev := range evs {
		if i > 0 {
			b = append(b, '\n')
		}
		var err error
		if b, err = AppendWire(b, ev, accepted); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func TestDecodeMessageReadsEveryEventInOrder(t *testing.T) {
	accepted := now.Add(987 * time.Nanosecond)
	evs := []Event{
		{ID: "e1", UserID: "u1", Type: "page_view", TS: now.Add(-time.Minute), Props: map[string]any{"path": "/a\nb", "n": 1.5}},
		{ID: "e2", UserID: "u2", Type: "add_to_cart", TS: now},
		{ID: "e3", UserID: "u1", Type: "purchase_completed", TS: now, Props: map[string]any{"items": []any{"x", nil, true}}},
	}
	prev := []Event{{ID: "earlier"}}
	got, at, err := DecodeMessage(ndjson(t, accepted, evs...), prev, []time.Time{{}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || len(at) != 4 || got[0].ID != "earlier" {
		t.Fatalf("DecodeMessage appended %d events, %d times; want 3 after the one given", len(got)-1, len(at)-1)
	}
	for i, ev := range evs {
		if !reflect.DeepEqual(got[i+1], ev) {
			t.Errorf("event %d = %+v, want %+v", i, got[i+1], ev)
		}
		if !at[i+1].Equal(accepted) {
			t.Errorf("event %d accepted at %v, want %v", i, at[i+1], accepted)
		}
	}
}

// A message of one event is what every release before batching published, and what a backend
// may publish itself: it still decodes, compact or pretty-printed.
func TestDecodeMessageReadsSingleEventMessages(t *testing.T) {
	for _, body := range []string{
		`{"event_id":"e","user_id":"u","type":"t","ts":1795950000000,"accepted_at":1795950000000000000}`,
		"\n  {\n    \"event_id\": \"e\",\n    \"user_id\": \"u\",\n    \"type\": \"t\",\n    \"ts\": 1795950000000\n  }\n",
		`{"event_id":"e","user_id":"u","type":"t","ts":1795950000000,"unknown":{"x":[1]}}` + "\n",
	} {
		evs, _, err := DecodeMessage([]byte(body), nil, nil)
		if err != nil || len(evs) != 1 || evs[0].ID != "e" || evs[0].UserID != "u" || evs[0].TS.UnixMilli() != 1795950000000 {
			t.Errorf("DecodeMessage(%q) = %+v, %v; want the one event", body, evs, err)
		}
	}
}

// A message is read whole or not at all: one broken event makes the whole message unreadable
// (the worker terminates it), and nothing of it is appended.
func TestDecodeMessageRefusesBrokenMessagesWhole(t *testing.T) {
	good := string(ndjson(t, now, Event{ID: "g", UserID: "u", Type: "t", TS: now}))
	for _, tc := range []struct {
		name, body string
		unknown    bool
	}{
		{"empty", "", true},
		{"only spaces", " \n\t", true},
		{"a future binary version", "\x02binary", true},
		{"an array", "[" + good + "]", true},
		{"not JSON", "not an event", true},
		{"bad event after a good one", good + "\n" + `{"event_id":"b","type":"t"}`, false},
		{"bad type in the middle", good + "\n" + `{"event_id":"b","user_id":"u","type":"Bad"}` + "\n" + good, false},
		{"truncated", good + "\n" + good[:len(good)/2], false},
		{"trailing garbage", good + "\n,", false},
		{"a number after an event", good + "\n1", false},
		{"null", "null", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prev := []Event{{ID: "earlier"}}
			evs, at, err := DecodeMessage([]byte(tc.body), prev, []time.Time{now})
			if err == nil {
				t.Fatalf("accepted %q as %+v", tc.body, evs)
			}
			if len(evs) != 1 || len(at) != 1 {
				t.Errorf("a refused message appended events: %d, %d", len(evs), len(at))
			}
			if errors.Is(err, ErrUnknownFormat) != tc.unknown {
				t.Errorf("error %v: unknown format = %v, want %v", err, !tc.unknown, tc.unknown)
			}
		})
	}
}

func TestMessageID(t *testing.T) {
	if got := MessageID([]string{"e1"}); got != "e1" {
		t.Errorf("one event's message id = %q, want its event id (as before batching)", got)
	}
	a, b := MessageID([]string{"e1", "e2"}), MessageID([]string{"e1", "e2"})
	if a != b || !strings.HasPrefix(a, "b-") || len(a) != 34 {
		t.Errorf("message ids %q, %q: want the same b-<32 hex> for the same events", a, b)
	}
	seen := map[string]string{a: "e1,e2"}
	for _, ids := range [][]string{{"e2", "e1"}, {"e1e", "2"}, {"e1", "e2", "e3"}, {"e1\ne2"}, {"e1", "e2", ""}} {
		id := MessageID(ids)
		if prev, dup := seen[id]; dup {
			t.Errorf("%q and %s share the message id %q", ids, prev, id)
		}
		seen[id] = fmt.Sprint(ids)
	}
}
