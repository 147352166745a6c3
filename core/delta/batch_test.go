package delta

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/segedge/segedge/core/profile"
)

// sampleDeltas are deltas of every shape the origin publishes.
func sampleDeltas() []*Delta {
	return []*Delta{
		{UserID: "u1", Version: 7, Ruleset: 3, Cause: CauseEvent, Members: []string{"a", "b"}, Entered: []string{"b"},
			Features: []FeatureValue{
				{Key: "score:engagement", Value: profile.DoubleValue(81.5)},
				{Key: "score:loyalty", Value: profile.DoubleValue(42)},
				{Key: "score:tiny", Value: profile.DoubleValue(1e-300)},
				{Key: "count:add_to_cart:30m0s", Value: profile.IntValue(-3)},
				{Key: "trait:plan", Value: profile.StringValue("pro \"plus\" <b>&\n\t\u2028é\x01")},
				{Key: "trait:beta", Value: profile.BoolValue(true)},
				{Key: "trait:off", Value: profile.BoolValue(false)},
			}, AcceptedAt: 1700000000000, TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{UserID: "u2", Version: 1, Ruleset: 3, Cause: CauseExpiry, Members: []string{}, Exited: []string{"a"}, Due: 1700000001000},
		{UserID: "u1", Version: 8, Ruleset: 4, Cause: CauseRuleset, Members: nil},
		{UserID: "ü/😀", Version: 2, Cause: CauseErase, Members: []string{}, Erased: true},
		{UserID: "u1", Version: 9, Ruleset: 4, Cause: CauseEvent, Members: []string{"a"}, Base: 8,
			Features: []FeatureValue{{Key: "score:engagement", Value: profile.DoubleValue(90)}},
			Gone:     []string{"trait:plan", "trait:\"odd\""}, AcceptedAt: 1700000002000},
	}
}

func values(ds []*Delta) []Delta {
	out := make([]Delta, len(ds))
	for i, d := range ds {
		out[i] = *d
	}
	return out
}

func TestEncodeBatchRoundTripsEveryField(t *testing.T) {
	ds := sampleDeltas()
	b, err := EncodeBatch(ds)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != '[' {
		t.Fatalf("batch body starts with %q, want format 1 '['", b[0])
	}
	got, err := DecodeBatch(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := values(ds); !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip\n got %+v\nwant %+v", got, want)
	}
}

// The hand-written encoder must say what encoding/json says: old edges (and anything else
// reading DELTAS with encoding/json) decode it to the same delta.
func TestAppendDeltaDecodesLikeEncodingJSON(t *testing.T) {
	for _, d := range sampleDeltas() {
		fast, err := Encode(d)
		if err != nil {
			t.Fatal(err)
		}
		std, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		var a, b Delta
		if err := json.Unmarshal(fast, &a); err != nil {
			t.Fatalf("encoding/json cannot read %s: %v", fast, err)
		}
		if err := json.Unmarshal(std, &b); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("user %s:\n fast %s\n  std %s", d.UserID, fast, std)
		}
		// Byte for byte, except that encoding/json escapes <, > and & for HTML.
		html := strings.NewReplacer(`\u003c`, "<", `\u003e`, ">", `\u0026`, "&")
		if html.Replace(string(std)) != string(fast) {
			t.Errorf("user %s: bytes differ\n fast %s\n  std %s", d.UserID, fast, std)
		}
	}
}

func TestEncodeRefusesWhatCannotBeSent(t *testing.T) {
	for name, f := range map[string]FeatureValue{
		"NaN":    {Key: "score:x", Value: profile.DoubleValue(math.NaN())},
		"absent": {Key: "trait:x"},
	} {
		if _, err := EncodeBatch([]*Delta{{UserID: "u", Version: 1, Features: []FeatureValue{f}}}); err == nil {
			t.Errorf("%s feature encoded", name)
		}
	}
}

func TestDecodeBatchReadsSingleDeltaMessages(t *testing.T) {
	// What origins before batching published (encoding/json of one delta, format 0).
	old := `{"user_id":"u1","version":7,"ruleset":3,"cause":"event","members":["a"],"entered":["a"],` +
		`"features":[{"k":"score:engagement","t":"d","v":81.5},{"k":"trait:plan","t":"s","v":"pro"}],"accepted_at":1700000000000}`
	got, err := DecodeBatch([]byte(" \n" + old))
	if err != nil {
		t.Fatal(err)
	}
	want := Delta{UserID: "u1", Version: 7, Ruleset: 3, Cause: CauseEvent, Members: []string{"a"}, Entered: []string{"a"},
		Features:   []FeatureValue{{Key: "score:engagement", Value: profile.DoubleValue(81.5)}, {Key: "trait:plan", Value: profile.StringValue("pro")}},
		AcceptedAt: 1700000000000}
	if len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("DecodeBatch(format 0) = %+v", got)
	}
}

func TestDecodeBatchRejectsUnreadableMessages(t *testing.T) {
	for _, bad := range []string{
		``, `   `, `x`, `"a"`, `{`, `[`, `[{"user_id":"u","version":1}`, `{"version":1}`,
		`[{"user_id":"u","version":1,"features":[{"k":"a","t":"q","v":1}]}]`,
		`[{"user_id":"u","version":1,"features":[{"k":"a","t":"d","v":"1"}]}]`,
		`[{"user_id":"u","version":1,"features":[{"k":"a","t":"d","v":1e400}]}]`,
		`[{"user_id":"u","version":1,"features":[{"k":"a","t":"i","v":1.5}]}]`,
		`[{"user_id":"u","version":1,"features":[{"k":"a","t":"b","v":1}]}]`,
		`[{"user_id":"u","version":-1}]`,
	} {
		if ds, err := DecodeBatch([]byte(bad)); err == nil || len(ds) != 0 {
			t.Errorf("DecodeBatch(%q) = %d deltas, %v; want none and an error", bad, len(ds), err)
		}
	}
}

func TestDecodeBatchLeavesOutDeltasAnEdgeCannotUse(t *testing.T) {
	ds, err := DecodeBatch([]byte(`[{"user_id":"a","version":1},{"version":2},{"user_id":"b","version":0},` +
		`{"user_id":"d","version":4,"base":4},{"user_id":"e","version":4,"gone":["trait:x"]},{"user_id":"c","version":3,"base":2}]`))
	var berr *BatchError
	if !errors.As(err, &berr) || berr.Skipped != 4 {
		t.Fatalf("err = %v, want a BatchError with 4 left out (no user, version 0, base not before version, gone without base)", err)
	}
	if len(ds) != 2 || ds[0].UserID != "a" || ds[1].UserID != "c" {
		t.Fatalf("kept %+v, want a and c in order", ds)
	}
}

func TestEncodeBatchesSplitsAtTheLimitInOrder(t *testing.T) {
	var ds []*Delta
	for i := range 50 {
		ds = append(ds, &Delta{UserID: fmt.Sprintf("user-%03d", i), Version: uint64(i + 10), Members: []string{"segment"}})
	}
	one, _ := Encode(ds[0])
	for _, tc := range []struct {
		name  string
		limit int
		parts int
	}{
		{"everything fits", MaxBatchBytes, 1},
		{"ten a message", 10*(len(one)+1) + 1, 5},
		{"one a message", len(one) + 2, 50},
		{"a delta larger than the limit goes alone", 10, 50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bs, err := EncodeBatches(ds, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(bs) != tc.parts {
				t.Fatalf("%d messages, want %d", len(bs), tc.parts)
			}
			var all []Delta
			for _, b := range bs {
				if len(b.Body) > tc.limit && len(b.Deltas) > 1 {
					t.Errorf("message of %d bytes over the limit %d", len(b.Body), tc.limit)
				}
				got, err := DecodeBatch(b.Body)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, values(b.Deltas)) {
					t.Fatalf("message holds %+v, says %+v", got, b.Deltas)
				}
				all = append(all, got...)
			}
			if !reflect.DeepEqual(all, values(ds)) {
				t.Fatal("the messages together are not the deltas in order")
			}
		})
	}
	if bs, err := EncodeBatches(nil, 0); err != nil || len(bs) != 0 {
		t.Errorf("EncodeBatches(nil) = %d messages, %v", len(bs), err)
	}
}

func TestBatchMsgIDNamesTheDeltasInOrder(t *testing.T) {
	a := &Delta{UserID: "a", Version: 1}
	b := &Delta{UserID: "b", Version: 5}
	b6 := &Delta{UserID: "b", Version: 6}
	ab := BatchMsgID([]*Delta{a, b})
	for _, tc := range []struct {
		name string
		ds   []*Delta
		same bool
	}{
		{"the same deltas again", []*Delta{{UserID: "a", Version: 1, Members: []string{"x"}}, {UserID: "b", Version: 5}}, true},
		{"another version", []*Delta{a, b6}, false},
		{"another order", []*Delta{b, a}, false},
		{"one more", []*Delta{a, b, b6}, false},
		{"user and version boundaries", []*Delta{{UserID: "a1", Version: 1}, {UserID: "b", Version: 5}}, false},
	} {
		if got := BatchMsgID(tc.ds); (got == ab) != tc.same {
			t.Errorf("%s: id %s vs %s, same = %v", tc.name, got, ab, got == ab)
		}
	}
	if got := BatchMsgID([]*Delta{a}); got != MsgID(a) {
		t.Errorf("a batch of one has id %q, want the delta's %q", got, MsgID(a))
	}
}

// FuzzDecodeBatch: no input panics, and whatever decodes re-encodes to a message that decodes
// to the same deltas and encodes to the same bytes.
func FuzzDecodeBatch(f *testing.F) {
	b, _ := EncodeBatch(sampleDeltas())
	f.Add(b)
	one, _ := Encode(sampleDeltas()[0])
	f.Add(one)
	for _, s := range []string{``, `[]`, `[{}]`, `{"user_id":"u","version":1}`, `[{"user_id":"u","version":1,"features":[{"k":"a","t":"s","v":"\ud800"}]}]`,
		`[{"user_id":"u","version":18446744073709551615,"members":null,"due":-1}]`, "\x00", `[{"user_id":"u","version":1,"features":[{"k":"a","t":"d","v":-0}]}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		ds, err := DecodeBatch(in)
		// An array decodes as encoding/json decodes it into []Delta (FeatureValue.UnmarshalJSON).
		if trimmed := bytes.TrimLeft(in, " \t\r\n"); len(trimmed) > 0 && trimmed[0] == '[' {
			var ref []Delta
			rerr := json.Unmarshal(trimmed, &ref)
			if (rerr == nil) != (err == nil || errors.As(err, new(*BatchError))) {
				t.Fatalf("DecodeBatch error %v, encoding/json's %v", err, rerr)
			}
			if rerr == nil {
				kept := []Delta{}
				for _, d := range ref {
					if d.check() == nil {
						kept = append(kept, d)
					}
				}
				if len(kept) != len(ds) || (len(ds) > 0 && !reflect.DeepEqual(kept, ds)) {
					t.Fatalf("DecodeBatch = %+v, encoding/json = %+v", ds, kept)
				}
			}
		}
		var berr *BatchError
		if err != nil && !errors.As(err, &berr) {
			if len(ds) != 0 {
				t.Fatalf("unreadable message returned %d deltas", len(ds))
			}
			return
		}
		ptrs := make([]*Delta, len(ds))
		for i := range ds {
			ptrs[i] = &ds[i]
		}
		b1, err := EncodeBatch(ptrs)
		if err != nil {
			t.Fatalf("decoded deltas do not encode: %v", err)
		}
		again, err := DecodeBatch(b1)
		if err != nil {
			t.Fatalf("re-encoded %s does not decode: %v", b1, err)
		}
		ptrs = ptrs[:0]
		for i := range again {
			ptrs = append(ptrs, &again[i])
		}
		b2, err := EncodeBatch(ptrs)
		if err != nil || !bytes.Equal(b1, b2) {
			t.Fatalf("not stable:\n%s\n%s (%v)", b1, b2, err)
		}
	})
}

// FuzzAppendString: the hand-written JSON string encoder reads back as encoding/json reads its own.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "\"\\/", "\x00\x1f\x7f", "é😀", "\xff\xfe", "\u2028\u2029", "<&>", "a\xc3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var fast, std string
		if err := json.Unmarshal(appendString(nil, s), &fast); err != nil {
			t.Fatalf("appendString(%q) is not JSON: %v", s, err)
		}
		b, _ := json.Marshal(s)
		_ = json.Unmarshal(b, &std)
		if fast != std {
			t.Fatalf("appendString(%q) reads as %q, encoding/json's as %q", s, fast, std)
		}
	})
}
