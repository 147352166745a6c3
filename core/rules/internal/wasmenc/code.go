package wasmenc

import (
	"encoding/binary"
	"math"
)

// Opcodes used by the rule compiler.
const (
	OpUnreachable = 0x00
	OpBlock       = 0x02
	OpLoop        = 0x03
	OpIf          = 0x04
	OpElse        = 0x05
	OpEnd         = 0x0b
	OpBr          = 0x0c
	OpBrIf        = 0x0d
	OpReturn      = 0x0f
	OpCall        = 0x10
	OpDrop        = 0x1a
	OpSelect      = 0x1b
	OpLocalGet    = 0x20
	OpLocalSet    = 0x21
	OpLocalTee    = 0x22
	OpGlobalGet   = 0x23
	OpGlobalSet   = 0x24
	OpI32Load     = 0x28
	OpI64Load     = 0x29
	OpF64Load     = 0x2b
	OpI32Load8U   = 0x2d
	OpI32Store    = 0x36
	OpI64Store    = 0x37
	OpI32Const    = 0x41
	OpI64Const    = 0x42
	OpF64Const    = 0x44

	OpI32Eqz = 0x45
	OpI32Eq  = 0x46
	OpI32Ne  = 0x47
	OpI32LtS = 0x48
	OpI32LtU = 0x49
	OpI32GtS = 0x4a
	OpI32GtU = 0x4b
	OpI32LeS = 0x4c
	OpI32LeU = 0x4d
	OpI32GeS = 0x4e
	OpI32GeU = 0x4f

	OpI64Eqz = 0x50
	OpI64Eq  = 0x51
	OpI64Ne  = 0x52
	OpI64LtS = 0x53
	OpI64LtU = 0x54
	OpI64GtS = 0x55
	OpI64GtU = 0x56
	OpI64LeS = 0x57
	OpI64LeU = 0x58
	OpI64GeS = 0x59
	OpI64GeU = 0x5a

	OpF64Eq = 0x61
	OpF64Ne = 0x62
	OpF64Lt = 0x63
	OpF64Gt = 0x64
	OpF64Le = 0x65
	OpF64Ge = 0x66

	OpI32Add  = 0x6a
	OpI32Sub  = 0x6b
	OpI32Mul  = 0x6c
	OpI32And  = 0x71
	OpI32Or   = 0x72
	OpI32Xor  = 0x73
	OpI32Shl  = 0x74
	OpI32ShrU = 0x76

	OpI64Add  = 0x7c
	OpI64Sub  = 0x7d
	OpI64Mul  = 0x7e
	OpI64DivS = 0x7f
	OpI64RemS = 0x81
	OpI64And  = 0x83
	OpI64Or   = 0x84
	OpI64Xor  = 0x85
	OpI64Shl  = 0x86
	OpI64ShrU = 0x88

	OpF64Neg = 0x9a
	OpF64Add = 0xa0
	OpF64Sub = 0xa1
	OpF64Mul = 0xa2
	OpF64Div = 0xa3

	OpI32WrapI64        = 0xa7
	OpI64ExtendI32U     = 0xad
	OpF64ConvertI64S    = 0xb9
	OpI64ReinterpretF64 = 0xbd
	OpF64ReinterpretI64 = 0xbf
)

// BlockEmpty is the block type of a block that yields nothing.
const BlockEmpty = -64 // 0x40 as a signed LEB128 byte

// BlockVal returns the block type of a block that yields one value of type t (the type
// byte read as a 7-bit signed LEB128 number).
func BlockVal(t ValType) int64 { return int64(t) - 0x80 }

// BlockFunc returns the block type of a block with the signature of type index idx
// (for blocks that yield several values).
func BlockFunc(idx uint32) int64 { return int64(idx) }

// Code builds a function body.
type Code struct{ B []byte }

// Op appends plain opcodes.
func (c *Code) Op(ops ...byte) *Code { c.B = append(c.B, ops...); return c }

// I32 pushes an i32 constant.
func (c *Code) I32(v int32) *Code {
	c.B = append(c.B, OpI32Const)
	c.B = appendS64(c.B, int64(v))
	return c
}

// I64 pushes an i64 constant.
func (c *Code) I64(v int64) *Code {
	c.B = append(c.B, OpI64Const)
	c.B = appendS64(c.B, v)
	return c
}

// F64 pushes an f64 constant.
func (c *Code) F64(v float64) *Code {
	c.B = append(c.B, OpF64Const)
	c.B = binary.LittleEndian.AppendUint64(c.B, math.Float64bits(v))
	return c
}

// Get, Set and Tee access local idx.
func (c *Code) Get(idx uint32) *Code { return c.idx(OpLocalGet, idx) }
func (c *Code) Set(idx uint32) *Code { return c.idx(OpLocalSet, idx) }
func (c *Code) Tee(idx uint32) *Code { return c.idx(OpLocalTee, idx) }

// GGet and GSet access global idx.
func (c *Code) GGet(idx uint32) *Code { return c.idx(OpGlobalGet, idx) }
func (c *Code) GSet(idx uint32) *Code { return c.idx(OpGlobalSet, idx) }

// Call calls function idx.
func (c *Code) Call(idx uint32) *Code { return c.idx(OpCall, idx) }

// Br and BrIf branch to the label depth.
func (c *Code) Br(depth uint32) *Code   { return c.idx(OpBr, depth) }
func (c *Code) BrIf(depth uint32) *Code { return c.idx(OpBrIf, depth) }

func (c *Code) idx(op byte, idx uint32) *Code {
	c.B = append(c.B, op)
	c.B = appendU32(c.B, idx)
	return c
}

// If, Block and Loop open a structured block of the given block type.
func (c *Code) If(bt int64) *Code    { return c.block(OpIf, bt) }
func (c *Code) Block(bt int64) *Code { return c.block(OpBlock, bt) }
func (c *Code) Loop(bt int64) *Code  { return c.block(OpLoop, bt) }

func (c *Code) block(op byte, bt int64) *Code {
	c.B = append(c.B, op)
	c.B = appendS64(c.B, bt)
	return c
}

// Else and End close blocks.
func (c *Code) Else() *Code { return c.Op(OpElse) }
func (c *Code) End() *Code  { return c.Op(OpEnd) }

// Load and store with a constant offset (alignment hint 0: any address is allowed).
func (c *Code) Mem(op byte, offset uint32) *Code {
	c.B = append(c.B, op, 0)
	c.B = appendU32(c.B, offset)
	return c
}
