package redis

import (
	"testing"
	"time"

	"github.com/segedge/segedge/core/profile"
)

func TestDecodeProfileRejectsCorruptFields(t *testing.T) {
	for _, kv := range [][2]string{
		{"v", "x"}, {"c", ""}, {"l:page_view", "1.5"}, {"t:plan", "no-separator"}, {"t:plan", "1|x"},
		{"t:age", "1|iNaN"}, {"n:60000:a", "1:2,3"}, {"n:60000:a", "1:x"}, {"n:0:a", "1:1"},
		{"o:s", "1|2"}, {"o:s", "a|2|3"},
	} {
		if _, err := decodeProfile("u", []any{kv[0], kv[1]}); err == nil {
			t.Errorf("field %q = %q decoded without error", kv[0], kv[1])
		}
	}
}

func TestTraitValuesRoundTrip(t *testing.T) {
	for _, v := range []profile.Value{
		profile.BoolValue(true), profile.BoolValue(false), profile.IntValue(-42), profile.DoubleValue(0.1),
		profile.StringValue(""), profile.StringValue("a|b,c:d"), {},
	} {
		got, err := decodeValue(encodeValue(v))
		if err != nil || got != v {
			t.Errorf("%v → %q → %v, %v", v, encodeValue(v), got, err)
		}
	}
}

// FuzzDecodeProfile guards the reader of stored hashes: a corrupt field is an error, never a panic.
func FuzzDecodeProfile(f *testing.F) {
	for _, kv := range [][2]string{
		{"v", "3"}, {"c", "1796126340000"}, {"l:page_view", "1796126340000"}, {"t:plan", "1796126340000|spro"},
		{"n:60000:add_to_cart", "29935439:1,29935440:2"}, {"s:3600000:purchase:amount", "498924:12.5"},
		{"o:engagement", "12.5|1796126340000|604800000"},
	} {
		f.Add(kv[0], kv[1])
	}
	f.Fuzz(func(t *testing.T, field, value string) {
		p, err := decodeProfile("u", []any{field, value})
		if err != nil {
			return
		}
		for k := range p.Series {
			p.Value(profile.Feature{Kind: profile.FeatureCount, Name: k.Type, Window: k.Res}, time.Now())
		}
	})
}
