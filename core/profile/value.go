package profile

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// Kind tags a Value. The numbers equal the value-slot kinds of the rule module ABI (wasm/ABI.md),
// so an encoder can write Kind straight into a slot.
type Kind uint8

const (
	KindAbsent Kind = 0
	KindBool   Kind = 1
	KindInt    Kind = 2
	KindDouble Kind = 3
	KindString Kind = 4
)

// Value is one feature value: a small tagged union that is passed and read without allocation.
// Only the field named by Kind is meaningful.
type Value struct {
	Kind   Kind
	Bool   bool
	Int    int64
	Double float64
	Str    string
}

// BoolValue, IntValue, DoubleValue and StringValue build a Value of that kind.
func BoolValue(b bool) Value      { return Value{Kind: KindBool, Bool: b} }
func IntValue(i int64) Value      { return Value{Kind: KindInt, Int: i} }
func DoubleValue(f float64) Value { return Value{Kind: KindDouble, Double: f} }
func StringValue(s string) Value  { return Value{Kind: KindString, Str: s} }
func (v Value) IsAbsent() bool    { return v.Kind == KindAbsent }

// ValueOf converts a JSON-decoded value (as found in event props) to a Value: booleans and
// strings keep their kind; a number is an Int when it is whole and fits int64 exactly, else a
// Double; nil is absent; an object or array becomes its compact JSON text as a String.
func ValueOf(x any) Value {
	switch t := x.(type) {
	case nil:
		return Value{}
	case bool:
		return BoolValue(t)
	case string:
		return StringValue(t)
	case float64:
		if t == math.Trunc(t) && math.Abs(t) < 1<<53 {
			return IntValue(int64(t))
		}
		return DoubleValue(t)
	case float32:
		return ValueOf(float64(t))
	case int:
		return IntValue(int64(t))
	case int64:
		return IntValue(t)
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return IntValue(i)
		}
		if f, err := t.Float64(); err == nil {
			return DoubleValue(f)
		}
		return StringValue(t.String())
	default:
		b, err := json.Marshal(t)
		if err != nil {
			return StringValue(fmt.Sprint(t))
		}
		return StringValue(string(b))
	}
}

// Any returns the value as a plain Go value (nil, bool, int64, float64 or string).
func (v Value) Any() any {
	switch v.Kind {
	case KindBool:
		return v.Bool
	case KindInt:
		return v.Int
	case KindDouble:
		return v.Double
	case KindString:
		return v.Str
	default:
		return nil
	}
}

// String formats the value for logs and explanations.
func (v Value) String() string {
	switch v.Kind {
	case KindBool:
		return strconv.FormatBool(v.Bool)
	case KindInt:
		return strconv.FormatInt(v.Int, 10)
	case KindDouble:
		return strconv.FormatFloat(v.Double, 'g', -1, 64)
	case KindString:
		return strconv.Quote(v.Str)
	default:
		return "absent"
	}
}

// MarshalJSON writes the plain JSON value (null when absent).
func (v Value) MarshalJSON() ([]byte, error) {
	if v.Kind == KindDouble && (math.IsNaN(v.Double) || math.IsInf(v.Double, 0)) {
		return []byte("null"), nil
	}
	return json.Marshal(v.Any())
}

// UnmarshalJSON reads a plain JSON value with the rules of ValueOf.
func (v *Value) UnmarshalJSON(b []byte) error {
	var x any
	if err := json.Unmarshal(b, &x); err != nil {
		return fmt.Errorf("decode profile value: %w", err)
	}
	*v = ValueOf(x)
	return nil
}

// number extracts a finite number from a JSON-decoded prop, for sums.
func number(x any) (float64, bool) {
	var f float64
	switch t := x.(type) {
	case float64:
		f = t
	case float32:
		f = float64(t)
	case int:
		f = float64(t)
	case int64:
		f = float64(t)
	case json.Number:
		var err error
		if f, err = t.Float64(); err != nil {
			return 0, false
		}
	default:
		return 0, false
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false
	}
	return f, true
}
