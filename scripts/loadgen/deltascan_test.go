package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/profile"
)

// stamp is a deltaStamp in a comparable form.
type stamp struct {
	user string
	at   int64
}

func stampsOf(ds []deltaStamp) []stamp {
	out := make([]stamp, len(ds))
	for i, d := range ds {
		out[i] = stamp{string(d.UserID), d.AcceptedAt}
	}
	return out
}

// originDelta is a delta as the origin publishes it for an event: with features and members.
func originDelta(user string, version uint64, acceptedAt int64) *delta.Delta {
	return &delta.Delta{
		UserID: user, Version: version, Ruleset: 1, Cause: delta.CauseEvent,
		Members: []string{"engaged"}, Entered: []string{"engaged"},
		Features: []delta.FeatureValue{
			{Key: "count:page_view:720h0m0s", Value: profile.IntValue(5)},
			{Key: "last:plan", Value: profile.StringValue(`pro "team", [x]`)},
			{Key: "score", Value: profile.DoubleValue(1.5e-3)},
			{Key: "vip", Value: profile.BoolValue(true)},
		},
		AcceptedAt:  acceptedAt,
		TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
	}
}

func TestDeltaStampsReadsBothFormatsOfTheOrigin(t *testing.T) {
	batch, err := delta.EncodeBatch([]*delta.Delta{
		originDelta("lg1-u1", 1, 1700000000001),
		originDelta("lg1-u2", 7, 1700000000002),
		{UserID: "lg1-u3", Version: 2, Cause: delta.CauseExpiry, Due: 1700000000009}, // no accepted_at
		originDelta("lg1-\"quoted\"\n\u2028é", 3, 1700000000003),                     // escapes in the id
		{UserID: "lg1-u4", Version: 5, Base: 4, Gone: []string{"trait:plan"}, AcceptedAt: 1700000000005, // a partial delta
			Features: []delta.FeatureValue{{Key: "count:page_view:720h0m0s", Value: profile.IntValue(4)}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	single, err := delta.Encode(originDelta("lg1-u9", 4, 1700000000004))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		msg  string
		want []stamp
	}{
		{"format 1: a batch of deltas", string(batch), []stamp{
			{"lg1-u1", 1700000000001}, {"lg1-u2", 1700000000002}, {"lg1-u3", 0}, {"lg1-\"quoted\"\n\u2028é", 1700000000003},
			{"lg1-u4", 1700000000005},
		}},
		{"format 0: one delta", string(single), []stamp{{"lg1-u9", 1700000000004}}},
		{"format 1, empty", "[]", []stamp{}},
		{"whitespace around and inside", " \n[ {\t\"accepted_at\" : 5 , \"user_id\" : \"a\" } , {} ]\r\n", []stamp{{"a", 5}, {"", 0}}},
		{"null elements and values are deltas without stamps", `[null,{"user_id":null,"accepted_at":null}]`, []stamp{{"", 0}, {"", 0}}},
		{"null leaves an earlier value", `{"user_id":"a","accepted_at":3,"user_id":null,"accepted_at":null}`, []stamp{{"a", 3}}},
		{"the last of duplicate keys wins", `{"user_id":"a","accepted_at":3,"user_id":"b","accepted_at":4}`, []stamp{{"b", 4}}},
		{"negative and extreme accepted_at", `[{"accepted_at":-9223372036854775808},{"accepted_at":9223372036854775807},{"accepted_at":-0}]`,
			[]stamp{{"", -9223372036854775808}, {"", 9223372036854775807}, {"", 0}}},
		{"keys are matched exactly", `{"User_Id":"a","accepted_at ":1}`, []stamp{{"", 0}}},
		{"nested look-alikes are skipped", `{"members":[{"user_id":"x","accepted_at":1}],"features":{"user_id":"y"},"user_id":"z"}`, []stamp{{"z", 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := deltaStamps([]byte(tc.msg), nil)
			if err != nil {
				t.Fatalf("error %v for %s", err, tc.msg)
			}
			if g := stampsOf(got); !slices.Equal(g, tc.want) {
				t.Errorf("got %+v, want %+v", g, tc.want)
			}
		})
	}
}

func TestDeltaStampsAppendsAndKeepsWhatWasThereOnError(t *testing.T) {
	dst := []deltaStamp{{UserID: []byte("earlier"), AcceptedAt: 1}}
	dst, err := deltaStamps([]byte(`[{"user_id":"a","accepted_at":2}]`), dst)
	if err != nil || !slices.Equal(stampsOf(dst), []stamp{{"earlier", 1}, {"a", 2}}) {
		t.Fatalf("got %+v, %v", stampsOf(dst), err)
	}
	// The first delta is fine, the second is not: nothing of the message is kept.
	dst, err = deltaStamps([]byte(`[{"user_id":"b","accepted_at":3},{"user_id":4}]`), dst)
	if err == nil || len(dst) != 2 {
		t.Fatalf("got %+v, %v; want the two earlier stamps and an error", stampsOf(dst), err)
	}
}

func TestDeltaStampsRejectsGarbage(t *testing.T) {
	for _, msg := range []string{
		"", " ", "null", "42", `"x"`, "true", "x",
		"[", "[{", "[{}", "[{},", "[{},]", "[,]", "[{}{}]", `[{}]]`, `{} {}`, "{}x",
		`{"user_id"}`, `{"user_id":}`, `{"user_id" "a"}`, `{"user_id":"a",}`, `{"user_id":"a"`, `{user_id:"a"}`,
		`{"user_id":1}`, `{"user_id":true}`, `{"user_id":["a"]}`, "{\"user_id\":\"a\x01\"}", "{\"x\":\"a\nb\"}", `{"user_id":"a\q"}`,
		`{"user_id":"\u12"}`, `{"user_id":"\u12g4"}`, `{"user_id":"a`, `{"user_id":"a\`,
		`{"accepted_at":1.5}`, `{"accepted_at":1e3}`, `{"accepted_at":"1"}`, `{"accepted_at":9223372036854775808}`,
		`{"accepted_at":-9223372036854775809}`, `{"accepted_at":99999999999999999999999}`, `{"accepted_at":01}`,
		`{"accepted_at":-}`, `{"accepted_at":+1}`, `{"accepted_at":nul}`,
		`{"x":1.}`, `{"x":.5}`, `{"x":1e}`, `{"x":1e+}`, `{"x":-}`, `{"x":tru}`, `{"x":nulll}`, `{"x":[1,]}`, `{"x":{"a"}}`,
		`{"x":{"a":1,}}`, `{"x":[}`, `{"x":{]}`, `{"x":'a'}`,
		`[1]`, `["a"]`, `[[]]`, `[true]`,
		strings.Repeat("[", 20000), `{"x":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`,
	} {
		got, err := deltaStamps([]byte(msg), nil)
		if err == nil || len(got) != 0 {
			t.Errorf("deltaStamps(%.40q) = %+v, %v; want an error and no stamps", msg, stampsOf(got), err)
		}
	}
}

// jsonStamps is how loadgen decoded delta messages before deltaStamps, with encoding/json: the
// reference deltaStamps is compared with.
func jsonStamps(b []byte) ([]stamp, error) {
	type wire struct {
		UserID     string `json:"user_id"`
		AcceptedAt int64  `json:"accepted_at"`
	}
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) > 0 && b[0] == '[' {
		var ws []wire
		if err := json.Unmarshal(b, &ws); err != nil {
			return nil, err
		}
		out := make([]stamp, len(ws))
		for i, w := range ws {
			out[i] = stamp{w.UserID, w.AcceptedAt}
		}
		return out, nil
	}
	var w wire
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, err
	}
	return []stamp{{w.UserID, w.AcceptedAt}}, nil
}

// FuzzDeltaStamps: whatever arrives on DELTAS, deltaStamps does not panic, and where
// encoding/json's reading is the same by definition it agrees with it: the same stamps, or an
// error from both. Excluded from the comparison are what encoding/json reads differently on
// purpose: invalid UTF-8 (replaced by U+FFFD there), keys in another case or spelt with \u
// escapes (matched there), and a top-level value that is not an object or an array (a zero
// delta there, an error here; either way loadgen counts one unreadable message).
func FuzzDeltaStamps(f *testing.F) {
	batch, _ := delta.EncodeBatch([]*delta.Delta{originDelta("lg1-u1", 1, 1700000000001), originDelta("lg1-u2", 2, 0)})
	single, _ := delta.Encode(originDelta("lg1-u3", 3, 1700000000003))
	for _, seed := range []string{
		string(batch), string(single), "[]", "{}", `[null]`, `{"user_id":"a\"b\u00e9","accepted_at":-1}`,
		`{"accepted_at":1.5}`, `[{"user_id":"a"},{"user_id":1}]`, `{"x":[{"y":[1,2e-3,true,false,null,"z"]}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		got, err := deltaStamps(msg, nil)
		if err != nil && len(got) != 0 {
			t.Fatalf("error %v with %d stamps", err, len(got))
		}
		if !utf8.Valid(msg) || bytes.Contains(msg, []byte(`\u`)) {
			return
		}
		lower := bytes.ToLower(msg)
		for _, key := range [][]byte{[]byte("user_id"), []byte("accepted_at")} {
			if bytes.Count(lower, key) != bytes.Count(msg, key) {
				return
			}
		}
		// encoding/json folds the Kelvin sign and long s into k and s when matching keys.
		if bytes.ContainsRune(msg, '\u212a') || bytes.ContainsRune(msg, '\u017f') {
			return
		}
		if t := bytes.TrimLeft(msg, " \t\r\n"); len(t) == 0 || t[0] != '[' && t[0] != '{' {
			return
		}
		want, wantErr := jsonStamps(msg)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("deltaStamps error %v, encoding/json error %v", err, wantErr)
		}
		if err == nil && !slices.Equal(stampsOf(got), want) {
			t.Fatalf("deltaStamps %+v, encoding/json %+v", stampsOf(got), want)
		}
	})
}

// BenchmarkDeltaStamps: what reading one DELTAS message of 8 deltas (a typical worker batch at
// 10k events/s) costs loadgen, with encoding/json (before) and with deltaStamps.
func BenchmarkDeltaStamps(b *testing.B) {
	var ds []*delta.Delta
	for i := range 8 {
		ds = append(ds, originDelta(fmt.Sprintf("lg0a1b2c3d-u%d", 100*i+7), uint64(i+1), 1700000000000+int64(i)))
	}
	msg, err := delta.EncodeBatch(ds)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			if _, err := jsonStamps(msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("scan", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(msg)))
		var dst []deltaStamp
		for b.Loop() {
			if dst, err = deltaStamps(msg, dst[:0]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestDeltaRecorderTakesOnlyThisRunsDeltas(t *testing.T) {
	const start = 1700000000000
	r := newDeltaRecorder("lg1", start)
	r.record([]byte(`[{"user_id":"lg1-u1","accepted_at":1700000000005},{"user_id":"lg2-u1","accepted_at":1700000000005},`+
		`{"user_id":"lg1-u2","accepted_at":1699999999999},{"user_id":"lg1-u3"},{"user_id":"lg1","accepted_at":1700000000005}]`), start+9)
	r.record([]byte(`{"user_id":"lg1-u4","accepted_at":1700000000001}`), start+3)
	r.record([]byte(`[{"user_id":"lg1-u5","accepted_at":1700000000001},{"user_id":`), start+3) // unreadable: one ignored
	want := latencies{4 * time.Millisecond, 2 * time.Millisecond}
	if !slices.Equal(r.lat, want) || r.other != 5 || r.seen() != 7 {
		t.Errorf("latencies %v, %d ignored, %d seen; want %v, 5 ignored (another run, before the run, no accepted_at, "+
			"not the run's prefix, an unreadable message), 7 seen", r.lat, r.other, r.seen(), want)
	}
}
