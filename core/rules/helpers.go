package rules

// The helper functions every generated module carries: string comparison and search (loops
// bounded by the lengths of the strings, which the module has checked lie inside its input),
// CEL's heterogeneous equality and ordering over dyn values, and int64 arithmetic with CEL's
// overflow and division errors. Everything else in a module is straight-line code.

// The wasmenc names are dot-imported in the code generator files only: they read like the
// wasm text format there.
import . "github.com/segedge/segedge/core/rules/internal/wasmenc"

type helpers struct {
	strCmp, strEq, strStarts, strEnds, strContains, strSize uint32
	dynEq, dynCmp                                           uint32
	add, sub, mul, div, mod, neg                            uint32
}

func (c *compiler) addHelpers() {
	m := &c.mod
	i4 := []ValType{I32, I32, I32, I32}
	tStr4 := m.Type(i4, []ValType{I32})
	tStr2 := m.Type([]ValType{I32, I32}, []ValType{I32})
	tDyn := m.Type([]ValType{I32, I64, I32, I64}, []ValType{I32})
	tArith := m.Type([]ValType{I64, I64}, []ValType{I64, I32})
	tNeg := m.Type([]ValType{I64}, []ValType{I64, I32})
	h := &c.h

	// str_cmp(p1, l1, p2, l2) -> -1/0/1, bytewise like strings.Compare.
	h.strCmp = m.Reserve(tStr4)
	{
		const p1, l1, p2, l2, i, n, a, b = 0, 1, 2, 3, 4, 5, 6, 7
		var k Code
		k.Get(l1).Get(l2).Get(l1).Get(l2).Op(OpI32LtU, OpSelect).Set(n)
		k.Block(BlockEmpty).Loop(BlockEmpty)
		k.Get(i).Get(n).Op(OpI32GeU).BrIf(1)
		k.Get(p1).Get(i).Op(OpI32Add).Mem(OpI32Load8U, 0).Set(a)
		k.Get(p2).Get(i).Op(OpI32Add).Mem(OpI32Load8U, 0).Set(b)
		k.Get(a).Get(b).Op(OpI32Ne).If(BlockEmpty)
		k.I32(-1).I32(1).Get(a).Get(b).Op(OpI32LtU, OpSelect, OpReturn)
		k.End()
		k.Get(i).I32(1).Op(OpI32Add).Set(i).Br(0)
		k.End().End()
		k.Get(l1).Get(l2).Op(OpI32GtU).Get(l1).Get(l2).Op(OpI32LtU, OpI32Sub)
		m.SetFunc(h.strCmp, []ValType{I32, I32, I32, I32}, k.B)
	}
	// str_eq(p1, l1, p2, l2) -> 0/1.
	h.strEq = m.Reserve(tStr4)
	{
		var k Code
		k.Get(1).Get(3).Op(OpI32Ne).If(BlockEmpty).I32(0).Op(OpReturn).End()
		k.Get(0).Get(1).Get(2).Get(3).Call(h.strCmp).Op(OpI32Eqz)
		m.SetFunc(h.strEq, nil, k.B)
	}
	// str_starts(p, l, q, m): q is a prefix of p.
	h.strStarts = m.Reserve(tStr4)
	{
		var k Code
		k.Get(3).Get(1).Op(OpI32GtU).If(BlockEmpty).I32(0).Op(OpReturn).End()
		k.Get(0).Get(3).Get(2).Get(3).Call(h.strCmp).Op(OpI32Eqz)
		m.SetFunc(h.strStarts, nil, k.B)
	}
	// str_ends(p, l, q, m): q is a suffix of p.
	h.strEnds = m.Reserve(tStr4)
	{
		var k Code
		k.Get(3).Get(1).Op(OpI32GtU).If(BlockEmpty).I32(0).Op(OpReturn).End()
		k.Get(0).Get(1).Op(OpI32Add).Get(3).Op(OpI32Sub).Get(3).Get(2).Get(3).Call(h.strCmp).Op(OpI32Eqz)
		m.SetFunc(h.strEnds, nil, k.B)
	}
	// str_contains(p, l, q, m): q occurs in p. At most l-m+1 comparisons of m bytes.
	h.strContains = m.Reserve(tStr4)
	{
		const p, l, q, n, i = 0, 1, 2, 3, 4
		var k Code
		k.Get(n).Get(l).Op(OpI32GtU).If(BlockEmpty).I32(0).Op(OpReturn).End()
		k.Loop(BlockEmpty)
		k.Get(p).Get(i).Op(OpI32Add).Get(n).Get(q).Get(n).Call(h.strCmp).Op(OpI32Eqz)
		k.If(BlockEmpty).I32(1).Op(OpReturn).End()
		k.Get(i).Get(l).Get(n).Op(OpI32Sub).Op(OpI32GeU).If(BlockEmpty).I32(0).Op(OpReturn).End()
		k.Get(i).I32(1).Op(OpI32Add).Set(i).Br(0)
		k.End()
		k.I32(0)
		m.SetFunc(h.strContains, []ValType{I32}, k.B)
	}
	// str_size(p, l): code points (bytes that do not continue a UTF-8 sequence).
	h.strSize = m.Reserve(tStr2)
	{
		const p, l, i, n = 0, 1, 2, 3
		var k Code
		k.Block(BlockEmpty).Loop(BlockEmpty)
		k.Get(i).Get(l).Op(OpI32GeU).BrIf(1)
		k.Get(n).Get(p).Get(i).Op(OpI32Add).Mem(OpI32Load8U, 0).I32(0xc0).Op(OpI32And).I32(0x80).Op(OpI32Ne, OpI32Add).Set(n)
		k.Get(i).I32(1).Op(OpI32Add).Set(i).Br(0)
		k.End().End()
		k.Get(n)
		m.SetFunc(h.strSize, []ValType{I32, I32}, k.B)
	}
	// Dyn helpers: (k1, p1, k2, p2). Strings are address<<32 | length.
	const k1, p1, k2, p2 = 0, 1, 2, 3
	both := func(k *Code, a, b int32) *Code {
		return k.Get(k1).I32(a).Op(OpI32Eq).Get(k2).I32(b).Op(OpI32Eq, OpI32And)
	}
	str := func(k *Code, p uint32) *Code {
		return k.Get(p).I64(32).Op(OpI64ShrU, OpI32WrapI64).Get(p).Op(OpI32WrapI64)
	}
	f64 := func(k *Code, p uint32) *Code { return k.Get(p).Op(OpF64ReinterpretI64) }
	conv := func(k *Code, p uint32) *Code { return k.Get(p).Op(OpF64ConvertI64S) }
	// dyn_eq: CEL equality: same kinds compare by value, ints and doubles numerically
	// (NaN equals nothing), anything else is false.
	h.dynEq = m.Reserve(tDyn)
	{
		var k Code
		both(&k, kindInt, kindInt).If(BlockEmpty).Get(p1).Get(p2).Op(OpI64Eq, OpReturn).End()
		both(&k, kindBool, kindBool).If(BlockEmpty).Get(p1).Get(p2).Op(OpI64Eq, OpReturn).End()
		both(&k, kindDouble, kindDouble).If(BlockEmpty)
		f64(f64(&k, p1), p2).Op(OpF64Eq, OpReturn).End()
		both(&k, kindInt, kindDouble).If(BlockEmpty)
		f64(conv(&k, p1), p2).Op(OpF64Eq, OpReturn).End()
		both(&k, kindDouble, kindInt).If(BlockEmpty)
		conv(f64(&k, p1), p2).Op(OpF64Eq, OpReturn).End()
		both(&k, kindString, kindString).If(BlockEmpty)
		str(str(&k, p1), p2).Call(h.strEq).Op(OpReturn).End()
		k.I32(0)
		m.SetFunc(h.dynEq, nil, k.B)
	}
	// dyn_cmp: CEL ordering: -1/0/1, 2 for an error (kinds that do not order), 3 for unordered
	// numbers (NaN: cel-go makes every ordering false, like IEEE 754).
	h.dynCmp = m.Reserve(tDyn)
	{
		const a, b = 4, 5 // f64 locals
		var k Code
		cmp := func(lt, gt byte, x, y func()) {
			x()
			y()
			k.Op(gt)
			x()
			y()
			k.Op(lt, OpI32Sub, OpReturn)
		}
		getp := func(p uint32) func() { return func() { k.Get(p) } }
		getf := func(p uint32) func() { return func() { k.Get(p) } }
		// A NaN on either side makes every ordering false, whatever the other side is.
		for _, x := range []struct{ k, p uint32 }{{k1, p1}, {k2, p2}} {
			k.Get(x.k).I32(kindDouble).Op(OpI32Eq)
			f64(&k, x.p)
			f64(&k, x.p).Op(OpF64Ne, OpI32And).If(BlockEmpty).I32(3).Op(OpReturn).End()
		}
		both(&k, kindInt, kindInt).If(BlockEmpty)
		cmp(OpI64LtS, OpI64GtS, getp(p1), getp(p2))
		k.End()
		both(&k, kindBool, kindBool).If(BlockEmpty)
		cmp(OpI64LtU, OpI64GtU, getp(p1), getp(p2))
		k.End()
		both(&k, kindString, kindString).If(BlockEmpty)
		str(str(&k, p1), p2).Call(h.strCmp).Op(OpReturn).End()
		// Numbers: convert both to f64 in a and b, then NaN → error.
		k.Get(k1).I32(kindInt).Op(OpI32Eq).Get(k1).I32(kindDouble).Op(OpI32Eq, OpI32Or)
		k.Get(k2).I32(kindInt).Op(OpI32Eq).Get(k2).I32(kindDouble).Op(OpI32Eq, OpI32Or, OpI32And, OpI32Eqz)
		k.If(BlockEmpty).I32(2).Op(OpReturn).End()
		conv(&k, p1)
		f64(&k, p1)
		k.Get(k1).I32(kindInt).Op(OpI32Eq, OpSelect).Set(a)
		conv(&k, p2)
		f64(&k, p2)
		k.Get(k2).I32(kindInt).Op(OpI32Eq, OpSelect).Set(b)
		k.Get(a).Get(a).Op(OpF64Ne).Get(b).Get(b).Op(OpF64Ne, OpI32Or).If(BlockEmpty).I32(3).Op(OpReturn).End()
		cmp(OpF64Lt, OpF64Gt, getf(a), getf(b))
		k.I32(2)
		m.SetFunc(h.dynCmp, []ValType{F64, F64}, k.B)
	}
	const minInt = -1 << 63
	// add, sub: wrapped result and the overflow flag.
	h.add = m.Reserve(tArith)
	{
		var k Code
		k.Get(0).Get(1).Op(OpI64Add).Tee(2)
		k.Get(0).Get(2).Op(OpI64Xor).Get(1).Get(2).Op(OpI64Xor, OpI64And).I64(0).Op(OpI64LtS)
		m.SetFunc(h.add, []ValType{I64}, k.B)
	}
	h.sub = m.Reserve(tArith)
	{
		var k Code
		k.Get(0).Get(1).Op(OpI64Sub).Tee(2)
		k.Get(0).Get(1).Op(OpI64Xor).Get(0).Get(2).Op(OpI64Xor, OpI64And).I64(0).Op(OpI64LtS)
		m.SetFunc(h.sub, []ValType{I64}, k.B)
	}
	// mul: overflow when (MinInt64, -1) in either order, or when the product divided by b
	// is not a (b not 0 or -1, so the division cannot trap).
	h.mul = m.Reserve(tArith)
	{
		var k Code
		k.Get(0).Get(1).Op(OpI64Mul).Tee(2)
		k.Get(0).I64(minInt).Op(OpI64Eq).Get(1).I64(-1).Op(OpI64Eq, OpI32And)
		k.Get(1).I64(minInt).Op(OpI64Eq).Get(0).I64(-1).Op(OpI64Eq, OpI32And, OpI32Or)
		k.Get(1).Op(OpI64Eqz).Get(1).I64(-1).Op(OpI64Eq, OpI32Or).If(BlockVal(I32)).I32(0).Else()
		k.Get(2).Get(1).Op(OpI64DivS).Get(0).Op(OpI64Ne).End()
		k.Op(OpI32Or)
		m.SetFunc(h.mul, []ValType{I64}, k.B)
	}
	// div, mod: error on a zero divisor and on MinInt64 / -1; the instruction then runs on
	// divisor 1 so it cannot trap.
	divmod := func(op byte) uint32 {
		idx := m.Reserve(tArith)
		var k Code
		k.Get(1).Op(OpI64Eqz).Get(0).I64(minInt).Op(OpI64Eq).Get(1).I64(-1).Op(OpI64Eq, OpI32And, OpI32Or).Set(2)
		k.Get(0).I64(1).Get(1).Get(2).Op(OpSelect, op).Get(2)
		m.SetFunc(idx, []ValType{I32}, k.B)
		return idx
	}
	h.div = divmod(OpI64DivS)
	h.mod = divmod(OpI64RemS)
	h.neg = m.Reserve(tNeg)
	{
		var k Code
		k.I64(0).Get(0).Op(OpI64Sub).Get(0).I64(minInt).Op(OpI64Eq)
		m.SetFunc(h.neg, nil, k.B)
	}
}
