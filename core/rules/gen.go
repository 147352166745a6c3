package rules

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"

	. "github.com/segedge/segedge/core/rules/internal/wasmenc"
)

// fnBuilder is the function being generated: its code and locals, with temporaries recycled.
type fnBuilder struct {
	Code
	nparams uint32
	locals  []ValType
	free    map[ValType][]uint32
}

func (f *fnBuilder) local(t ValType) uint32 {
	if l := f.free[t]; len(l) > 0 {
		f.free[t] = l[:len(l)-1]
		return l[len(l)-1]
	}
	f.locals = append(f.locals, t)
	return f.nparams + uint32(len(f.locals)) - 1
}

func (f *fnBuilder) release(t ValType, idx ...uint32) { f.free[t] = append(f.free[t], idx...) }

// errScope starts a new error flag: an i32 local set to 0. The flag is "error" when non-zero
// (it is only ever read by select), so a check may set it to any non-zero value.
func (c *compiler) errScope() uint32 {
	l := c.f.local(I32)
	c.f.I32(0).Set(l)
	c.errFresh = l + 1
	return l
}

// setErr sets the error flag when the i32 on the stack is non-zero. The first check of a scope
// just stores (the flag is still 0: no branch since errScope, see errFresh).
func (c *compiler) setErr(errL uint32) {
	if c.errFresh == errL+1 {
		c.f.Set(errL)
		c.errFresh = 0
		return
	}
	c.f.Get(errL).Op(OpI32Or).Set(errL)
}

const (
	slotsOff  = 16 // value slots start 16 bytes into the input
	constBase = 16 // the input buffer starts here; the output and the constants follow it
)

// generate writes the module. Memory layout: the input buffer at constBase, the output
// buffer after it, then the constant strings and 8 spare bytes (affix's loads may read up to
// 8 bytes past a string).
func (c *compiler) generate(order []int) ([]byte, error) {
	n := len(c.m.Inputs)
	c.ib = constBase
	c.m.InputCap = slotsOff + 16*n + StringCap
	ob := align8(c.ib + uint32(c.m.InputCap))
	outEnd := ob + uint32(c.m.OutputLen())
	c.cb = align8(outEnd)
	c.addHelpers()
	m := &c.mod
	evalIdx := m.Reserve(m.Type([]ValType{I32}, []ValType{I32}))
	c.f = &fnBuilder{nparams: 1, free: map[ValType][]uint32{}}
	c.memo = map[string]uint32{}
	f := c.f
	// Every access to the input slots and the output has a constant address: it is written as
	// an offset from local zl, which is never set (so always 0), instead of from an i32.const 0.
	// An engine that tracks known-safe bounds per base value (wazero's optimizing compiler
	// does) then checks the bound once, at this first load, which reaches the last output byte,
	// instead of at every access.
	c.zl = f.local(I32)
	f.Get(c.zl).Mem(OpI64Load, outEnd-8).Op(OpDrop)
	// Input checks: length, version, slot count, and every string inside the input, computed
	// without branches (the slots lie inside the buffer whatever the length says) and tested
	// once. Every if in this function has an else, even an empty one: wazero keeps what it
	// knows about bounds across if-else-end but forgets it after an if-end.
	f.Get(0).I32(int32(slotsOff + 16*n)).Op(OpI32LtU)
	f.Get(c.zl).Mem(OpI32Load, c.ib).I32(ABIVersion).Op(OpI32Ne, OpI32Or)
	f.Get(c.zl).Mem(OpI32Load, c.ib+4).I32(int32(n)).Op(OpI32Ne, OpI32Or)
	for i, in := range c.m.Inputs {
		if !c.strCap[i] || in.Interned {
			continue
		}
		a := c.slotAddr(i)
		f.Get(c.zl).Mem(OpI32Load8U, a).I32(kindString).Op(OpI32Eq)
		f.Get(c.zl).Mem(OpI32Load, a+8).Op(OpI64ExtendI32U).Get(c.zl).Mem(OpI32Load, a+4).Op(OpI64ExtendI32U).Op(OpI64Add)
		f.Get(0).Op(OpI64ExtendI32U).Op(OpI64GtU, OpI32And, OpI32Or)
	}
	f.If(BlockEmpty).I32(1).Op(OpReturn).Else().End()
	for _, s := range c.segs {
		s.local = f.local(I32)
	}
	// The bitsets are accumulated as each segment is computed, so a segment's tristate local
	// is dead right away unless segment() or a slot reads it later (fewer live values for
	// the engine's register allocator in long rulesets): tristate t of segment i goes to bits
	// 2(i%32) and 2(i%32)+1 of packed word i/32 (three instructions), and the member and error
	// bits are separated once at the end.
	w := uint32(c.m.words())
	packed := make([]uint32, (len(c.segs)+31)/32)
	for i := range packed {
		packed[i] = f.local(I64)
		f.I64(0).Set(packed[i])
	}
	for _, i := range order {
		c.cur = c.segs[i]
		if err := c.boolExpr(c.cur.ast.Expr()); err != nil {
			return nil, fmt.Errorf("%s: %w", c.file.where(c.cur.def.RulePos), err)
		}
		f.Tee(c.cur.local).Op(OpI64ExtendI32U)
		if i%32 != 0 {
			f.I64(int64(2 * (i % 32))).Op(OpI64Shl)
		}
		f.Get(packed[i/32]).Op(OpI64Or).Set(packed[i/32])
	}
	// Output: membership and error bitsets, then the slots' variant choices. Member bits are
	// the odd bits of the packed words (tristate true = 2), error bits the even ones.
	c.m.ABIVersion = ABIVersion
	for word := range w {
		for k, base := range []uint32{ob + 8*word, ob + 8*(w+word)} {
			f.Get(c.zl)
			for half := range uint32(2) {
				pw := 2*word + half
				if int(pw) >= len(packed) {
					break
				}
				f.Get(packed[pw])
				if k == 0 {
					f.I64(1).Op(OpI64ShrU)
				}
				c.compactEven()
				if half == 1 {
					f.I64(32).Op(OpI64Shl, OpI64Or)
				}
			}
			f.Mem(OpI64Store, base)
		}
	}
	acc := f.local(I32)
	for s, slot := range c.m.Slots {
		f.I32(-1).Set(acc)
		for v := len(slot.Variants) - 1; v >= 0; v-- {
			f.I32(int32(v)).Get(acc).Get(c.segs[slot.Variants[v].Segment].local).I32(triTrue).Op(OpI32Eq, OpSelect).Set(acc)
		}
		f.Get(c.zl).Get(acc).Mem(OpI32Store, ob+16*w+4*uint32(s))
	}
	f.I32(0)
	m.SetFunc(evalIdx, f.locals, f.B)

	konst := func(v int32) uint32 {
		idx := m.Reserve(m.Type(nil, []ValType{I32}))
		var k Code
		k.I32(v)
		m.SetFunc(idx, nil, k.B)
		return idx
	}
	end := c.cb + uint32(len(c.consts)) + 8 // 8 spare bytes for affix's loads
	m.Memory((end + 65535) / 65536)
	m.ExportMemory("memory")
	m.ExportFunc("segedge_abi_version", konst(ABIVersion))
	m.ExportFunc("segedge_input_ptr", konst(int32(c.ib)))
	m.ExportFunc("segedge_input_cap", konst(int32(c.m.InputCap)))
	m.ExportFunc("segedge_output_ptr", konst(int32(ob)))
	m.ExportFunc("segedge_eval", evalIdx)
	if len(c.consts) > 0 {
		m.Data(c.cb, c.consts)
	}
	return m.Encode(), nil
}

// compactEven replaces the i64 on the stack by its 32 even bits, packed into the low half.
func (c *compiler) compactEven() {
	f := c.f
	f.I64(0x5555555555555555).Op(OpI64And)
	t := f.local(I64)
	for i, mask := range []int64{0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x00FF00FF00FF00FF, 0x0000FFFF0000FFFF, 0x00000000FFFFFFFF} {
		f.Tee(t).Get(t).I64(int64(1)<<i).Op(OpI64ShrU, OpI64Or).I64(mask).Op(OpI64And)
	}
	f.release(I64, t)
}

func align8(v uint32) uint32 { return (v + 7) &^ 7 }

func (c *compiler) slotAddr(i int) uint32 { return c.ib + slotsOff + 16*uint32(i) }

// constant returns the address of a constant string's bytes.
func (c *compiler) constant(s string) uint32 {
	if off, ok := c.constOff[s]; ok {
		return c.cb + off
	}
	off := uint32(len(c.consts))
	c.consts = append(c.consts, s...)
	c.constOff[s] = off
	return c.cb + off
}

// typeOf maps the checker's type of e to a typ, or 0 if unsupported.
func (c *compiler) typeOf(e ast.Expr) typ {
	t := c.cur.ast.GetType(e.ID())
	if t == nil {
		return 0
	}
	switch t.Kind() {
	case types.BoolKind:
		return tBool
	case types.IntKind:
		return tInt
	case types.DoubleKind:
		return tDouble
	case types.StringKind:
		return tString
	case types.DynKind, types.AnyKind, types.TypeParamKind:
		return tDyn
	}
	return 0
}

// Tristates: a boolean rule value or an error, as an i32 ordered false < error < true, so that
// CEL's commutative && and || (false && error = false, true || error = true, error otherwise)
// are min and max.
const (
	triFalse = 0
	triError = 1
	triTrue  = 2
)

// boolExpr pushes e as a tristate. A boolean subexpression that an earlier segment (or an
// earlier part of this rule) already computed outside any if is not computed again: rules are
// pure, so its tristate is kept in a local (segments of a ruleset often share conditions such
// as request.country == "DE").
func (c *compiler) boolExpr(e ast.Expr) error {
	key := ""
	if c.ifDepth == 0 && e.Kind() == ast.CallKind && e.AsCall().FunctionName() != fnSegment {
		if key = exprKey(e); key != "" {
			if l, ok := c.memo[key]; ok {
				c.f.Get(l)
				return nil
			}
		}
	}
	if err := c.boolExprOnce(e); err != nil {
		return err
	}
	if key != "" {
		l := c.f.local(I32) // never released: read by later segments
		c.f.Tee(l)
		c.memo[key] = l
	}
	return nil
}

// exprKey is a canonical form of e (the same for the same expression in any rule), or "" for
// a kind of expression it does not cover.
func exprKey(e ast.Expr) string {
	var b strings.Builder
	if !writeKey(&b, e) {
		return ""
	}
	return b.String()
}

func writeKey(b *strings.Builder, e ast.Expr) bool {
	switch e.Kind() {
	case ast.LiteralKind:
		fmt.Fprintf(b, "%T(%q)", e.AsLiteral(), fmt.Sprint(e.AsLiteral().Value()))
	case ast.IdentKind:
		b.WriteString(e.AsIdent())
	case ast.ListKind:
		b.WriteByte('[')
		for _, el := range e.AsList().Elements() {
			if !writeKey(b, el) {
				return false
			}
			b.WriteByte(',')
		}
		b.WriteByte(']')
	case ast.CallKind:
		call := e.AsCall()
		if call.IsMemberFunction() {
			if !writeKey(b, call.Target()) {
				return false
			}
			b.WriteByte('.')
		}
		b.WriteString(call.FunctionName())
		b.WriteByte('(')
		for _, a := range call.Args() {
			if !writeKey(b, a) {
				return false
			}
			b.WriteByte(',')
		}
		b.WriteByte(')')
	default:
		return false
	}
	return true
}

func (c *compiler) boolExprOnce(e ast.Expr) error {
	f := c.f
	switch e.Kind() {
	case ast.LiteralKind:
		if b, ok := e.AsLiteral().(types.Bool); ok {
			f.I32(map[bool]int32{false: triFalse, true: triTrue}[bool(b)])
			return nil
		}
	case ast.CallKind:
		if r, ok, err := c.vocab(e); err != nil {
			return err
		} else if ok && r.t == tBool {
			if r.seg >= 0 {
				f.Get(c.segs[r.seg].local)
				return nil
			}
			// hasTrait / request.hasX: presence, never an error.
			f.Get(c.zl).Mem(OpI32Load8U, c.slotAddr(r.slot)).I32(kindAbsent).Op(OpI32Ne).I32(1).Op(OpI32Shl)
			return nil
		}
		call := e.AsCall()
		args := call.Args()
		switch call.FunctionName() {
		case operators.LogicalAnd, operators.LogicalOr:
			return c.logic(call.FunctionName() == operators.LogicalAnd, args)
		case operators.LogicalNot: // true - t: swaps false and true, keeps an error
			f.I32(triTrue)
			if err := c.boolExpr(args[0]); err != nil {
				return err
			}
			f.Op(OpI32Sub)
			return nil
		case operators.Conditional:
			if c.typeOf(e) == tBool {
				t := f.local(I32)
				if err := c.boolExpr(args[0]); err != nil {
					return err
				}
				c.errFresh = 0
				f.Tee(t).I32(triError).Op(OpI32Eq).If(BlockVal(I32)).I32(triError).Else().Get(t).If(BlockVal(I32))
				f.release(I32, t)
				c.ifDepth++ // what the branches compute is not known after them
				if err := c.boolExpr(args[1]); err != nil {
					return err
				}
				f.Else()
				if err := c.boolExpr(args[2]); err != nil {
					return err
				}
				f.End().End()
				c.ifDepth--
				return nil
			}
		case operators.Equals, operators.NotEquals, operators.Less, operators.LessEquals,
			operators.Greater, operators.GreaterEquals:
			return c.leaf(func(errL uint32) error { return c.compare(call.FunctionName(), args[0], args[1], errL) })
		case operators.In:
			return c.leaf(func(errL uint32) error { return c.in(args[0], args[1], errL) })
		case "startsWith", "endsWith", "contains":
			if !call.IsMemberFunction() || len(args) != 1 {
				break
			}
			return c.leaf(func(errL uint32) error {
				if err := c.valAs(call.Target(), tString, errL); err != nil {
					return err
				}
				if lit, ok := stringLit(args[0]); ok && len(lit) >= 1 && len(lit) <= 8 && call.FunctionName() != "contains" {
					c.affix(call.FunctionName() == "startsWith", lit)
					return nil
				}
				if err := c.valAs(args[0], tString, errL); err != nil {
					return err
				}
				f.Call(map[string]uint32{"startsWith": c.h.strStarts, "endsWith": c.h.strEnds, "contains": c.h.strContains}[call.FunctionName()])
				return nil
			})
		}
	}
	// Anything else of type bool or dyn: compute the value, then check it is a bool.
	return c.leaf(func(errL uint32) error { return c.valAs(e, tBool, errL) })
}

// leaf pushes the tristate of a boolean that body pushes as an i32 0/1, in a new error scope:
// error if body set the scope's flag, else false or true.
func (c *compiler) leaf(body func(errL uint32) error) error {
	f := c.f
	errL := c.errScope()
	f.I32(triError)
	if err := body(errL); err != nil {
		return err
	}
	f.I32(1).Op(OpI32Shl).Get(errL).Op(OpSelect) // 0/1 -> false/true, or error
	f.release(I32, errL)
	return nil
}

// affix replaces (address, length) on the stack by whether the string starts (or ends) with
// the constant lit of 1 to 8 bytes: one masked 8-byte load and compare, no loop. The load
// may read past the string's end (inside memory: the module keeps 8 spare bytes after its
// buffers); those bytes are masked off, and a string shorter than lit never matches.
func (c *compiler) affix(prefix bool, lit string) {
	f := c.f
	p, l := f.local(I32), f.local(I32)
	f.Set(l).Set(p)
	m := int32(len(lit))
	var want uint64
	for i := len(lit) - 1; i >= 0; i-- {
		want = want<<8 | uint64(lit[i])
	}
	mask := uint64(1)<<(8*uint(m)) - 1
	if m == 8 {
		mask = ^uint64(0)
	}
	if prefix {
		f.Get(p)
	} else {
		// p + l - m, or 0 when the string is shorter (so the address cannot wrap).
		f.Get(p).Get(l).Op(OpI32Add).I32(m).Op(OpI32Sub).I32(0).Get(l).I32(m).Op(OpI32GeU, OpSelect)
	}
	f.Mem(OpI64Load, 0).I64(int64(mask)).Op(OpI64And).I64(int64(want)).Op(OpI64Eq)
	f.Get(l).I32(m).Op(OpI32GeU, OpI32And)
	f.release(I32, p, l)
}

// logic pushes the tristate of a && b (and: the smaller tristate) or a || b (or: the larger),
// which is CEL's commutative error absorption: false && error = false, true || error = true.
func (c *compiler) logic(and bool, args []ast.Expr) error {
	f := c.f
	if err := c.boolExpr(args[0]); err != nil {
		return err
	}
	cmp := byte(OpI32LtU)
	if !and {
		cmp = OpI32GtU
	}
	for _, b := range args[1:] {
		ta, tb := f.local(I32), f.local(I32)
		f.Set(ta)
		if err := c.boolExpr(b); err != nil {
			return err
		}
		f.Set(tb)
		f.Get(ta).Get(tb).Get(ta).Get(tb).Op(cmp, OpSelect)
		f.release(I32, ta, tb)
	}
	return nil
}

// valAs pushes the value of e converted to type t, setting errL on an error.
func (c *compiler) valAs(e ast.Expr, t typ, errL uint32) error {
	from, err := c.val(e, errL)
	if err != nil {
		return err
	}
	return c.convert(e, from, t, errL)
}

// val pushes the value of e in its static type and returns that type.
func (c *compiler) val(e ast.Expr, errL uint32) (typ, error) {
	f := c.f
	switch e.Kind() {
	case ast.LiteralKind:
		switch v := e.AsLiteral().(type) {
		case types.Bool:
			f.I32(map[bool]int32{false: 0, true: 1}[bool(v)])
			return tBool, nil
		case types.Int:
			f.I64(int64(v))
			return tInt, nil
		case types.Double:
			f.F64(float64(v))
			return tDouble, nil
		case types.String:
			f.I32(int32(c.constant(string(v)))).I32(int32(len(v)))
			return tString, nil
		}
		return 0, c.errorAt(e, "%s literals are not supported; use bool, int, double or string", e.AsLiteral().Type().(interface{ TypeName() string }).TypeName())
	case ast.IdentKind:
		r, _, err := c.vocab(e)
		if err != nil {
			return 0, err
		}
		c.readSlot(r.slot, r.t, errL)
		return r.t, nil
	case ast.CallKind:
	default:
		return 0, c.errorAt(e, "%s is not supported in rules", kindName(e))
	}
	r, ok, err := c.vocab(e)
	if err != nil {
		return 0, err
	}
	if ok && !r.has && r.seg < 0 {
		c.readSlot(r.slot, r.t, errL)
		return r.t, nil
	}
	call := e.AsCall()
	args := call.Args()
	rt := c.typeOf(e)
	switch fn := call.FunctionName(); fn {
	case operators.Add, operators.Subtract, operators.Multiply, operators.Divide, operators.Modulo:
		if rt != tInt && rt != tDouble {
			what := "operands of type " + rt.String()
			if rt == tString {
				what = "strings (concatenation)"
			} else if rt == tDyn {
				what = "two trait() values; give one side a type, e.g. trait(\"a\") + 0"
			}
			return 0, c.errorAt(e, "arithmetic on %s is not supported", what)
		}
		if err := c.valAs(args[0], rt, errL); err != nil {
			return 0, err
		}
		if err := c.valAs(args[1], rt, errL); err != nil {
			return 0, err
		}
		if rt == tDouble {
			if fn == operators.Modulo {
				return 0, c.errorAt(e, "%% on doubles is not supported")
			}
			f.Op(map[string]byte{operators.Add: OpF64Add, operators.Subtract: OpF64Sub, operators.Multiply: OpF64Mul, operators.Divide: OpF64Div}[fn])
			return tDouble, nil
		}
		c.intArith(fn, args, errL)
		return tInt, nil
	case operators.Negate:
		if rt != tInt && rt != tDouble {
			return 0, c.errorAt(e, "negation of a %s is not supported", rt)
		}
		if err := c.valAs(args[0], rt, errL); err != nil {
			return 0, err
		}
		if rt == tDouble {
			f.Op(OpF64Neg)
		} else {
			f.Call(c.h.neg)
			c.setErr(errL)
		}
		return rt, nil
	case "size":
		arg := args[0]
		if call.IsMemberFunction() {
			arg = call.Target()
		}
		if c.typeOf(arg) != tString && c.typeOf(arg) != tDyn {
			return 0, c.errorAt(e, "size() is supported on strings only")
		}
		if err := c.valAs(arg, tString, errL); err != nil {
			return 0, err
		}
		f.Call(c.h.strSize).Op(OpI64ExtendI32U)
		return tInt, nil
	case operators.Conditional:
		if rt == tBool {
			break
		}
		if rt == 0 {
			return 0, c.errorAt(e, "a conditional of type %s is not supported", c.cur.ast.GetType(e.ID()))
		}
		t := f.local(I32)
		bt := c.blockType(rt)
		if err := c.boolExpr(args[0]); err != nil {
			return 0, err
		}
		c.errFresh = 0 // the flag is set in one branch only
		f.Tee(t).I32(triError).Op(OpI32Eq).If(bt)
		f.I32(1).Set(errL)
		c.zero(rt)
		f.Else().Get(t).If(bt)
		f.release(I32, t)
		c.ifDepth++ // what the branches compute is not known after them
		if err := c.valAs(args[1], rt, errL); err != nil {
			return 0, err
		}
		f.Else()
		if err := c.valAs(args[2], rt, errL); err != nil {
			return 0, err
		}
		f.End().End()
		c.ifDepth--
		return rt, nil
	}
	if rt == tBool {
		switch call.FunctionName() {
		case operators.LogicalAnd, operators.LogicalOr, operators.LogicalNot, operators.Conditional,
			operators.Equals, operators.NotEquals, operators.Less, operators.LessEquals,
			operators.Greater, operators.GreaterEquals, operators.In, "startsWith", "endsWith", "contains",
			fnSegment, fnHasTrait, fnHasQuery, fnHasHeader, fnHasCookie:
			// A bool in a value position: an error becomes the scope's error.
			t := f.local(I32)
			if err := c.boolExpr(e); err != nil {
				return 0, err
			}
			f.Tee(t).I32(triError).Op(OpI32Eq)
			c.setErr(errL)
			f.Get(t).I32(1).Op(OpI32ShrU) // true 2 -> 1, false (or error) -> 0
			f.release(I32, t)
			return tBool, nil
		}
	}
	return 0, c.errorAt(e, "function %s is not supported in rules", call.FunctionName())
}

// intArith replaces the two int64s on the stack by their sum, difference, product, quotient
// or remainder, setting errL on overflow or a zero divisor as CEL does. Addition, subtraction
// and multiplication by a constant are inline (a call costs the engine more than the
// arithmetic: it saves and restores every live register); the rest call a helper.
func (c *compiler) intArith(fn string, args []ast.Expr, errL uint32) {
	f := c.f
	switch fn {
	case operators.Add, operators.Subtract:
		x, y, r := f.local(I64), f.local(I64), f.local(I64)
		f.Set(y).Set(x)
		if fn == operators.Add { // overflow: the result's sign differs from both operands'
			f.Get(x).Get(y).Op(OpI64Add).Tee(r)
			f.Get(x).Get(r).Op(OpI64Xor).Get(y).Get(r).Op(OpI64Xor, OpI64And)
		} else { // overflow: the operands' signs differ and the result's differs from x's
			f.Get(x).Get(y).Op(OpI64Sub).Tee(r)
			f.Get(x).Get(y).Op(OpI64Xor).Get(x).Get(r).Op(OpI64Xor, OpI64And)
		}
		f.I64(0).Op(OpI64LtS)
		c.setErr(errL)
		f.release(I64, x, y, r)
		return
	case operators.Multiply:
		for i, a := range args {
			k, ok := intLit(a)
			if !ok {
				continue
			}
			x, y := f.local(I64), f.local(I64)
			f.Set(y).Set(x)
			v := x // the other operand
			if i == 0 {
				v = y
			}
			f.Get(v).I64(k).Op(OpI64Mul)
			if lo, hi, ok := mulRange(k); ok {
				// overflow unless lo <= v <= hi: one unsigned compare of v-lo with hi-lo.
				f.Get(v).I64(lo).Op(OpI64Sub).I64(int64(uint64(hi) - uint64(lo))).Op(OpI64GtU)
				c.setErr(errL)
			}
			f.release(I64, x, y)
			return
		}
	}
	f.Call(map[string]uint32{operators.Add: c.h.add, operators.Subtract: c.h.sub, operators.Multiply: c.h.mul, operators.Divide: c.h.div, operators.Modulo: c.h.mod}[fn])
	c.setErr(errL)
}

// mulRange is the range of v for which v*k does not overflow int64; ok false when no v
// overflows (k is 0 or 1).
func mulRange(k int64) (lo, hi int64, ok bool) {
	switch {
	case k == 0 || k == 1:
		return 0, 0, false
	case k == -1:
		return math.MinInt64 + 1, math.MaxInt64, true
	case k > 1: // Go's division truncates toward zero: MinInt64/k rounds up, MaxInt64/k down.
		return math.MinInt64 / k, math.MaxInt64 / k, true
	default: // k < -1: v*k >= MinInt64 iff v <= MinInt64/k, v*k <= MaxInt64 iff v >= MaxInt64/k
		return math.MaxInt64 / k, math.MinInt64 / k, true
	}
}

// intLit reports e's value if it is an int literal.
func intLit(e ast.Expr) (int64, bool) {
	if e.Kind() != ast.LiteralKind {
		return 0, false
	}
	v, ok := e.AsLiteral().(types.Int)
	return int64(v), ok
}

// blockType is the block type of a block yielding a value of type t.
func (c *compiler) blockType(t typ) int64 {
	switch t {
	case tInt:
		return BlockVal(I64)
	case tDouble:
		return BlockVal(F64)
	case tBool:
		return BlockVal(I32)
	case tString:
		return BlockFunc(c.mod.Type(nil, []ValType{I32, I32}))
	}
	return BlockFunc(c.mod.Type(nil, []ValType{I32, I64}))
}

// zero pushes a placeholder value of type t (used where an error has been recorded).
func (c *compiler) zero(t typ) {
	switch t {
	case tInt:
		c.f.I64(0)
	case tDouble:
		c.f.F64(0)
	case tBool:
		c.f.I32(0)
	case tString:
		c.f.I32(0).I32(0)
	default:
		c.f.I32(kindAbsent).I64(0)
	}
}

// readSlot pushes input slot i as type t. A slot of another kind (absent, mostly) sets errL
// and yields a harmless placeholder: strings read as empty, so no loop can run out of bounds.
func (c *compiler) readSlot(i int, t typ, errL uint32) {
	f := c.f
	a := c.slotAddr(i)
	kind := func() { f.Get(c.zl).Mem(OpI32Load8U, a) }
	switch t {
	case tInt, tDouble:
		want := int32(kindInt)
		if t == tDouble {
			want = kindDouble
		}
		kind()
		f.I32(want).Op(OpI32Xor) // non-zero: another kind, an error
		c.setErr(errL)
		if t == tInt {
			f.Get(c.zl).Mem(OpI64Load, a+8)
		} else {
			f.Get(c.zl).Mem(OpF64Load, a+8)
		}
	case tString:
		ok := f.local(I32)
		kind()
		f.I32(kindString).Op(OpI32Eq).Tee(ok).Op(OpI32Eqz)
		c.setErr(errL)
		f.Get(c.zl).Mem(OpI32Load, a+8).I32(int32(c.ib)).Op(OpI32Add).I32(0).Get(ok).Op(OpSelect)
		f.Get(c.zl).Mem(OpI32Load, a+4).I32(0).Get(ok).Op(OpSelect)
		f.release(I32, ok)
	case tDyn:
		k := f.local(I32)
		kind()
		f.Tee(k).I32(kindAbsent).Op(OpI32Eq).Get(k).I32(kindString).Op(OpI32GtU, OpI32Or)
		c.setErr(errL)
		f.Get(k)
		// A string's address<<32 | length, else the payload as is (no branch: both loads
		// are of this slot).
		f.Get(c.zl).Mem(OpI32Load, a+8).I32(int32(c.ib)).Op(OpI32Add, OpI64ExtendI32U).I64(32).Op(OpI64Shl)
		f.Get(c.zl).Mem(OpI32Load, a+4).Op(OpI64ExtendI32U, OpI64Or)
		f.Get(c.zl).Mem(OpI64Load, a+8)
		f.Get(k).I32(kindString).Op(OpI32Eq, OpSelect)
		f.release(I32, k)
	}
}

// convert converts the value on the stack from one type to another. Only conversions CEL
// itself makes are possible: to dyn, and from dyn to a concrete type (a runtime check; a
// value of another kind is an error, as CEL's "no such overload").
func (c *compiler) convert(e ast.Expr, from, to typ, errL uint32) error {
	f := c.f
	if from == to {
		return nil
	}
	switch {
	case to == tDyn:
		switch from {
		case tInt:
			t := f.local(I64)
			f.Set(t).I32(kindInt).Get(t)
			f.release(I64, t)
		case tDouble:
			t := f.local(F64)
			f.Set(t).I32(kindDouble).Get(t).Op(OpI64ReinterpretF64)
			f.release(F64, t)
		case tBool:
			t := f.local(I32)
			f.Set(t).I32(kindBool).Get(t).Op(OpI64ExtendI32U)
			f.release(I32, t)
		case tString:
			p, l := f.local(I32), f.local(I32)
			f.Set(l).Set(p).I32(kindString).Get(p).Op(OpI64ExtendI32U).I64(32).Op(OpI64Shl).Get(l).Op(OpI64ExtendI32U, OpI64Or)
			f.release(I32, p, l)
		default:
			return c.errorAt(e, "cannot use a %s here", from)
		}
		return nil
	case from == tDyn:
		k, p := f.local(I32), f.local(I64)
		f.Set(p).Set(k)
		want := map[typ]int32{tBool: kindBool, tInt: kindInt, tDouble: kindDouble, tString: kindString}[to]
		f.Get(k).I32(want).Op(OpI32Ne)
		c.setErr(errL)
		switch to {
		case tInt:
			f.Get(p)
		case tDouble:
			f.Get(p).Op(OpF64ReinterpretI64)
		case tBool:
			f.Get(p).Op(OpI32WrapI64)
		case tString:
			ok := f.local(I32)
			f.Get(k).I32(kindString).Op(OpI32Eq).Set(ok)
			f.Get(p).I64(32).Op(OpI64ShrU, OpI32WrapI64).I32(0).Get(ok).Op(OpSelect)
			f.Get(p).Op(OpI32WrapI64).I32(0).Get(ok).Op(OpSelect)
			f.release(I32, ok)
		}
		f.release(I32, k)
		f.release(I64, p)
		return nil
	}
	return c.errorAt(e, "cannot use a %s where a %s is expected", from, to)
}

// operand is a value that can be pushed (more than once) as a given type.
type operand struct {
	t    typ
	push func(as typ) error
	// dynSlot is 1 + the input slot when the operand is a dyn input read as is (trait(...)),
	// which a comparison with a number can read without building a dyn value; else 0.
	dynSlot int
}

func (c *compiler) exprOperand(e ast.Expr, errL uint32) operand {
	o := operand{t: c.typeOf(e), push: func(as typ) error { return c.valAs(e, as, errL) }}
	if r, ok, err := c.vocab(e); err == nil && ok && !r.has && r.seg < 0 && r.t == tDyn && o.t == tDyn {
		o.dynSlot = r.slot + 1
	}
	return o
}

// compare pushes the i32 0/1 (or 2, an error) of a op b.
func (c *compiler) compare(op string, a, b ast.Expr, errL uint32) error {
	// Interned input compared with a constant: one integer compare.
	for i := range 2 {
		x, y := a, b
		if i == 1 {
			x, y = b, a
		}
		lit, isLit := stringLit(y)
		if r, ok := c.internable(x); ok && isLit && c.m.Inputs[r.slot].Interned && (op == operators.Equals || op == operators.NotEquals) {
			c.internedIn(r.slot, []string{lit}, errL)
			if op == operators.NotEquals {
				c.f.Op(OpI32Eqz)
			}
			return nil
		}
	}
	return c.compareOperands(op, c.exprOperand(a, errL), c.exprOperand(b, errL), a, errL)
}

// internedIn pushes whether interned slot i equals one of consts (error if absent): its kind
// is "interned" and its id one of the constants' (a run of consecutive ids is one range check).
func (c *compiler) internedIn(i int, consts []string, errL uint32) {
	f := c.f
	a := c.slotAddr(i)
	k := f.local(I32)
	f.Get(c.zl).Mem(OpI32Load8U, a).Tee(k).Op(OpI32Eqz)
	c.setErr(errL)
	f.Get(k).I32(kindInterned).Op(OpI32Eq)
	f.release(I32, k)
	var ids []int64
	for _, s := range consts {
		id := int64(0)
		for j, x := range c.m.Inputs[i].Strings {
			if x == s {
				id = int64(j + 1)
			}
		}
		if id != 0 && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	switch {
	case len(ids) == 0: // none of the constants is one of the slot's strings
		f.Op(OpDrop).I32(0)
		return
	case ids[len(ids)-1]-ids[0] == int64(len(ids)-1): // lo <= id <= hi
		f.Get(c.zl).Mem(OpI64Load, a+8)
		if ids[0] != 0 {
			f.I64(ids[0]).Op(OpI64Sub)
		}
		f.I64(ids[len(ids)-1] - ids[0]).Op(OpI64LeU)
	default:
		for j, id := range ids {
			f.Get(c.zl).Mem(OpI64Load, a+8).I64(id).Op(OpI64Eq)
			if j > 0 {
				f.Op(OpI32Or)
			}
		}
	}
	f.Op(OpI32And)
}

func (c *compiler) compareOperands(op string, a, b operand, at ast.Expr, errL uint32) error {
	f := c.f
	push := func(o operand, t typ) error { return o.push(t) }
	numeric := func(t typ) bool { return t == tInt || t == tDouble }
	switch {
	case a.t == tInt && b.t == tInt:
		if err := push(a, tInt); err != nil {
			return err
		}
		if err := push(b, tInt); err != nil {
			return err
		}
		f.Op(map[string]byte{operators.Equals: OpI64Eq, operators.NotEquals: OpI64Ne, operators.Less: OpI64LtS,
			operators.LessEquals: OpI64LeS, operators.Greater: OpI64GtS, operators.GreaterEquals: OpI64GeS}[op])
		return nil
	case numeric(a.t) && numeric(b.t):
		x, y := f.local(F64), f.local(F64)
		for _, p := range []struct {
			o operand
			l uint32
		}{{a, x}, {b, y}} {
			if err := push(p.o, p.o.t); err != nil {
				return err
			}
			if p.o.t == tInt {
				f.Op(OpF64ConvertI64S)
			}
			f.Set(p.l)
		}
		// With NaN every ordering is false, as in cel-go (and IEEE 754).
		f.Get(x).Get(y).Op(map[string]byte{operators.Equals: OpF64Eq, operators.NotEquals: OpF64Ne, operators.Less: OpF64Lt,
			operators.LessEquals: OpF64Le, operators.Greater: OpF64Gt, operators.GreaterEquals: OpF64Ge}[op])
		f.release(F64, x, y)
		return nil
	}
	if a.t == 0 || b.t == 0 {
		return c.errorAt(at, "comparison of these types is not supported")
	}
	if (a.t == tDyn && numeric(b.t)) || (numeric(a.t) && b.t == tDyn) {
		return c.compareDynNumber(op, a, b, errL)
	}
	if err := push(a, tDyn); err != nil {
		return err
	}
	if err := push(b, tDyn); err != nil {
		return err
	}
	switch op {
	case operators.Equals:
		f.Call(c.h.dynEq)
	case operators.NotEquals:
		f.Call(c.h.dynEq).Op(OpI32Eqz)
	default:
		r := f.local(I32)
		f.Call(c.h.dynCmp).Tee(r).I32(2).Op(OpI32Eq)
		c.setErr(errL)
		f.Get(r).I32(0).Op(map[string]byte{operators.Less: OpI32LtS, operators.LessEquals: OpI32LeS,
			operators.Greater: OpI32GtS, operators.GreaterEquals: OpI32GeS}[op])
		f.Get(r).I32(3).Op(OpI32Ne, OpI32And) // 3: unordered (NaN), every ordering is false
		f.release(I32, r)
	}
	return nil
}

// compareDynNumber pushes a op b where one side is dyn and the other an int or a double,
// inline and without branches, with the semantics of the dyn_eq and dyn_cmp helpers: a dyn
// int compares exactly with an int and as a double with a double, a dyn double as a double;
// ordering a dyn of another kind with a number is an error, equality is false.
func (c *compiler) compareDynNumber(op string, a, b operand, errL uint32) error {
	f := c.f
	d, n, dynLeft := a, b, a.t == tDyn
	if !dynLeft {
		d, n = b, a
	}
	k, p := f.local(I32), f.local(I64)
	if d.dynSlot > 0 {
		// Read kind and payload straight from the slot; absent or not a value kind is an
		// error, as readSlot makes it.
		addr := c.slotAddr(d.dynSlot - 1)
		f.Get(c.zl).Mem(OpI32Load8U, addr).Tee(k).Op(OpI32Eqz).Get(k).I32(kindString).Op(OpI32GtU, OpI32Or)
		c.setErr(errL)
		f.Get(c.zl).Mem(OpI64Load, addr+8).Set(p)
	} else {
		if err := d.push(tDyn); err != nil {
			return err
		}
		f.Set(p).Set(k)
	}
	nl := map[typ]ValType{tInt: I64, tDouble: F64}[n.t]
	x := f.local(nl)
	if err := n.push(n.t); err != nil {
		return err
	}
	f.Set(x)
	isInt := f.local(I32)
	f.Get(k).I32(kindInt).Op(OpI32Eq).Set(isInt)
	// cmp pushes the comparison with the dyn side read by dyn() and the number by num().
	cmp := func(ops map[string]byte, dyn, num func()) {
		if dynLeft {
			dyn()
			num()
		} else {
			num()
			dyn()
		}
		f.Op(ops[op])
	}
	i64Ops := map[string]byte{operators.Equals: OpI64Eq, operators.NotEquals: OpI64Ne, operators.Less: OpI64LtS,
		operators.LessEquals: OpI64LeS, operators.Greater: OpI64GtS, operators.GreaterEquals: OpI64GeS}
	f64Ops := map[string]byte{operators.Equals: OpF64Eq, operators.NotEquals: OpF64Ne, operators.Less: OpF64Lt,
		operators.LessEquals: OpF64Le, operators.Greater: OpF64Gt, operators.GreaterEquals: OpF64Ge}
	numF64 := func() {
		f.Get(x)
		if n.t == tInt {
			f.Op(OpF64ConvertI64S)
		}
	}
	eqOp := op
	if op == operators.NotEquals {
		eqOp = operators.Equals // computed as equality, negated at the end
	}
	op, opIn := eqOp, op
	// The dyn is an int.
	if n.t == tInt {
		cmp(i64Ops, func() { f.Get(p) }, func() { f.Get(x) })
	} else {
		cmp(f64Ops, func() { f.Get(p).Op(OpF64ConvertI64S) }, func() { f.Get(x) })
	}
	// The dyn is a double (NaN: every comparison false, as IEEE 754 and cel-go).
	cmp(f64Ops, func() { f.Get(p).Op(OpF64ReinterpretI64) }, numF64)
	if op == operators.Equals {
		f.Get(k).I32(kindDouble).Op(OpI32Eq, OpI32And) // any other kind: not equal
	}
	f.Get(isInt).Op(OpSelect)
	switch opIn {
	case operators.Equals:
	case operators.NotEquals:
		f.Op(OpI32Eqz)
	default: // ordering a dyn that is not a number with a number: an error, unless the number
		// is NaN (then every ordering is false, whatever the other side is)
		f.Get(isInt).Get(k).I32(kindDouble).Op(OpI32Eq, OpI32Or, OpI32Eqz)
		if n.t == tDouble {
			f.Get(x).Get(x).Op(OpF64Eq, OpI32And)
		}
		c.setErr(errL)
	}
	f.release(I32, k, isInt)
	f.release(I64, p)
	f.release(nl, x)
	return nil
}

// in pushes x in [list literal].
func (c *compiler) in(x, list ast.Expr, errL uint32) error {
	f := c.f
	if list.Kind() != ast.ListKind {
		return c.errorAt(list, "in is supported with a list literal only, like x in [\"a\", \"b\"]")
	}
	elems := list.AsList().Elements()
	if r, ok := c.internable(x); ok && c.m.Inputs[r.slot].Interned {
		lits, _ := stringList(list)
		c.internedIn(r.slot, lits, errL)
		return nil
	}
	// Evaluate x once into locals, then compare with each element; an error anywhere
	// (x or any element) makes the result an error, as building the list would.
	xt := c.typeOf(x)
	if xt == 0 {
		return c.errorAt(x, "in on this type is not supported")
	}
	if err := c.valAs(x, xt, errL); err != nil {
		return err
	}
	vals := c.store(xt)
	xo := operand{t: xt, push: func(as typ) error {
		c.load(xt, vals)
		return c.convert(x, xt, as, errL)
	}}
	acc := f.local(I32)
	f.I32(0).Set(acc)
	for _, el := range elems {
		if err := c.compareOperands(operators.Equals, xo, c.exprOperand(el, errL), el, errL); err != nil {
			return err
		}
		f.Get(acc).Op(OpI32Or).Set(acc)
	}
	f.Get(acc)
	f.release(I32, acc)
	c.free(xt, vals)
	return nil
}

// store pops a value of type t into fresh locals; load pushes it again; free releases them.
func (c *compiler) store(t typ) []uint32 {
	f := c.f
	switch t {
	case tInt:
		l := f.local(I64)
		f.Set(l)
		return []uint32{l}
	case tDouble:
		l := f.local(F64)
		f.Set(l)
		return []uint32{l}
	case tBool:
		l := f.local(I32)
		f.Set(l)
		return []uint32{l}
	case tString:
		p, l := f.local(I32), f.local(I32)
		f.Set(l).Set(p)
		return []uint32{p, l}
	default:
		k, p := f.local(I32), f.local(I64)
		f.Set(p).Set(k)
		return []uint32{k, p}
	}
}

func (c *compiler) load(_ typ, ls []uint32) {
	for _, l := range ls {
		c.f.Get(l)
	}
}

func (c *compiler) free(t typ, ls []uint32) {
	switch t {
	case tInt:
		c.f.release(I64, ls...)
	case tDouble:
		c.f.release(F64, ls...)
	case tDyn:
		c.f.release(I32, ls[0])
		c.f.release(I64, ls[1])
	default:
		c.f.release(I32, ls...)
	}
}
