package event

import (
	"strings"
	"testing"
	"time"
)

func TestCheckMessageValidatesADirectlyPublishedMessageLikeTheIngest(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	deep := `{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}`
	for _, tc := range []struct {
		name string
		body string
		want []FieldError // Index and Field only
	}{
		{"compact objects, all good", `{"event_id":"e1","user_id":"u","type":"page_view","ts":1700000000000}` + "\n" +
			`{"event_id":"e2","user_id":"u","type":"add_to_cart","props":{"sku":"a"},"accepted_at":1700000000000000000}`, nil},
		{"pretty-printed, no ts (stored time)", "{\n  \"event_id\": \"e1\",\n  \"user_id\": \"u\",\n  \"type\": \"page_view\"\n}\n", nil},
		{"the second of three is bad", `{"event_id":"e1","user_id":"u","type":"page_view"}` + "\n" +
			`{"event_id":"e2","user_id":"u","type":"page_view","props":` + deep + `}` + "\n" +
			`{"event_id":"e3","user_id":"u","type":"page_view"}`, []FieldError{{Index: 1, Field: "props"}}},
		{"ts an hour ahead of the stored time", `{"event_id":"e1","user_id":"u","type":"page_view","ts":1700003600000}`, []FieldError{{Index: 0, Field: "ts"}}},
		{"an id over the length limit", `{"event_id":"` + strings.Repeat("x", 200) + `","user_id":"u","type":"page_view"}`, []FieldError{{Index: 0, Field: "event_id"}}},
		{"no user", `{"event_id":"e1","type":"page_view"}`, []FieldError{{Index: 0, Field: "user_id"}}},
		{"not JSON after a good one", `{"event_id":"e1","user_id":"u","type":"page_view"} {"x":`, []FieldError{{Index: 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := CheckMessage([]byte(tc.body), Limits{}, now)
			if len(got) != len(tc.want) {
				t.Fatalf("errors %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i].Index != tc.want[i].Index || got[i].Field != tc.want[i].Field || got[i].Reason == "" {
					t.Errorf("error %d = %+v, want index %d field %q with a reason", i, got[i], tc.want[i].Index, tc.want[i].Field)
				}
			}
		})
	}
}
