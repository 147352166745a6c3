package rules

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"

	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/rules/internal/wasmenc"
)

// Ruleset is the result of compiling a rules file: one WebAssembly module that evaluates every
// segment (and every slot's variant choice) in one call, and the manifest that says how to
// feed it and read it.
type Ruleset struct {
	Module   []byte
	Manifest Manifest
	// Modules are the hand-written modules of the file's modules section, in the order of
	// Manifest.Modules (see AttachModules); nil until attached.
	Modules [][]byte
}

// typ is the static type of a compiled expression, and how its value sits on the wasm stack.
type typ uint8

const (
	tBool   typ = iota + 1 // i32 0/1 as a value; i32 0/1/2 (2 = error) as a tristate
	tInt                   // i64
	tDouble                // f64
	tString                // i32 address, i32 length
	tDyn                   // i32 slot kind, i64 payload (strings: address<<32 | length)
)

func (t typ) String() string {
	return [...]string{"?", "bool", "int", "double", "string", "dyn"}[t]
}

// inputKey identifies an input slot.
type inputKey struct {
	req, key string
	feat     profile.Feature
}

type segState struct {
	def   SegmentDef
	ast   *ast.AST
	deps  []int
	local uint32
}

type compiler struct {
	file       *File
	env        *cel.Env
	m          *Manifest
	segs       []*segState
	segIdx     map[string]int
	modSegs    map[string]int // segment computed by a hand-written module → its bit
	scores     map[string]bool
	inputs     map[inputKey]int
	needsBytes []bool
	interned   []map[string]bool
	strCap     []bool // slot may hold a string
	usesReq    []bool // per segment, directly

	cur      *segState // segment being analysed or generated
	anyScore bool      // accept score() of undeclared scores (ParseFeature)

	mod      wasmenc.Module
	f        *fnBuilder
	h        helpers
	ib       uint32            // input buffer address
	cb       uint32            // constants address
	zl       uint32            // a local never set: the base of constant addresses (see generate)
	errFresh uint32            // 1 + the error flag still 0 on every path here (see setErr); 0: none
	ifDepth  int               // ifs the code being generated is inside
	memo     map[string]uint32 // boolean subexpression → local holding its tristate (see boolExpr)
	consts   []byte
	constOff map[string]uint32
}

// errorAt formats a rule error with the rule's name and the line:column inside the rule.
func (c *compiler) errorAt(e ast.Expr, format string, args ...any) error {
	loc := c.cur.ast.SourceInfo().GetStartLocation(e.ID())
	return fmt.Errorf("rule %s %d:%d: %s", c.cur.def.Name, loc.Line(), loc.Column()+1, fmt.Sprintf(format, args...))
}

// Compile compiles a rules file into a ruleset. Errors name the file position and the rule.
func Compile(f *File) (*Ruleset, error) {
	c, err := analyseFile(f, false)
	if err != nil {
		return nil, err
	}
	order, err := c.order()
	if err != nil {
		return nil, err
	}
	for i, s := range c.segs {
		for _, d := range s.deps {
			c.m.Segments[i].DependsOn = append(c.m.Segments[i].DependsOn, c.m.Segments[d].Name)
		}
	}
	for _, i := range order { // dependencies first
		need := c.usesReq[i]
		for _, d := range c.segs[i].deps {
			need = need || c.m.Segments[d].NeedsRequest
		}
		c.m.Segments[i].NeedsRequest = need
	}
	for i := range c.m.Inputs {
		in := &c.m.Inputs[i]
		if c.strCap[i] && !c.needsBytes[i] {
			in.Interned = true
			for s := range c.interned[i] {
				in.Strings = append(in.Strings, s)
			}
			sortStrings(in.Strings)
		}
	}
	if err := c.slots(); err != nil {
		return nil, err
	}
	if err := c.triggers(); err != nil {
		return nil, err
	}
	// With hand-written modules the host chooses the slots' variants once every module has
	// answered (a variant may name a module's segment), so the generated module has none.
	slots := c.m.Slots
	if len(f.Modules) > 0 {
		c.m.Slots = nil
	}
	mod, err := c.generate(order)
	c.m.Slots = slots
	if err != nil {
		return nil, err
	}
	if err := c.linkModules(); err != nil {
		return nil, err
	}
	return &Ruleset{Module: mod, Manifest: *c.m}, nil
}

// analyseOnly type-checks and analyses the rules of f without generating code, accepting
// any score name.
func analyseOnly(f *File) (*compiler, error) { return analyseFile(f, true) }

func analyseFile(f *File, anyScore bool) (*compiler, error) {
	env, err := newEnv(nil)
	if err != nil {
		return nil, fmt.Errorf("rule environment: %w", err)
	}
	c := &compiler{
		file: f, env: env, m: &Manifest{ABIVersion: ABIVersion},
		segIdx: map[string]int{}, scores: map[string]bool{}, inputs: map[inputKey]int{},
		constOff: map[string]uint32{}, anyScore: anyScore, modSegs: map[string]int{},
	}
	if len(f.Scores) > 0 {
		c.m.Scores = map[string]ScoreInfo{}
	}
	for _, s := range f.Scores {
		c.scores[s.Name] = true
		c.m.Scores[s.Name] = ScoreInfo{HalfLife: s.HalfLife, Weights: s.Weights}
	}
	for i, s := range f.Segments {
		if _, dup := c.segIdx[s.Name]; dup {
			return nil, fmt.Errorf("%s: segment %q is defined twice; rename one", f.where(s.Pos), s.Name)
		}
		c.segIdx[s.Name] = i
		c.m.Segments = append(c.m.Segments, SegmentInfo{Name: s.Name, Rule: s.Rule, Description: s.Description})
	}
	var errs []error
	bit, owner := len(f.Segments), map[string]string{}
	for _, md := range f.Modules {
		for _, name := range md.Segments {
			if _, ok := c.segIdx[name]; ok {
				errs = append(errs, fmt.Errorf("%s: segment %q is defined under segments and computed by module %q; keep one", f.where(md.Pos), name, md.Path))
			} else if o, ok := owner[name]; ok {
				errs = append(errs, fmt.Errorf("%s: segment %q is computed by modules %q and %q; keep one", f.where(md.Pos), name, o, md.Path))
			} else {
				owner[name] = md.Path
				c.modSegs[name] = bit
				bit++
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, s := range f.Segments {
		st := &segState{def: s}
		c.segs = append(c.segs, st)
		c.usesReq = append(c.usesReq, false)
		c.cur = st
		checked, iss := env.Compile(s.Rule)
		if iss != nil && iss.Err() != nil {
			for _, e := range iss.Errors() {
				errs = append(errs, fmt.Errorf("%s: rule %s %d:%d: %s", f.where(s.RulePos), s.Name,
					e.Location.Line(), e.Location.Column()+1, e.Message))
			}
			continue
		}
		if k := checked.OutputType().Kind(); k != types.BoolKind && k != types.DynKind {
			errs = append(errs, fmt.Errorf("%s: rule %s: the rule is of type %s; a rule must be a boolean expression",
				f.where(s.RulePos), s.Name, checked.OutputType()))
			continue
		}
		st.ast = checked.NativeRep()
		if err := c.analyse(st.ast.Expr()); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.where(s.RulePos), err))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

func (f *File) where(p Pos) string {
	name := f.Name
	if name == "" {
		name = "rules"
	}
	return fmt.Sprintf("%s:%d:%d", name, p.Line, p.Col)
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// triggers checks that enter/exit triggers name segments and that threshold expressions
// are boolean rules over the same vocabulary.
func (c *compiler) triggers() error {
	seen := map[string]bool{}
	for _, t := range c.file.Triggers {
		if seen[t.Name] {
			return fmt.Errorf("%s: trigger %q is defined twice; rename one", c.file.where(t.Pos), t.Name)
		}
		seen[t.Name] = true
		switch t.Kind {
		case TriggerEnter, TriggerExit:
			_, isModule := c.modSegs[t.Segment]
			if _, ok := c.segIdx[t.Segment]; !ok && !isModule {
				return fmt.Errorf("%s: trigger %s: unknown segment %q; name a segment defined under segments",
					c.file.where(t.Pos), t.Name, t.Segment)
			}
		case TriggerThreshold:
			sub := &File{Name: c.file.Name, Scores: c.file.Scores, Segments: append(append([]SegmentDef(nil), c.file.Segments...),
				SegmentDef{Name: "trigger_" + t.Name, Rule: t.Expr, Pos: t.Pos, RulePos: t.Pos})}
			if _, err := analyseFile(sub, false); err != nil {
				return fmt.Errorf("trigger %s: on is neither enter(\"segment\"), exit(\"segment\") nor a valid boolean rule: %w", t.Name, err)
			}
		}
	}
	return nil
}

// slots resolves slot variants to segment bits.
func (c *compiler) slots() error {
	seen := map[string]bool{}
	for _, s := range c.file.Slots {
		if seen[s.Name] {
			return fmt.Errorf("%s: slot %q is defined twice; rename one", c.file.where(s.Pos), s.Name)
		}
		seen[s.Name] = true
		si := SlotInfo{Name: s.Name}
		for _, v := range s.Variants {
			idx, ok := c.segIdx[v.When]
			if !ok {
				idx, ok = c.modSegs[v.When]
			}
			if !ok {
				return fmt.Errorf("%s: slot %s: unknown segment %q in when; name a segment defined under segments",
					c.file.where(v.Pos), s.Name, v.When)
			}
			si.Variants = append(si.Variants, VariantInfo{When: v.When, Segment: idx, HTML: v.HTML, Fragment: v.Fragment})
		}
		c.m.Slots = append(c.m.Slots, si)
	}
	return nil
}

// order returns the segments in dependency order, or an error naming a cycle.
func (c *compiler) order() ([]int, error) {
	const (
		white = iota
		grey
		black
	)
	color := make([]int, len(c.segs))
	var order, stack []int
	var visit func(i int) error
	visit = func(i int) error {
		color[i] = grey
		stack = append(stack, i)
		for _, d := range c.segs[i].deps {
			switch color[d] {
			case grey:
				var names []string
				for k := len(stack) - 1; k >= 0; k-- {
					if stack[k] == d {
						for _, s := range stack[k:] {
							names = append(names, c.segs[s].def.Name)
						}
						break
					}
				}
				names = append(names, c.segs[d].def.Name)
				return fmt.Errorf("%s: segment cycle %s; a segment cannot depend on itself through segment()",
					c.file.where(c.segs[d].def.Pos), strings.Join(names, " -> "))
			case white:
				if err := visit(d); err != nil {
					return err
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[i] = black
		order = append(order, i)
		return nil
	}
	for i := range c.segs {
		if color[i] == white {
			if err := visit(i); err != nil {
				return nil, err
			}
		}
	}
	return order, nil
}

// vocabRef is a vocabulary call or request variable recognised in a rule.
type vocabRef struct {
	fn   string // function name, or "request.<field>" for variables
	slot int    // input slot, -1 for segment()
	seg  int    // segment(), else -1
	t    typ    // result type
	has  bool   // hasTrait / request.hasX: reads presence only
}

// stringLit returns the value of a string literal.
func stringLit(e ast.Expr) (string, bool) {
	if e.Kind() != ast.LiteralKind {
		return "", false
	}
	s, ok := e.AsLiteral().(types.String)
	return string(s), ok
}

// vocab recognises a vocabulary call or request variable, registering its input slot.
// It returns ok false for anything else.
func (c *compiler) vocab(e ast.Expr) (vocabRef, bool, error) {
	if e.Kind() == ast.IdentKind {
		name := e.AsIdent()
		field, isReq := strings.CutPrefix(name, "request.")
		if !isReq {
			return vocabRef{}, false, c.errorAt(e, "unknown name %q", name)
		}
		t := tString
		if field == FieldHour || field == FieldBucket {
			t = tInt
		}
		slot := c.input(inputKey{req: field}, t == tString)
		return vocabRef{fn: name, slot: slot, seg: -1, t: t}, true, nil
	}
	if e.Kind() != ast.CallKind {
		return vocabRef{}, false, nil
	}
	call := e.AsCall()
	fn := call.FunctionName()
	var nargs int
	switch fn {
	case fnTrait, fnHasTrait, fnScore, fnSince, fnSegment, fnQuery, fnHeader, fnCookie, fnHasQuery, fnHasHeader, fnHasCookie:
		nargs = 1
	case fnCount:
		nargs = 2
	case fnSum:
		nargs = 3
	default:
		return vocabRef{}, false, nil
	}
	args := call.Args()
	if call.IsMemberFunction() || len(args) != nargs {
		return vocabRef{}, false, c.errorAt(e, "%s takes %d string literal arguments", fn, nargs)
	}
	lits := make([]string, nargs)
	for i, a := range args {
		s, ok := stringLit(a)
		if !ok {
			return vocabRef{}, false, c.errorAt(a, "argument %d of %s must be a string literal, so the features a rule reads are known when it is compiled", i+1, fn)
		}
		lits[i] = s
	}
	r := vocabRef{fn: fn, seg: -1}
	switch fn {
	case fnTrait, fnHasTrait:
		r.slot = c.input(inputKey{feat: profile.Feature{Kind: profile.FeatureTrait, Name: lits[0]}}, true)
		r.t, r.has = tDyn, fn == fnHasTrait
	case fnScore:
		if !c.scores[lits[0]] && !c.anyScore {
			return r, false, c.errorAt(e, "unknown score %q; declare it under scores", lits[0])
		}
		r.slot = c.input(inputKey{feat: profile.Feature{Kind: profile.FeatureScore, Name: lits[0]}}, false)
		r.t = tDouble
	case fnSince:
		r.slot = c.input(inputKey{feat: profile.Feature{Kind: profile.FeatureSince, Name: lits[0]}}, false)
		r.t = tInt
	case fnCount:
		w, err := ParseWindow(lits[1])
		if err != nil {
			return r, false, c.errorAt(args[1], "%v", err)
		}
		r.slot = c.input(inputKey{feat: profile.Feature{Kind: profile.FeatureCount, Name: lits[0], Window: w}}, false)
		r.t = tInt
	case fnSum:
		w, err := ParseWindow(lits[2])
		if err != nil {
			return r, false, c.errorAt(args[2], "%v", err)
		}
		r.slot = c.input(inputKey{feat: profile.Feature{Kind: profile.FeatureSum, Name: lits[0], Prop: lits[1], Window: w}}, false)
		r.t = tDouble
	case fnSegment:
		idx, ok := c.segIdx[lits[0]]
		if _, isModule := c.modSegs[lits[0]]; !ok && isModule {
			return r, false, c.errorAt(e, "segment %q is computed by a hand-written module, which runs after the CEL rules, so a rule cannot read it with segment(); use it in a slot's when or a trigger, or compute this rule in the module too", lits[0])
		}
		if !ok {
			return r, false, c.errorAt(e, "unknown segment %q", lits[0])
		}
		r.slot, r.seg, r.t = -1, idx, tBool
	default: // request.query/header/cookie and their has variants
		field := strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(fn, "request."), "has"))
		if field == "header" {
			lits[0] = strings.ToLower(lits[0]) // header names are case-insensitive
		}
		r.slot = c.input(inputKey{req: field, key: lits[0]}, true)
		r.t, r.has = tString, strings.HasPrefix(fn, "request.has")
	}
	if r.has {
		r.t = tBool
	}
	return r, true, nil
}

// input returns the slot of an input, adding it if new.
func (c *compiler) input(k inputKey, strCap bool) int {
	if k.req != "" {
		c.usesReq[len(c.segs)-1] = true
	}
	if i, ok := c.inputs[k]; ok {
		return i
	}
	i := len(c.m.Inputs)
	c.inputs[k] = i
	in := Input{Request: k.req, Key: k.key}
	if k.req == "" {
		in.Feature = k.feat
	}
	c.m.Inputs = append(c.m.Inputs, in)
	c.needsBytes = append(c.needsBytes, false)
	c.interned = append(c.interned, map[string]bool{})
	c.strCap = append(c.strCap, strCap)
	return i
}

// internable reports whether e reads a string-capable input slot directly (and so may be
// interned when it is only compared with constants).
func (c *compiler) internable(e ast.Expr) (vocabRef, bool) {
	r, ok, err := c.vocab(e)
	if err != nil || !ok || r.slot < 0 || r.has || !c.strCap[r.slot] {
		return vocabRef{}, false
	}
	return r, true
}

// analyse walks a rule: it registers inputs and segment dependencies, and notes which string
// inputs are used other than in comparisons with constants.
func (c *compiler) analyse(e ast.Expr) error {
	switch e.Kind() {
	case ast.LiteralKind:
		return nil
	case ast.IdentKind:
		r, _, err := c.vocab(e)
		if err != nil {
			return err
		}
		if c.strCap[r.slot] {
			c.needsBytes[r.slot] = true
		}
		return nil
	case ast.ListKind:
		for _, el := range e.AsList().Elements() {
			if err := c.analyse(el); err != nil {
				return err
			}
		}
		return nil
	case ast.CallKind:
	default:
		return c.errorAt(e, "%s is not supported in rules", kindName(e))
	}
	r, ok, err := c.vocab(e)
	if err != nil {
		return err
	}
	if ok {
		if r.seg >= 0 {
			if !containsInt(c.cur.deps, r.seg) {
				c.cur.deps = append(c.cur.deps, r.seg)
			}
		} else if c.strCap[r.slot] && !r.has {
			c.needsBytes[r.slot] = true
		}
		return nil
	}
	call := e.AsCall()
	args := call.Args()
	switch call.FunctionName() {
	case operators.Equals, operators.NotEquals:
		for i := range 2 {
			if lit, isLit := stringLit(args[1-i]); isLit {
				if r, ok := c.internable(args[i]); ok {
					c.interned[r.slot][lit] = true
					return nil
				}
			}
		}
	case operators.In:
		if r, ok := c.internable(args[0]); ok && args[1].Kind() == ast.ListKind {
			lits, all := stringList(args[1])
			if all {
				for _, l := range lits {
					c.interned[r.slot][l] = true
				}
				return nil
			}
		}
	}
	if err := c.timeMark(e, call); err != nil {
		return err
	}
	if call.IsMemberFunction() {
		if err := c.analyse(call.Target()); err != nil {
			return err
		}
	}
	for _, a := range args {
		if err := c.analyse(a); err != nil {
			return err
		}
	}
	return nil
}

// mirrored is the comparison with its operands swapped: 5 < since(t) is since(t) > 5.
var mirrored = map[string]string{
	operators.Less: operators.Greater, operators.LessEquals: operators.GreaterEquals,
	operators.Greater: operators.Less, operators.GreaterEquals: operators.LessEquals,
	operators.Equals: operators.Equals, operators.NotEquals: operators.NotEquals,
}

// MaxTimeMarks is the most distinct constants the rules of one file may compare one since() or
// score() with. The origin looks for the next mark after every evaluation (profile.NextExpiry),
// so their number is bounded like every other cost a rules file sets; real rules use a few.
const MaxTimeMarks = 256

// timeMark records the time mark of a comparison of since() or score() with a numeric literal
// (see Manifest.TimeMarks); any other call records nothing. More than MaxTimeMarks marks for one
// feature is an error.
func (c *compiler) timeMark(e ast.Expr, call ast.CallExpr) error {
	op := call.FunctionName()
	args := call.Args()
	if _, cmp := mirrored[op]; !cmp || len(args) != 2 {
		return nil
	}
	tooMany := func(fn, name string) error {
		return c.errorAt(e, "more than %d distinct constants are compared with %s(%q) in this file; the origin schedules a re-evaluation at each of them", MaxTimeMarks, fn, name)
	}
	for i := range 2 {
		x, ok := numberLit(args[1-i])
		if !ok || args[i].Kind() != ast.CallKind {
			continue
		}
		if fn := args[i].AsCall().FunctionName(); fn != fnSince && fn != fnScore {
			continue
		}
		r, ok, err := c.vocab(args[i])
		if err != nil || !ok || (r.fn != fnSince && r.fn != fnScore) {
			continue
		}
		if i == 1 {
			op = mirrored[op]
		}
		name := c.m.Inputs[r.slot].Feature.Name
		if r.fn == fnScore {
			if x != 0 && !math.IsInf(x, 0) && !math.IsNaN(x) {
				c.m.ScoreMarks = addMark(c.m.ScoreMarks, name, x)
				if len(c.m.ScoreMarks[name]) > MaxTimeMarks {
					return tooMany(fnScore, name)
				}
			}
			return nil
		}
		// since() is whole seconds: the comparison turns at the first whole k for which
		// "since op x" differs from its answer at k-1.
		var ks []float64
		switch op {
		case operators.Less, operators.GreaterEquals: // turns at since = x
			ks = []float64{math.Ceil(x)}
		case operators.LessEquals, operators.Greater: // turns just past x
			ks = []float64{math.Floor(x) + 1}
		default: // == and != (with an int: CEL has no int == double) turn at x and just past it
			ks = []float64{x, x + 1}
		}
		for _, k := range ks {
			if k >= 1 && k <= float64(maxSinceMark) {
				c.m.SinceMarks = addMark(c.m.SinceMarks, name, int64(k))
			}
		}
		if len(c.m.SinceMarks[name]) > MaxTimeMarks {
			return tooMany(fnSince, name)
		}
		return nil
	}
	return nil
}

// maxSinceMark is the largest since() mark profile.NewSpec accepts, in seconds.
const maxSinceMark = math.MaxInt64 / int64(time.Second)

// numberLit returns the value of an int or double literal (rules compare no uints).
func numberLit(e ast.Expr) (float64, bool) {
	if e.Kind() != ast.LiteralKind {
		return 0, false
	}
	switch v := e.AsLiteral().(type) {
	case types.Int:
		return float64(v), true
	case types.Double:
		return float64(v), true
	}
	return 0, false
}

// addMark adds v to the sorted marks of name, once.
func addMark[T int64 | float64](m map[string][]T, name string, v T) map[string][]T {
	if m == nil {
		m = map[string][]T{}
	}
	if i, found := slices.BinarySearch(m[name], v); !found {
		m[name] = slices.Insert(m[name], i, v)
	}
	return m
}

func stringList(e ast.Expr) ([]string, bool) {
	var out []string
	for _, el := range e.AsList().Elements() {
		s, ok := stringLit(el)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func kindName(e ast.Expr) string {
	switch e.Kind() {
	case ast.ComprehensionKind:
		return "a comprehension"
	case ast.MapKind:
		return "a map literal"
	case ast.StructKind:
		return "a message literal"
	case ast.SelectKind:
		return "field selection"
	case ast.ListKind:
		return "a list literal"
	}
	return "this expression"
}
