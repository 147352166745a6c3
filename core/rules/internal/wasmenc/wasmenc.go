// Package wasmenc writes WebAssembly binary modules: just enough of the format for the rule
// compiler (types, functions, one memory, exports, active data segments, mutable globals) and a
// code builder for function bodies. It never reads wasm; wazero validates what we write when the
// host compiles it, and the rule compiler's tests run every module it emits.
package wasmenc

import (
	"encoding/binary"
	"math"
)

// ValType is a WebAssembly value type.
type ValType byte

const (
	I32 ValType = 0x7f
	I64 ValType = 0x7e
	F64 ValType = 0x7c
)

// FuncType is a function signature.
type FuncType struct {
	Params, Results []ValType
}

func (a FuncType) equal(b FuncType) bool {
	if len(a.Params) != len(b.Params) || len(a.Results) != len(b.Results) {
		return false
	}
	for i := range a.Params {
		if a.Params[i] != b.Params[i] {
			return false
		}
	}
	for i := range a.Results {
		if a.Results[i] != b.Results[i] {
			return false
		}
	}
	return true
}

// Func is one defined function: its type index, the locals beyond its parameters, and its body
// (the instructions, without the final end, which Encode adds).
type Func struct {
	Type   uint32
	Locals []ValType
	Body   []byte
}

type export struct {
	name  string
	kind  byte
	index uint32
}

type dataSeg struct {
	offset uint32
	bytes  []byte
}

type global struct {
	typ  ValType
	init int64
}

// Module collects the parts of a module. The zero value is an empty module with no memory.
type Module struct {
	types    []FuncType
	funcs    []Func
	exports  []export
	data     []dataSeg
	globals  []global
	memPages uint32
	hasMem   bool
}

// Type returns the index of a function type, adding it if new.
func (m *Module) Type(params, results []ValType) uint32 {
	ft := FuncType{Params: params, Results: results}
	for i, t := range m.types {
		if t.equal(ft) {
			return uint32(i)
		}
	}
	m.types = append(m.types, ft)
	return uint32(len(m.types) - 1)
}

// Reserve adds a function with an empty body and returns its index, so calls to it can be
// emitted before its body is written with SetFunc.
func (m *Module) Reserve(typ uint32) uint32 {
	m.funcs = append(m.funcs, Func{Type: typ})
	return uint32(len(m.funcs) - 1)
}

// SetFunc sets the locals and body of a reserved function.
func (m *Module) SetFunc(idx uint32, locals []ValType, body []byte) {
	m.funcs[idx].Locals = locals
	m.funcs[idx].Body = body
}

// Global adds a mutable global of type t with an initial value and returns its index.
func (m *Module) Global(t ValType, init int64) uint32 {
	m.globals = append(m.globals, global{t, init})
	return uint32(len(m.globals) - 1)
}

// Memory declares the module's memory with a fixed minimum and no maximum (the host caps it).
func (m *Module) Memory(pages uint32) {
	m.memPages = pages
	m.hasMem = true
}

// ExportFunc exports function idx as name.
func (m *Module) ExportFunc(name string, idx uint32) {
	m.exports = append(m.exports, export{name, 0x00, idx})
}

// ExportMemory exports memory 0 as name.
func (m *Module) ExportMemory(name string) {
	m.exports = append(m.exports, export{name, 0x02, 0})
}

// Data places bytes at a fixed memory offset when an instance starts.
func (m *Module) Data(offset uint32, b []byte) {
	m.data = append(m.data, dataSeg{offset, b})
}

// Encode returns the binary module.
func (m *Module) Encode() []byte {
	out := []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}
	section := func(id byte, body []byte) {
		out = append(out, id)
		out = appendU32(out, uint32(len(body)))
		out = append(out, body...)
	}
	var b []byte
	// 1: types
	b = appendU32(nil, uint32(len(m.types)))
	for _, t := range m.types {
		b = append(b, 0x60)
		b = appendU32(b, uint32(len(t.Params)))
		for _, p := range t.Params {
			b = append(b, byte(p))
		}
		b = appendU32(b, uint32(len(t.Results)))
		for _, r := range t.Results {
			b = append(b, byte(r))
		}
	}
	section(1, b)
	// 3: functions
	b = appendU32(nil, uint32(len(m.funcs)))
	for _, f := range m.funcs {
		b = appendU32(b, f.Type)
	}
	section(3, b)
	// 5: memory
	if m.hasMem {
		b = []byte{1, 0x00}
		b = appendU32(b, m.memPages)
		section(5, b)
	}
	// 6: globals
	if len(m.globals) > 0 {
		b = appendU32(nil, uint32(len(m.globals)))
		for _, g := range m.globals {
			b = append(b, byte(g.typ), 0x01)
			switch g.typ {
			case I32:
				b = append(b, 0x41)
				b = appendS64(b, int64(int32(g.init)))
			case I64:
				b = append(b, 0x42)
				b = appendS64(b, g.init)
			case F64:
				b = append(b, 0x44)
				b = binary.LittleEndian.AppendUint64(b, math.Float64bits(float64(g.init)))
			}
			b = append(b, 0x0b)
		}
		section(6, b)
	}
	// 7: exports
	b = appendU32(nil, uint32(len(m.exports)))
	for _, e := range m.exports {
		b = appendU32(b, uint32(len(e.name)))
		b = append(b, e.name...)
		b = append(b, e.kind)
		b = appendU32(b, e.index)
	}
	section(7, b)
	// 10: code
	b = appendU32(nil, uint32(len(m.funcs)))
	for _, f := range m.funcs {
		var body []byte
		// Locals are run-length encoded by type.
		var groups [][2]uint32
		for _, l := range f.Locals {
			if n := len(groups); n > 0 && groups[n-1][1] == uint32(l) {
				groups[n-1][0]++
			} else {
				groups = append(groups, [2]uint32{1, uint32(l)})
			}
		}
		body = appendU32(body, uint32(len(groups)))
		for _, g := range groups {
			body = appendU32(body, g[0])
			body = append(body, byte(g[1]))
		}
		body = append(body, f.Body...)
		body = append(body, 0x0b)
		b = appendU32(b, uint32(len(body)))
		b = append(b, body...)
	}
	section(10, b)
	// 11: data
	if len(m.data) > 0 {
		b = appendU32(nil, uint32(len(m.data)))
		for _, d := range m.data {
			b = append(b, 0x00, 0x41)
			b = appendS64(b, int64(int32(d.offset)))
			b = append(b, 0x0b)
			b = appendU32(b, uint32(len(d.bytes)))
			b = append(b, d.bytes...)
		}
		section(11, b)
	}
	return out
}

func appendU32(b []byte, v uint32) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

func appendS64(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}
