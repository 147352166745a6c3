package event

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func TestDecodeAcceptsArrayObjectAndNDJSON(t *testing.T) {
	tests := []struct {
		name, contentType, body string
		want                    int
	}{
		{"array", "application/json", `[{"event_id":"e1","user_id":"u1","type":"page_view"},{"event_id":"e2","user_id":"u1","type":"add_to_cart"}]`, 2},
		{"single object", "application/json", `{"event_id":"e1","user_id":"u1","type":"page_view"}`, 1},
		{"pretty object", "", "{\n  \"event_id\": \"e1\",\n  \"user_id\": \"u1\",\n  \"type\": \"page_view\"\n}\n", 1},
		{"ndjson by content type", "application/x-ndjson; charset=utf-8", "{\"event_id\":\"e1\",\"user_id\":\"u1\",\"type\":\"a\"}\n\n{\"event_id\":\"e2\",\"user_id\":\"u1\",\"type\":\"b\"}\n", 2},
		{"ndjson sniffed", "", "{\"event_id\":\"e1\",\"user_id\":\"u1\",\"type\":\"a\"}\n{\"event_id\":\"e2\",\"user_id\":\"u1\",\"type\":\"b\"}", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			evs, errs, err := Decode([]byte(tc.body), tc.contentType, Limits{}, now)
			if err != nil || len(errs) != 0 {
				t.Fatalf("Decode: err=%v field errors=%v", err, errs)
			}
			if len(evs) != tc.want {
				t.Fatalf("got %d events, want %d", len(evs), tc.want)
			}
			if !evs[0].TS.Equal(now) {
				t.Errorf("missing ts became %v, want the server time %v", evs[0].TS, now)
			}
		})
	}
}

func TestDecodeTimestamps(t *testing.T) {
	tests := []struct {
		ts     string
		want   time.Time
		reason string
	}{
		{`"2026-11-29T11:59:00Z"`, now.Add(-time.Minute), ""},
		{`"2026-11-29T12:59:00+01:00"`, now.Add(-time.Minute), ""},
		{`1795953540000`, now.Add(-time.Minute), ""},
		{`null`, now, ""},
		{`"yesterday"`, time.Time{}, "not an RFC 3339 time"},
		{`1.5`, time.Time{}, "whole number"},
		{`true`, time.Time{}, "RFC 3339 string or Unix milliseconds"},
		{`"2026-11-29T12:06:00Z"`, time.Time{}, "in the future"},
		{`"2026-11-29T12:04:00Z"`, now.Add(4 * time.Minute), ""},
		{`"2026-06-01T00:00:00Z"`, time.Time{}, "older than the retention"},
	}
	for _, tc := range tests {
		t.Run(tc.ts, func(t *testing.T) {
			body := `[{"event_id":"e","user_id":"u","type":"t","ts":` + tc.ts + `}]`
			evs, errs, err := Decode([]byte(body), "application/json", Limits{}, now)
			if err != nil {
				t.Fatal(err)
			}
			if tc.reason != "" {
				if len(errs) != 1 || errs[0].Field != "ts" || !strings.Contains(errs[0].Reason, tc.reason) {
					t.Fatalf("errors = %v, want one ts error containing %q", errs, tc.reason)
				}
				return
			}
			if len(errs) != 0 || !evs[0].TS.Equal(tc.want) {
				t.Fatalf("ts = %v (errors %v), want %v", evs, errs, tc.want)
			}
		})
	}
}

func TestDecodeRejectsBadEventsFieldByFieldAndKeepsGoodOnes(t *testing.T) {
	long := strings.Repeat("x", 129)
	deep := `{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}`
	body := `[
		{"event_id":"ok1","user_id":"u","type":"page_view","props":{"path":"/"}},
		{"user_id":"u","type":"page_view"},
		{"event_id":"","user_id":"u","type":"page_view"},
		{"event_id":"` + long + `","user_id":"u","type":"page_view"},
		{"event_id":"has space","user_id":"u","type":"page_view"},
		{"event_id":"e","user_id":7,"type":"page_view"},
		{"event_id":"e","user_id":"u","type":"PageView"},
		{"event_id":"e","user_id":"u","type":"page_view","props":[1]},
		{"event_id":"e","user_id":"u","type":"page_view","props":` + deep + `},
		"not an object",
		{"event_id":"ok2","user_id":"u","type":"a_1"},
		{"event_id":"e\u0007","user_id":"u","type":"x"}
	]`
	evs, errs, err := Decode([]byte(body), "application/json", Limits{}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].ID != "ok1" || evs[1].ID != "ok2" {
		t.Fatalf("good events = %+v, want ok1 and ok2", evs)
	}
	if evs[0].Props["path"] != "/" {
		t.Errorf("props = %v", evs[0].Props)
	}
	want := []FieldError{
		{1, "event_id", "required"},
		{2, "event_id", "must not be empty"},
		{3, "event_id", "longer than 128 bytes"},
		{4, "event_id", "contains the non-printable or space character U+0020"},
		{5, "user_id", "must be a string"},
		{6, "type", "must match ^[a-z][a-z0-9_]{0,62}$"},
		{7, "props", "must be a JSON object"},
		{8, "props", "nested 6 deep, the limit is 5"},
		{9, "", "an event must be a JSON object"},
		{11, "event_id", "contains the non-printable or space character U+0007"},
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d field errors %v, want %d", len(errs), errs, len(want))
	}
	for i := range want {
		if errs[i] != want[i] {
			t.Errorf("error %d = %+v, want %+v", i, errs[i], want[i])
		}
	}
}

func TestDecodeWholeRequestErrors(t *testing.T) {
	one := `{"event_id":"e","user_id":"u","type":"t"}`
	tests := []struct {
		name string
		body string
		lim  Limits
		want error
	}{
		{"body too large", `[` + one + `]`, Limits{MaxBodyBytes: 10}, ErrBodyTooLarge},
		{"batch too large", `[` + one + `,` + one + `,` + one + `]`, Limits{MaxBatch: 2}, ErrBatchTooLarge},
		{"empty", "  \n ", Limits{}, ErrMalformed},
		{"empty array", "[]", Limits{}, ErrMalformed},
		{"broken array", `[` + one, Limits{}, ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			evs, errs, err := Decode([]byte(tc.body), "application/json", tc.lim, now)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if evs != nil || errs != nil {
				t.Errorf("a whole-request error returned events %v / %v", evs, errs)
			}
		})
	}
}

func TestDecodePropsSizeLimit(t *testing.T) {
	body := `{"event_id":"e","user_id":"u","type":"t","props":{"k":"` + strings.Repeat("v", 100) + `"}}`
	_, errs, err := Decode([]byte(body), "", Limits{MaxPropsBytes: 50}, now)
	if err != nil || len(errs) != 1 || errs[0].Reason != "larger than 50 bytes" {
		t.Fatalf("err=%v errs=%v, want a props size error", err, errs)
	}
}

func TestDecodeFixedUserID(t *testing.T) {
	body := `[{"event_id":"a","type":"t"},{"event_id":"b","user_id":"cookie-user","type":"t"},{"event_id":"c","user_id":"other","type":"t"}]`
	evs, errs, err := Decode([]byte(body), "", Limits{FixedUserID: "cookie-user"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].UserID != "cookie-user" || evs[1].UserID != "cookie-user" {
		t.Errorf("events = %+v, want a and b for cookie-user", evs)
	}
	if len(errs) != 1 || errs[0].Index != 2 || errs[0].Field != "user_id" {
		t.Errorf("errors = %v, want user_id mismatch on event 2", errs)
	}
}

func TestPartitionIsStableFNV1a(t *testing.T) {
	// Fixed values: the partition function is part of the wire contract and must never change.
	tests := []struct {
		user string
		p    int
		want int
	}{
		{"", 8, int(uint32(2166136261) % 8)},
		{"a", 1000, int(uint32(0xe40c292c) % 1000)},
		{"user-42", 0, 0},
		{"user-42", -3, 0},
	}
	for _, tc := range tests {
		if got := Partition(tc.user, tc.p); got != tc.want {
			t.Errorf("Partition(%q, %d) = %d, want %d", tc.user, tc.p, got, tc.want)
		}
	}
	seen := map[int]int{}
	for i := range 8000 {
		seen[Partition("user-"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+strconv.Itoa(i), 8)]++
	}
	for p := range 8 {
		if seen[p] < 600 {
			t.Errorf("partition %d got %d of 8000 users: the hash spreads badly", p, seen[p])
		}
	}
}

func TestWireRoundTrip(t *testing.T) {
	ev := Event{ID: "e1", UserID: "u1", Type: "purchase_completed", TS: now.Add(-time.Second),
		Props: map[string]any{"amount": 12.5, "sku": "A"}}
	accepted := now.Add(123456 * time.Nanosecond)
	b, err := EncodeWire(ev, accepted)
	if err != nil {
		t.Fatal(err)
	}
	got, gotAccepted, err := DecodeWire(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != ev.ID || got.UserID != ev.UserID || got.Type != ev.Type || !got.TS.Equal(ev.TS) ||
		got.Props["amount"] != 12.5 || got.Props["sku"] != "A" {
		t.Errorf("round trip = %+v, want %+v", got, ev)
	}
	if !gotAccepted.Equal(accepted) {
		t.Errorf("accepted_at = %v, want %v", gotAccepted, accepted)
	}
	for _, bad := range []string{`{`, `{"event_id":"e","type":"t"}`, `{"event_id":"e","user_id":"u","type":"Bad"}`} {
		if _, _, err := DecodeWire([]byte(bad)); err == nil {
			t.Errorf("DecodeWire(%s) accepted a broken message", bad)
		}
	}
}

func BenchmarkDecode100(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("[")
	for i := range 100 {
		if i > 0 {
			sb.WriteString(",")
		}
		sb.WriteString(`{"event_id":"e` + strconv.Itoa(i) + `","user_id":"user-42","type":"page_view","ts":"2026-11-29T11:59:00Z","props":{"path":"/products/42","ref":"google","ms":120}}`)
	}
	sb.WriteString("]")
	body := []byte(sb.String())
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		evs, errs, err := Decode(body, "application/json", Limits{}, now)
		if err != nil || len(errs) != 0 || len(evs) != 100 {
			b.Fatal(err, errs)
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "events/s")
}
