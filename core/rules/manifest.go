package rules

import (
	"encoding/binary"
	"math"
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
	in := &m.Inputs[i]
	if in.Request != "" {
		if req == nil {
			return profile.Value{}
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
			return profile.IntValue(int64(req.Hour()))
		case FieldBucket:
			return profile.IntValue(int64(req.Bucket()))
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
			return profile.Value{}
		}
		return profile.StringValue(s)
	}
	var v profile.Value
	ok := false
	if ix != nil {
		v, ok = ix.FeatureAt(i, in.Feature, now)
	} else if prof != nil {
		v, ok = prof.Value(in.Feature, now)
	}
	switch in.Feature.Kind {
	case profile.FeatureTrait:
		if !ok {
			return profile.Value{}
		}
		return v
	case profile.FeatureCount, profile.FeatureSince:
		if !ok || v.Kind == profile.KindAbsent {
			if in.Feature.Kind == profile.FeatureSince {
				return profile.Value{}
			}
			return profile.IntValue(0)
		}
		switch v.Kind {
		case profile.KindInt:
			return v
		case profile.KindDouble:
			return profile.IntValue(int64(v.Double))
		}
		return profile.Value{}
	case profile.FeatureSum, profile.FeatureScore:
		if !ok || v.Kind == profile.KindAbsent {
			return profile.DoubleValue(0)
		}
		switch v.Kind {
		case profile.KindDouble:
			return v
		case profile.KindInt:
			return profile.DoubleValue(float64(v.Int))
		}
		return profile.Value{}
	}
	return profile.Value{}
}

// EncodeInput appends the module input for one user and request to dst and returns the
// extended slice. It does not allocate when dst has the capacity (16 + 16·len(Inputs) plus the
// string bytes: cap InputCap always suffices for inputs the module accepts). A nil prof means
// an empty profile; a nil req means no request (see SegmentInfo.NeedsRequest).
func (m *Manifest) EncodeInput(dst []byte, prof FeatureSource, req RequestSource, now time.Time) []byte {
	start := len(dst)
	n := m.generatedInputs()
	dst = binary.LittleEndian.AppendUint32(dst, ABIVersion)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(n))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(now.UnixMilli()))
	slots := len(dst)
	for range n {
		dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	}
	ix, _ := prof.(IndexedFeatureSource)
	for i := range n {
		v := m.value(i, prof, ix, req, now)
		s := dst[slots+16*i : slots+16*i+16]
		var payload uint64
		kind := byte(v.Kind)
		switch v.Kind {
		case profile.KindBool:
			if v.Bool {
				payload = 1
			}
		case profile.KindInt:
			payload = uint64(v.Int)
		case profile.KindDouble:
			payload = math.Float64bits(v.Double)
		case profile.KindString:
			if m.Inputs[i].Interned {
				kind = kindInterned
				for j, c := range m.Inputs[i].Strings {
					if c == v.Str {
						payload = uint64(j + 1)
						break
					}
				}
				break
			}
			off := len(dst) - start
			dst = append(dst, v.Str...)
			s = dst[slots+16*i : slots+16*i+16] // dst may have moved
			binary.LittleEndian.PutUint32(s[4:], uint32(len(v.Str)))
			payload = uint64(off)
		default:
			kind = kindAbsent
		}
		s[0] = kind
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
