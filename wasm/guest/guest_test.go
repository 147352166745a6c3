package guest

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"
)

// value is one input slot for encode.
type value struct {
	kind Kind
	u    uint64
	s    string
}

// encode builds an input per ABI.md: header, slots, then string bytes.
func encode(now int64, vals ...value) []byte {
	b := make([]byte, 16+16*len(vals))
	binary.LittleEndian.PutUint32(b, ABIVersion)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(vals)))
	binary.LittleEndian.PutUint64(b[8:], uint64(now))
	for i, v := range vals {
		s := b[16+16*i:]
		s[0] = byte(v.kind)
		payload := v.u
		if v.kind == KindString {
			binary.LittleEndian.PutUint32(s[4:], uint32(len(v.s)))
			payload = uint64(len(b))
			b = append(b, v.s...)
			s = b[16+16*i:]
		}
		binary.LittleEndian.PutUint64(s[8:], payload)
	}
	return b
}

func TestInputDecodesEveryKind(t *testing.T) {
	in, err := parseInput(encode(1700000000123,
		value{kind: KindBool, u: 1},
		value{kind: KindInt, u: uint64(0xffffffffffffffd6)}, // -42
		value{kind: KindDouble, u: math.Float64bits(2.5)},
		value{kind: KindString, s: "/shoes/running"},
		value{kind: KindIntern, u: 7},
		value{kind: KindAbsent},
		value{kind: KindString, s: ""},
	))
	if err != nil {
		t.Fatal(err)
	}
	if in.Len() != 7 || in.Now() != 1700000000123 {
		t.Fatalf("Len, Now = %d, %d", in.Len(), in.Now())
	}
	if v, ok := in.Bool(0); !v || !ok {
		t.Errorf("Bool(0) = %v, %v", v, ok)
	}
	if v, ok := in.Int(1); v != -42 || !ok {
		t.Errorf("Int(1) = %v, %v", v, ok)
	}
	if v, ok := in.Double(2); v != 2.5 || !ok {
		t.Errorf("Double(2) = %v, %v", v, ok)
	}
	if v, ok := in.String(3); v != "/shoes/running" || !ok {
		t.Errorf("String(3) = %q, %v", v, ok)
	}
	if v, ok := in.Intern(4); v != 7 || !ok {
		t.Errorf("Intern(4) = %v, %v", v, ok)
	}
	if in.Kind(5) != KindAbsent || in.Kind(99) != KindAbsent || in.Kind(-1) != KindAbsent {
		t.Errorf("absent / out-of-range slots must report KindAbsent")
	}
	if v, ok := in.String(6); v != "" || !ok {
		t.Errorf("String(6) = %q, %v, want empty and ok", v, ok)
	}
	// Asking for the wrong kind is "not available", never a reinterpretation.
	if _, ok := in.Int(0); ok {
		t.Error("Int on a bool slot reported ok")
	}
	if _, ok := in.String(4); ok {
		t.Error("String on an interned slot reported ok")
	}
}

func TestParseInputRejectsMalformed(t *testing.T) {
	good := encode(0, value{kind: KindString, s: "abc"})
	withString := func(off uint64, l uint32) []byte {
		b := append([]byte(nil), good...)
		binary.LittleEndian.PutUint32(b[16+4:], l)
		binary.LittleEndian.PutUint64(b[16+8:], off)
		return b
	}
	tests := map[string][]byte{
		"short header":        good[:12],
		"wrong version":       append([]byte{2, 0, 0, 0}, good[4:]...),
		"slots past end":      good[:20],
		"string past end":     withString(uint64(len(good)-1), 3),
		"string offset huge":  withString(math.MaxUint64-1, 3),
		"string length wraps": withString(10, math.MaxUint32),
	}
	tests["unknown kind"] = func() []byte { b := append([]byte(nil), good...); b[16] = 9; return b }()
	for name, b := range tests {
		if _, err := parseInput(b); err == nil {
			t.Errorf("%s: parsed, want an error", name)
		}
	}
}

func TestOutputStartsEmptyAndRecords(t *testing.T) {
	s := Shape{Segments: 70, Slots: 2}
	buf := make([]byte, OutputCap)
	for i := range buf {
		buf[i] = 0xEE // leftovers of a previous evaluation
	}
	o := newOutput(s, buf)
	if len(o.b) != 16*2+8 {
		t.Fatalf("output length %d, want %d", len(o.b), s.OutputLen())
	}
	for i := 0; i < 32; i++ {
		if o.b[i] != 0 {
			t.Fatalf("bitsets not cleared at byte %d", i)
		}
	}
	if int32(binary.LittleEndian.Uint32(o.b[32:])) != -1 || int32(binary.LittleEndian.Uint32(o.b[36:])) != -1 {
		t.Fatal("slots must start at -1")
	}
	o.SetMember(0, true)
	o.SetMember(65, true)
	o.SetMember(65, false)
	o.SetMember(69, true)
	o.SetError(3)
	o.SetMember(3, true)  // an errored segment stays a non-member
	o.SetMember(70, true) // out of range: ignored
	o.Choose(1, 4)
	o.Choose(5, 1) // out of range: ignored
	if w := binary.LittleEndian.Uint64(o.b[0:]); w != 1 {
		t.Errorf("membership word 0 = %#x, want 0x1", w)
	}
	if w := binary.LittleEndian.Uint64(o.b[8:]); w != 1<<5 {
		t.Errorf("membership word 1 = %#x, want bit 5 (segment 69)", w)
	}
	if w := binary.LittleEndian.Uint64(o.b[16:]); w != 1<<3 {
		t.Errorf("error word 0 = %#x, want bit 3", w)
	}
	if v := int32(binary.LittleEndian.Uint32(o.b[36:])); v != 4 {
		t.Errorf("slot 1 = %d, want 4", v)
	}
}

func TestEvaluateStatuses(t *testing.T) {
	s := Shape{Segments: 1, Slots: 1}
	in := encode(0)
	out := make([]byte, OutputCap)
	tests := []struct {
		name string
		fn   Func
		in   []byte
		want int32
	}{
		{"ok", func(*Input, *Output) error { return nil }, in, StatusOK},
		{"unregistered", nil, in, StatusUnregistered},
		{"bad input", func(*Input, *Output) error { return nil }, []byte{1}, StatusBadInput},
		{"rule error", func(*Input, *Output) error { return errors.New("nope") }, in, StatusRuleError},
		{"panic", func(_ *Input, o *Output) error { var m map[string]int; m["x"]++; return nil }, in, StatusPanic},
	}
	for _, tt := range tests {
		if got := evaluate(tt.fn, s, tt.in, out); got != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestRegisterRejectsOversizedShape(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Register accepted a shape larger than OutputCap")
		}
	}()
	Register(Shape{Segments: 1, Slots: OutputCap}, func(*Input, *Output) error { return nil })
}

func FuzzParseInput(f *testing.F) {
	f.Add(encode(0))
	f.Add(encode(5, value{kind: KindString, s: "x"}, value{kind: KindInt, u: 3}))
	f.Add([]byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := parseInput(b)
		if err != nil {
			return
		}
		for i := -1; i <= in.Len(); i++ {
			in.Kind(i)
			in.String(i)
			in.Int(i)
		}
	})
}
