package rules

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"path"
	"time"

	"github.com/segedge/segedge/core/profile"
)

// ModuleInfo is a hand-written module of a ruleset (the rules file's modules section): the
// composite bits of the segments it computes and the inputs it reads, in its own order.
//
// The generated module computes the CEL segments (bits 0..GeneratedSegments-1) from the first
// GeneratedInputs inputs; each hand-written module then gets an input of its own (wasm/ABI.md
// layout, slot i = Inputs[Inputs[i]] with strings always as bytes) and its output's bit k is
// composite bit Segments[k]. Its slot choices are not read: the host chooses each slot's variant
// from the merged memberships, as a generated module does (first variant whose segment is a
// member).
type ModuleInfo struct {
	Path     string `json:"path"`           // as written in the rules file
	Hash     string `json:"hash,omitempty"` // hex sha256 of the module bytes (AttachModules)
	Size     int    `json:"size,omitempty"`
	Segments []int  `json:"segments"` // composite bit of the module's bit k
	Inputs   []int  `json:"inputs"`   // composite input of the module's slot i
	Pos      Pos    `json:"-"`
}

// MaxModules bounds the modules of one ruleset.
const MaxModules = 8

// HashModule is the hex sha256 recorded in ModuleInfo.Hash.
func HashModule(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// linkModules appends the hand-written modules' segments and inputs to the manifest, after the
// generated module's (whose input count and segment count are recorded first).
func (c *compiler) linkModules() error {
	f := c.file
	if len(f.Modules) == 0 {
		return nil
	}
	if len(f.Modules) > MaxModules {
		return fmt.Errorf("%s: %d modules; at most %d are allowed", f.where(f.Modules[MaxModules].Pos), len(f.Modules), MaxModules)
	}
	c.m.GeneratedSegments = len(c.m.Segments)
	c.m.GeneratedInputs = len(c.m.Inputs)
	var errs []error
	paths := map[string]bool{}
	for _, md := range f.Modules {
		where := f.where(md.Pos)
		mi := ModuleInfo{Path: md.Path, Pos: md.Pos}
		switch {
		case md.Path == "":
			errs = append(errs, fmt.Errorf("%s: a module needs a path (the .wasm file, relative to the rules file)", where))
		case paths[md.Path]:
			errs = append(errs, fmt.Errorf("%s: module %q is listed twice; list it once with all its segments", where, md.Path))
		case path.Ext(md.Path) != ".wasm":
			errs = append(errs, fmt.Errorf("%s: module path %q must name a .wasm file", where, md.Path))
		}
		paths[md.Path] = true
		if len(md.Segments) == 0 {
			errs = append(errs, fmt.Errorf("%s: module %q computes no segments; list them under segments, in the module's bit order", where, md.Path))
		}
		needsReq := false
		for _, feat := range md.Features {
			in, err := ParseFeature(feat)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: module %q: feature %q: %w", where, md.Path, feat, err))
				continue
			}
			k := inputKey{req: in.Request, key: in.Key}
			if in.Request == "" {
				k.feat = in.Feature
				if in.Feature.Kind == profile.FeatureScore && !c.scores[in.Feature.Name] {
					errs = append(errs, fmt.Errorf("%s: module %q: unknown score %q; declare it under scores", where, md.Path, in.Feature.Name))
					continue
				}
			} else {
				needsReq = true
			}
			i, ok := c.inputs[k]
			if !ok {
				i = len(c.m.Inputs)
				c.inputs[k] = i
				c.m.Inputs = append(c.m.Inputs, Input{Request: in.Request, Key: in.Key, Feature: k.feat})
			}
			mi.Inputs = append(mi.Inputs, i)
		}
		for _, name := range md.Segments {
			bit := len(c.m.Segments)
			if c.modSegs[name] != bit {
				return fmt.Errorf("%s: internal error: module segment %q at bit %d, want %d", where, name, bit, c.modSegs[name])
			}
			c.m.Segments = append(c.m.Segments, SegmentInfo{Name: name, Module: md.Path, NeedsRequest: needsReq})
			mi.Segments = append(mi.Segments, bit)
		}
		c.m.Modules = append(c.m.Modules, mi)
	}
	return errors.Join(errs...)
}

// AttachModules sets the bytes of the ruleset's hand-written modules, looked up by the path
// written in the rules file, and records their hashes in the manifest. Every module must be
// given, and only those.
func (rs *Ruleset) AttachModules(fileName string, modules map[string][]byte) error {
	var errs []error
	rs.Modules = make([][]byte, len(rs.Manifest.Modules))
	used := map[string]bool{}
	for i := range rs.Manifest.Modules {
		mi := &rs.Manifest.Modules[i]
		b, ok := modules[mi.Path]
		if !ok {
			errs = append(errs, fmt.Errorf("%s:%d:%d: module %q was not uploaded with the rules file; send it too (origin rules push FILE reads it relative to FILE)",
				fileName, mi.Pos.Line, mi.Pos.Col, mi.Path))
			continue
		}
		used[mi.Path] = true
		rs.Modules[i] = b
		mi.Hash, mi.Size = HashModule(b), len(b)
	}
	for p := range modules {
		if !used[p] {
			errs = append(errs, fmt.Errorf("%s: module %q was uploaded but the rules file's modules section does not list it; list it or leave it out", fileName, p))
		}
	}
	return errors.Join(errs...)
}

// generatedSegments is the number of segments the generated module computes.
func (m *Manifest) generatedSegments() int {
	if len(m.Modules) == 0 {
		return len(m.Segments)
	}
	return m.GeneratedSegments
}

// generatedInputs is the number of input slots the generated module reads.
func (m *Manifest) generatedInputs() int {
	if len(m.Modules) == 0 {
		return len(m.Inputs)
	}
	return m.GeneratedInputs
}

// GeneratedOutputLen is the output length of the generated module (OutputLen when the
// ruleset has no hand-written modules).
func (m *Manifest) GeneratedOutputLen() int {
	if len(m.Modules) == 0 {
		return m.OutputLen()
	}
	return 16 * ((m.GeneratedSegments + 63) / 64)
}

// ModuleOutputLen is how many output bytes the host reads from hand-written module i: its
// two bitsets (its slot choices, if any, are not read).
func (m *Manifest) ModuleOutputLen(i int) int {
	return 16 * ((len(m.Modules[i].Segments) + 63) / 64)
}

// EncodeModuleInput appends hand-written module i's input (wasm/ABI.md layout; its slot j is
// composite input Modules[i].Inputs[j]; strings always as bytes, never interned) to dst. It
// does not allocate when dst has the capacity.
func (m *Manifest) EncodeModuleInput(dst []byte, i int, prof FeatureSource, req RequestSource, now time.Time) []byte {
	start := len(dst)
	ins := m.Modules[i].Inputs
	dst = binary.LittleEndian.AppendUint32(dst, ABIVersion)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(ins)))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(now.UnixMilli()))
	slots := len(dst)
	for range ins {
		dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	}
	ix, _ := prof.(IndexedFeatureSource)
	for j, in := range ins {
		v := m.value(in, prof, ix, req, now)
		var payload uint64
		kind := byte(v.Kind)
		var strLen uint32
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
			payload = uint64(len(dst) - start)
			strLen = uint32(len(v.Str))
			dst = append(dst, v.Str...)
		default:
			kind = kindAbsent
		}
		s := dst[slots+16*j : slots+16*j+16]
		s[0] = kind
		binary.LittleEndian.PutUint32(s[4:], strLen)
		binary.LittleEndian.PutUint64(s[8:], payload)
	}
	return dst
}

// MergeModuleOutput writes hand-written module i's bitsets (out, ModuleOutputLen(i) bytes) into
// r at its segments' composite bits, then chooses the slots' variants again. With noRequest
// set, segments that need a request stay "not member, error".
func (m *Manifest) MergeModuleOutput(i int, out []byte, r *Result, noRequest bool) {
	mi := &m.Modules[i]
	w := (len(mi.Segments) + 63) / 64
	for k, bit := range mi.Segments {
		member := binary.LittleEndian.Uint64(out[8*(k/64):])&(1<<(k%64)) != 0
		isErr := binary.LittleEndian.Uint64(out[8*(w+k/64):])&(1<<(k%64)) != 0
		mask := uint64(1) << (bit % 64)
		r.Member[bit/64] &^= mask
		r.Error[bit/64] &^= mask
		switch {
		case noRequest && m.Segments[bit].NeedsRequest:
			r.Error[bit/64] |= mask
		case isErr:
			r.Error[bit/64] |= mask
		case member:
			r.Member[bit/64] |= mask
		}
	}
	m.chooseVariants(r)
}

// chooseVariants sets each slot's variant to the first whose segment is a member, else -1.
func (m *Manifest) chooseVariants(r *Result) {
	for s := range m.Slots {
		r.Variants[s] = -1
		for v := range m.Slots[s].Variants {
			if r.IsMember(m.Slots[s].Variants[v].Segment) {
				r.Variants[s] = int32(v)
				break
			}
		}
	}
}
