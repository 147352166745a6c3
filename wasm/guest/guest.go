// Package guest is the SDK for hand-written segedge rule modules in Go. It
// exports the ABI functions of wasm/ABI.md, owns the input and output
// buffers, decodes the input's value slots and lets user code set segment
// membership, error bits and slot choices:
//
//	func init() {
//		guest.Register(guest.Shape{Segments: 2, Slots: 1}, func(in *guest.Input, out *guest.Output) error {
//			path, _ := in.String(0)
//			out.SetMember(0, strings.Count(path, "/") >= 3)
//			return nil
//		})
//	}
//	func main() {}
//
// Build it as a WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o rules.wasm ./yourmodule
//
// and load it untrusted (it has loops, so the host runs it under a deadline).
// The decoding and output logic is plain Go and is tested natively; only the
// //go:wasmexport glue is wasip1-specific.
package guest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unsafe"
)

// ABIVersion is the ABI the exports speak.
const ABIVersion = 1

// Buffer sizes. The host rejects inputs larger than InputCap before calling.
const (
	InputCap  = 64 << 10
	OutputCap = 16 << 10
)

// Status codes segedge_eval returns. Any non-zero status makes the host treat
// the evaluation as "no segments, every error bit set".
const (
	StatusOK           int32 = 0
	StatusBadInput     int32 = 1 // the input does not follow the ABI layout
	StatusUnregistered int32 = 2 // no Register call ran
	StatusRuleError    int32 = 3 // the registered function returned an error
	StatusPanic        int32 = 4 // the registered function panicked
)

// Kind is the type tag of a value slot.
type Kind uint8

// Value slot kinds (ABI.md, "Input layout").
const (
	KindAbsent Kind = 0
	KindBool   Kind = 1
	KindInt    Kind = 2
	KindDouble Kind = 3
	KindString Kind = 4
	KindIntern Kind = 5
)

// Shape is the output geometry of a ruleset: how many segments and slots.
type Shape struct {
	Segments int
	Slots    int
}

// OutputLen is the output size in bytes: 16*ceil(Segments/64) + 4*Slots.
func (s Shape) OutputLen() int { return 16*words(s.Segments) + 4*s.Slots }

func words(segments int) int { return (segments + 63) / 64 }

// Func evaluates every segment of the module for one input. Returning an
// error makes the whole evaluation fail closed (status StatusRuleError); to
// flag one segment, use Output.SetError.
type Func func(in *Input, out *Output) error

var (
	registered Func
	shape      Shape
	inBuf      [InputCap]byte
	outBuf     [OutputCap]byte
)

// Register installs the module's evaluation function; call it from init.
// It panics if the shape does not fit OutputCap (a build-time mistake: the
// module then fails to instantiate and the host rejects it at load).
func Register(s Shape, fn Func) {
	if s.Segments < 0 || s.Slots < 0 || s.OutputLen() > OutputCap {
		panic(fmt.Sprintf("guest.Register: shape %+v needs %d output bytes, cap is %d", s, s.OutputLen(), OutputCap))
	}
	if fn == nil {
		panic("guest.Register: nil func")
	}
	shape, registered = s, fn
}

// evaluate runs the registered function over input and fills output. It is
// the body of segedge_eval, separated from the export so it runs natively in
// tests.
func evaluate(fn Func, s Shape, input, output []byte) (status int32) {
	if fn == nil {
		return StatusUnregistered
	}
	in, err := parseInput(input)
	if err != nil {
		return StatusBadInput
	}
	out := newOutput(s, output)
	defer func() {
		if recover() != nil {
			status = StatusPanic
		}
	}()
	if err := fn(&in, &out); err != nil {
		return StatusRuleError
	}
	return StatusOK
}

// Input is the decoded view of one evaluation's input. Strings returned by
// String alias the input buffer: they are valid only during the call (copy
// them with strings.Clone to keep them).
type Input struct {
	b   []byte
	n   int
	now int64
}

var errBadInput = errors.New("input does not follow the ABI layout")

func parseInput(b []byte) (Input, error) {
	if len(b) < 16 || binary.LittleEndian.Uint32(b) != ABIVersion {
		return Input{}, errBadInput
	}
	n := binary.LittleEndian.Uint32(b[4:])
	if uint64(n)*16+16 > uint64(len(b)) {
		return Input{}, errBadInput
	}
	in := Input{b: b, n: int(n), now: int64(binary.LittleEndian.Uint64(b[8:]))}
	for i := 0; i < in.n; i++ {
		s := in.slot(i)
		if Kind(s[0]) > KindIntern {
			return Input{}, errBadInput
		}
		if Kind(s[0]) == KindString {
			l, off := binary.LittleEndian.Uint32(s[4:]), binary.LittleEndian.Uint64(s[8:])
			if off > uint64(len(b)) || uint64(l) > uint64(len(b))-off {
				return Input{}, errBadInput
			}
		}
	}
	return in, nil
}

func (in *Input) slot(i int) []byte { return in.b[16+16*i : 32+16*i] }

func (in *Input) payload(i int, want Kind) (uint64, bool) {
	if i < 0 || i >= in.n {
		return 0, false
	}
	s := in.slot(i)
	if Kind(s[0]) != want {
		return 0, false
	}
	return binary.LittleEndian.Uint64(s[8:]), true
}

// Len is the number of value slots.
func (in *Input) Len() int { return in.n }

// Now is the evaluation time, Unix milliseconds.
func (in *Input) Now() int64 { return in.now }

// Kind is slot i's kind; KindAbsent for a missing value or an i out of range.
func (in *Input) Kind(i int) Kind {
	if i < 0 || i >= in.n {
		return KindAbsent
	}
	return Kind(in.slot(i)[0])
}

// Bool returns slot i as a bool; ok is false if it is absent or not a bool.
func (in *Input) Bool(i int) (v, ok bool) {
	p, ok := in.payload(i, KindBool)
	return p != 0, ok
}

// Int returns slot i as an int64; ok is false if it is absent or not an int.
func (in *Input) Int(i int) (int64, bool) {
	p, ok := in.payload(i, KindInt)
	return int64(p), ok
}

// Double returns slot i as a float64; ok is false if it is absent or not a double.
func (in *Input) Double(i int) (float64, bool) {
	p, ok := in.payload(i, KindDouble)
	return math.Float64frombits(p), ok
}

// String returns slot i as a string aliasing the input buffer (valid for this
// call only); ok is false if it is absent or not a string. An interned string
// (KindIntern) is reported by Intern, not here.
func (in *Input) String(i int) (string, bool) {
	off, ok := in.payload(i, KindString)
	if !ok {
		return "", false
	}
	l := binary.LittleEndian.Uint32(in.slot(i)[4:])
	if l == 0 {
		return "", true
	}
	return unsafe.String(&in.b[off], int(l)), true
}

// Intern returns slot i's intern id (0: not one of the compile-time
// constants); ok is false if it is absent or not interned.
func (in *Input) Intern(i int) (uint64, bool) { return in.payload(i, KindIntern) }

// Output is where the function writes its results. It starts every
// evaluation with no memberships, no errors and every slot at -1 (keep the
// default content).
type Output struct {
	b     []byte
	shape Shape
	w     int
}

func newOutput(s Shape, b []byte) Output {
	o := Output{b: b[:s.OutputLen()], shape: s, w: words(s.Segments)}
	clear(o.b[:16*o.w])
	for i := 0; i < s.Slots; i++ {
		binary.LittleEndian.PutUint32(o.b[16*o.w+4*i:], math.MaxUint32) // -1
	}
	return o
}

// Segments is the number of segments in the shape.
func (o *Output) Segments() int { return o.shape.Segments }

// Slots is the number of slots in the shape.
func (o *Output) Slots() int { return o.shape.Slots }

func (o *Output) setBit(base, seg int, on bool) {
	if seg < 0 || seg >= o.shape.Segments {
		return
	}
	at := base + 8*(seg/64)
	word := binary.LittleEndian.Uint64(o.b[at:])
	if on {
		word |= 1 << (seg % 64)
	} else {
		word &^= 1 << (seg % 64)
	}
	binary.LittleEndian.PutUint64(o.b[at:], word)
}

func (o *Output) bit(base, seg int) bool {
	if seg < 0 || seg >= o.shape.Segments {
		return false
	}
	return binary.LittleEndian.Uint64(o.b[base+8*(seg/64):])&(1<<(seg%64)) != 0
}

// SetMember sets whether the user is in segment seg. Out-of-range segments
// are ignored. A segment with its error bit set stays a non-member.
func (o *Output) SetMember(seg int, member bool) {
	o.setBit(0, seg, member && !o.bit(8*o.w, seg))
}

// SetError flags segment seg's rule as failed: it is then not a member.
func (o *Output) SetError(seg int) {
	o.setBit(8*o.w, seg, true)
	o.setBit(0, seg, false)
}

// Member reports what SetMember recorded for seg.
func (o *Output) Member(seg int) bool { return o.bit(0, seg) }

// Choose picks variant for slot (-1 keeps the default). Out-of-range slots
// are ignored.
func (o *Output) Choose(slot, variant int) {
	if slot < 0 || slot >= o.shape.Slots || variant < -1 || variant > math.MaxInt32 {
		return
	}
	binary.LittleEndian.PutUint32(o.b[16*o.w+4*slot:], uint32(int32(variant)))
}
