package rules

import (
	"encoding/binary"
	"math"
	"slices"
	"time"

	"github.com/segedge/segedge/core/profile"
)

// ABIVersion is the rule-module ABI version the compiler emits (wasm/ABI.md).
const ABIVersion = 1

// StringCap is the room a generated module has for the string bytes of one input (request
// path, headers, cookies, string traits). An input that needs more fails that evaluation as a
// whole (every segment "not member, error"); it is never silently truncated.
const StringCap = 64 << 10

// Value-slot kinds (wasm/ABI.md "Input layout").
const (
	kindAbsent   = 0
	kindBool     = 1
	kindInt      = 2
	kindDouble   = 3
	kindString   = 4
	kindInterned = 5
)

// Manifest describes a compiled ruleset: which bit is which segment, which input slot holds
// which feature, which segments need a request, the slots and their variants, and the score
// configurations the profiles must maintain. It is JSON-serialisable: the origin stores it
// with the module and ships both to the edges.
type Manifest struct {
	ABIVersion int                  `json:"abi_version"`
	Segments   []SegmentInfo        `json:"segments"` // bit i = Segments[i]
	Inputs     []Input              `json:"inputs"`   // slot i = Inputs[i]
	Slots      []SlotInfo           `json:"slots,omitempty"`
	Scores     map[string]ScoreInfo `json:"scores,omitempty"`
	// InputCap is the input buffer size of the generated module: 16 + 16·n + StringCap, n its
	// number of inputs.
	InputCap int `json:"input_cap"`
	// Modules are the hand-written modules. When there are any, the generated module computes
	// the first GeneratedSegments segments from the first GeneratedInputs inputs and chooses
	// no slot variants; the rest belong to the modules (see ModuleInfo).
	Modules           []ModuleInfo `json:"modules,omitempty"`
	GeneratedSegments int          `json:"generated_segments,omitempty"`
	GeneratedInputs   int          `json:"generated_inputs,omitempty"`
	// SinceMarks and ScoreMarks are the time marks of since() and score(): the values at which
	// a rule's answer can change with no new event (see TimeMarks). Manifests stored before
	// they existed have none, and their rulesets change memberships at events only.
	SinceMarks map[string][]int64   `json:"since_marks,omitempty"` // event type → seconds
	ScoreMarks map[string][]float64 `json:"score_marks,omitempty"` // score name → value
}

// SegmentInfo is one segment of a ruleset.
type SegmentInfo struct {
	Name        string `json:"name"`
	Rule        string `json:"rule"`
	Description string `json:"description,omitempty"`
	// NeedsRequest: the rule reads request.* itself or through segment(). Such segments are
	// only meaningful at the edge; evaluated without a request they are "not member, error".
	NeedsRequest bool `json:"needs_request,omitempty"`
	// DependsOn lists the segments the rule reads with segment().
	DependsOn []string `json:"depends_on,omitempty"`
	// Module is the path of the hand-written module that computes the segment (Rule is then
	// empty); empty for a CEL rule.
	Module string `json:"module,omitempty"`
}

// Input is one value slot of the module's input: a profile feature or a request field.
type Input struct {
	// Request names a request field (FieldPath, ..., FieldCookie); empty for a profile feature.
	Request string `json:"request,omitempty"`
	// Key is the query parameter, header or cookie name (FieldQuery, FieldHeader, FieldCookie).
	Key string `json:"key,omitempty"`
	// Feature is the profile feature read (Request empty).
	Feature profile.Feature `json:"feature,omitzero"`
	// Interned: the rules only compare this input's string values with constants, so the
	// encoder writes a string as the 1-based index of the equal constant in Strings (kind 5,
	// 0 = none of them) instead of copying its bytes.
	Interned bool     `json:"interned,omitempty"`
	Strings  []string `json:"strings,omitempty"`
}

// SlotInfo is a personalizable slot of a page and its variants, in order of preference.
type SlotInfo struct {
	Name     string        `json:"name"`
	Variants []VariantInfo `json:"variants"`
}

// VariantInfo is one variant of a slot: shown when segment When is a member.
type VariantInfo struct {
	When     string `json:"when"`
	Segment  int    `json:"segment"` // bit of When
	HTML     string `json:"html,omitempty"`
	Fragment string `json:"fragment,omitempty"`
}

// ScoreInfo configures one decayed score (profile.ScoreSpec, in a JSON-friendly form).
type ScoreInfo struct {
	HalfLife time.Duration      `json:"half_life"`
	Weights  map[string]float64 `json:"weights"`
}

// FeatureSource gives a user's profile features. *profile.Profile implements it.
type FeatureSource interface {
	Value(f profile.Feature, now time.Time) (profile.Value, bool)
}

// IndexedFeatureSource is an optional fast path of FeatureSource for a source that has
// resolved a manifest's inputs once (the edge replica, say, mapping Inputs[i] to its own
// feature ids): EncodeInput and the reference evaluator then ask by input index, so no
// profile.Feature is hashed per evaluation. FeatureAt must answer exactly as Value(f, now).
type IndexedFeatureSource interface {
	FeatureSource
	FeatureAt(i int, f profile.Feature, now time.Time) (profile.Value, bool)
}

// RequestSource gives the request context. The edge implements it over its request; a nil
// RequestSource means "no request" (the origin).
type RequestSource interface {
	Path() string
	Country() string
	Device() string // "mobile", "tablet", "desktop" or "bot"
	Hour() int      // 0..23
	Bucket() int    // 0..99, stable per user
	Query(name string) (string, bool)
	Header(name string) (string, bool)
	Cookie(name string) (string, bool)
}

// ScoreSpecs returns the score configurations in the form core/profile uses.
func (m *Manifest) ScoreSpecs() map[string]profile.ScoreSpec {
	out := make(map[string]profile.ScoreSpec, len(m.Scores))
	for name, s := range m.Scores {
		out[name] = profile.ScoreSpec{HalfLife: s.HalfLife, Weights: s.Weights}
	}
	return out
}

// Features lists the profile features the rules read (for profile.NewSpec).
func (m *Manifest) Features() []profile.Feature {
	var fs []profile.Feature
	for _, in := range m.Inputs {
		if in.Request == "" {
			fs = append(fs, in.Feature)
		}
	}
	return fs
}

// TimeMarks returns the time marks of the rules (for profile.NewSpec), so the origin
// re-evaluates a user when since() or score() crosses one. The compiler records a mark for each
// comparison (<, <=, >, >=, ==, !=, either side, anywhere in a rule) of since("type") or
// score("name") with an int or double literal: for since(), the whole seconds at which the
// comparison's answer turns (see profile.Marks); for score(), the literal. Nothing is recorded
// for any other use — arithmetic (since("a") / 60 < 5), a comparison with another feature or a
// request field, since("a") in [...] — nor for what hand-written modules read: such
// memberships still change only when the user's next event (or another due time) is evaluated.
func (m *Manifest) TimeMarks() profile.Marks {
	return profile.Marks{Since: m.SinceMarks, Score: m.ScoreMarks}
}

// Segment returns the bit of a segment by name, or -1.
func (m *Manifest) Segment(name string) int {
	for i, s := range m.Segments {
		if s.Name == name {
			return i
		}
	}
	return -1
}

// words is W of the ABI: 64-bit words per bitset.
func (m *Manifest) words() int { return (len(m.Segments) + 63) / 64 }

// OutputLen is the length of the module's output: 16·W + 4·L bytes.
func (m *Manifest) OutputLen() int { return 16*m.words() + 4*len(m.Slots) }

// value resolves input i for one evaluation. Both the module (through EncodeInput) and the
// reference evaluator see exactly these values: a windowed count or sum, or a score, that the
// source does not have is 0 (no events), and values are coerced to the feature's type; a
// missing trait, since() of a type never seen and a missing query parameter, header or cookie
// are absent (reading them is an error); with no request every request field is absent.
func (m *Manifest) value(i int, prof FeatureSource, ix IndexedFeatureSource, req RequestSource, now time.Time) profile.Value {
	return m.resolve(i, prof, ix, req, now).value()
}

// scalar is a resolved input value the way a slot holds it: the kind, the payload bits (a
// bool as 0/1, an int64, a float64's bits) and a string's bytes. Unlike profile.Value (five
// fields) it fits the compiler's registers, so the encoder's loop moves no structs through
// memory.
type scalar struct {
	kind profile.Kind
	bits uint64
	str  string
}

func (s scalar) value() profile.Value {
	switch s.kind {
	case profile.KindBool:
		return profile.BoolValue(s.bits != 0)
	case profile.KindInt:
		return profile.IntValue(int64(s.bits))
	case profile.KindDouble:
		return profile.DoubleValue(math.Float64frombits(s.bits))
	case profile.KindString:
		return profile.StringValue(s.str)
	}
	return profile.Value{}
}

// resolve is value as a scalar.
func (m *Manifest) resolve(i int, prof FeatureSource, ix IndexedFeatureSource, req RequestSource, now time.Time) scalar {
	in := &m.Inputs[i]
	if in.Request != "" {
		return requestValue(in, req)
	}
	// Each answer goes straight into coerce's registers: assigning it to a variable first
	// costs a struct copy that stalls on store forwarding (Value has five fields, so the
	// compiler keeps it in memory).
	k := featureKind(in.Feature.Kind)
	switch {
	case ix != nil:
		return k.coerce(ix.FeatureAt(i, in.Feature, now))
	case prof != nil:
		return k.coerce(prof.Value(in.Feature, now))
	}
	return k.coerce(profile.Value{}, false)
}

// requestValue is request input in of req (nil: no request, every field absent).
func requestValue(in *Input, req RequestSource) scalar {
	if req == nil {
		return scalar{}
	}
	var s string
	ok := true
	switch in.Request {
	case FieldPath:
		s = req.Path()
	case FieldCountry:
		s = req.Country()
	case FieldDevice:
		s = req.Device()
	case FieldHour:
		return scalar{kind: profile.KindInt, bits: uint64(req.Hour())}
	case FieldBucket:
		return scalar{kind: profile.KindInt, bits: uint64(req.Bucket())}
	case FieldQuery:
		s, ok = req.Query(in.Key)
	case FieldHeader:
		s, ok = req.Header(in.Key)
	case FieldCookie:
		s, ok = req.Cookie(in.Key)
	default:
		ok = false
	}
	if !ok {
		return scalar{}
	}
	return scalar{kind: profile.KindString, str: s}
}

// featureKind is a profile.FeatureKind with the coercion as a method, so a source's two
// results can be passed to it as they are.
type featureKind profile.FeatureKind

// coerce is what a feature of kind k reads as, given what the source answered (v, ok): counts
// and since() are ints, sums and scores doubles (a count, sum or score the source does not
// have is 0, since() absent); a trait is whatever the source has.
func (fk featureKind) coerce(v profile.Value, ok bool) scalar {
	k := profile.FeatureKind(fk)
	vk := v.Kind
	if !ok {
		vk = profile.KindAbsent
	}
	switch k {
	case profile.FeatureTrait:
		switch vk {
		case profile.KindBool:
			if v.Bool {
				return scalar{kind: vk, bits: 1}
			}
			return scalar{kind: vk}
		case profile.KindInt:
			return scalar{kind: vk, bits: uint64(v.Int)}
		case profile.KindDouble:
			return scalar{kind: vk, bits: math.Float64bits(v.Double)}
		case profile.KindString:
			return scalar{kind: vk, str: v.Str}
		}
	case profile.FeatureCount, profile.FeatureSince:
		switch vk {
		case profile.KindInt:
			return scalar{kind: profile.KindInt, bits: uint64(v.Int)}
		case profile.KindDouble:
			return scalar{kind: profile.KindInt, bits: uint64(int64(v.Double))}
		case profile.KindAbsent:
			if k == profile.FeatureCount {
				return scalar{kind: profile.KindInt}
			}
		}
	case profile.FeatureSum, profile.FeatureScore:
		switch vk {
		case profile.KindDouble:
			return scalar{kind: profile.KindDouble, bits: math.Float64bits(v.Double)}
		case profile.KindInt:
			return scalar{kind: profile.KindDouble, bits: math.Float64bits(float64(v.Int))}
		case profile.KindAbsent:
			return scalar{kind: profile.KindDouble} // 0.0
		}
	}
	return scalar{}
}

// EncodeInput appends the module input for one user and request to dst and returns the
// extended slice. It does not allocate when dst has the capacity (16 + 16·len(Inputs) plus the
// string bytes: cap InputCap always suffices for inputs the module accepts). A nil prof means
// an empty profile; a nil req means no request (see SegmentInfo.NeedsRequest).
//
// It is the host's half of every evaluation, so it is written for speed: values go from the
// source into the slot as scalars, and each slot is written whole (two 8-byte stores, no
// zero-fill pass). What the values are is resolve's business, shared with the reference
// evaluator.
func (m *Manifest) EncodeInput(dst []byte, prof FeatureSource, req RequestSource, now time.Time) []byte {
	start := len(dst)
	n := m.generatedInputs()
	slots := start + 16
	dst = slices.Grow(dst, 16+16*n)[:slots+16*n]
	binary.LittleEndian.PutUint64(dst[start:], ABIVersion|uint64(n)<<32)
	binary.LittleEndian.PutUint64(dst[start+8:], uint64(now.UnixMilli()))
	ix, _ := prof.(IndexedFeatureSource)
	for i := range n {
		v := m.resolve(i, prof, ix, req, now)
		// Slot: u8 kind, 3 zero bytes, u32 string length, u64 payload.
		head, payload := uint64(v.kind), v.bits
		if v.kind == profile.KindString {
			if in := &m.Inputs[i]; in.Interned {
				head, payload = kindInterned, 0
				for j, c := range in.Strings {
					if c == v.str {
						payload = uint64(j + 1)
						break
					}
				}
			} else {
				head |= uint64(len(v.str)) << 32
				payload = uint64(len(dst) - start)
				dst = append(dst, v.str...)
			}
		}
		s := (*[16]byte)(dst[slots+16*i:])
		binary.LittleEndian.PutUint64(s[:8], head)
		binary.LittleEndian.PutUint64(s[8:], payload)
	}
	return dst
}

// Result is the outcome of one evaluation, decoded without allocation into slices the caller
// preallocates with NewResult and reuses.
type Result struct {
	Member   []uint64 // bit i: member of segment i
	Error    []uint64 // bit i: segment i's rule raised an error (it is then not a member)
	Variants []int32  // per slot: chosen variant index, -1 = keep the default
}

// NewResult allocates a Result sized for this manifest.
func (m *Manifest) NewResult() *Result {
	w := m.words()
	return &Result{Member: make([]uint64, w), Error: make([]uint64, w), Variants: make([]int32, len(m.Slots))}
}

// IsMember reports whether segment i is a member.
func (r *Result) IsMember(i int) bool { return r.Member[i/64]&(1<<(i%64)) != 0 }

// IsError reports whether segment i's rule raised an error.
func (r *Result) IsError(i int) bool { return r.Error[i/64]&(1<<(i%64)) != 0 }

// Fail sets every segment to "not member, error" and every slot to its default: the result
// of an evaluation that failed as a whole.
func (m *Manifest) Fail(r *Result) {
	for w := range r.Member {
		r.Member[w] = 0
		r.Error[w] = 0
	}
	for i := range m.Segments {
		r.Error[i/64] |= 1 << (i % 64)
	}
	for i := range r.Variants {
		r.Variants[i] = -1
	}
}

// DecodeOutput reads a generated module's output into r (sized by NewResult). With noRequest
// set, segments that need a request are forced to "not member, error". With hand-written
// modules, their segments are left "not member, error" and the slots' variants are chosen from
// the CEL segments: MergeModuleOutput then adds each module's answer.
func (m *Manifest) DecodeOutput(out []byte, r *Result, noRequest bool) {
	gs := m.generatedSegments()
	w := (gs + 63) / 64
	for i := range w {
		r.Member[i] = binary.LittleEndian.Uint64(out[8*i:])
		r.Error[i] = binary.LittleEndian.Uint64(out[8*(w+i):])
	}
	if len(m.Modules) > 0 {
		for i := w; i < len(r.Member); i++ {
			r.Member[i], r.Error[i] = 0, 0
		}
		for i := gs; i < len(m.Segments); i++ {
			r.Error[i/64] |= 1 << (i % 64)
		}
		m.chooseVariants(r)
	} else {
		for i := range m.Slots {
			r.Variants[i] = int32(binary.LittleEndian.Uint32(out[16*w+4*i:]))
		}
	}
	if noRequest {
		m.maskRequest(r)
	}
}

func (m *Manifest) maskRequest(r *Result) {
	for i := range m.Segments {
		if m.Segments[i].NeedsRequest {
			r.Member[i/64] &^= 1 << (i % 64)
			r.Error[i/64] |= 1 << (i % 64)
		}
	}
}
