package rules

import (
	"fmt"
	"math"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	celparser "cel.dev/cel-go/parser"

	"github.com/segedge/segedge/core/profile"
)

// Explanation says why a segment is or is not a member for one user and request, as the
// reference evaluator (cel-go) computes it: the rule, the inputs it read with the values both
// evaluators were given, the segments it read, and the value of every sub-expression.
type Explanation struct {
	Segment      string `json:"segment"`
	Rule         string `json:"rule"`
	NeedsRequest bool   `json:"needs_request,omitempty"`
	// Result is "true", "false" or "error: ..." (Reference.Explain).
	Result string `json:"result"`
	// Inputs are the profile features and request fields the rule reads, once each, in the
	// order they appear in the rule.
	Inputs []ExplainedValue `json:"inputs"`
	// Segments are the segments the rule reads with segment(), with their results.
	Segments []ExplainedValue `json:"segments,omitempty"`
	// Steps are the rule's sub-expressions (literals left out), innermost first, the whole rule
	// last. Every branch is evaluated, so a part that && or || did not need still shows its value.
	Steps []ExplainedValue `json:"steps"`
	// Note says what is not shown (a segment computed by a hand-written module).
	Note string `json:"note,omitempty"`
}

// ExplainedValue is an expression as written in the rule and its value: Value is a bool, an
// int64, a float64 or a string; Absent means the input has no value (reading it is an error);
// Error is the error the expression raised.
type ExplainedValue struct {
	Expr   string `json:"expr"`
	Value  any    `json:"value,omitempty"`
	Absent bool   `json:"absent,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Agrees reports whether a compiled module's answer for the segment (member, error bit) is the
// explanation's result: "true" is a member without error, "false" neither, an error result is
// "not member, error".
func (e *Explanation) Agrees(member, isErr bool) bool {
	switch {
	case e.Result == "true":
		return member && !isErr
	case e.Result == "false":
		return !member && !isErr
	default:
		return !member && isErr
	}
}

// ModuleAnswer is what the compiled module said about the explained segment.
type ModuleAnswer struct {
	Member bool   `json:"member"`
	Error  bool   `json:"error"`
	Failed string `json:"failed,omitempty"` // the evaluation failed as a whole (fail closed)
}

// Verdict compares the explanation with the module's answer. agree is nil when there is nothing
// to compare (a segment of a hand-written module, which cel-go cannot run); disagreement says, in
// words, how the two differ ("" when they agree).
func (e *Explanation) Verdict(m ModuleAnswer) (agree *bool, disagreement string) {
	switch {
	case e.Note != "":
		return nil, ""
	case m.Failed != "":
		f := false
		return &f, "the compiled module failed: " + m.Failed
	}
	ok := e.Agrees(m.Member, m.Error)
	if ok {
		return &ok, ""
	}
	module := "false"
	switch {
	case m.Member && m.Error:
		module = "member with an error bit (invalid)"
	case m.Member:
		module = "true"
	case m.Error:
		module = "error"
	}
	return &ok, "reference evaluator (cel-go) says " + e.Result + ", compiled module says " + module
}

// ExplainSegment explains one segment for a user's profile and a request (nil: no request, as
// at the origin). now must be the time the compared module evaluation used.
func (r *Reference) ExplainSegment(name string, prof FeatureSource, req RequestSource, now time.Time) (*Explanation, error) {
	idx, ok := r.segIdx[name]
	if !ok {
		return nil, fmt.Errorf("no segment %q in this ruleset", name)
	}
	seg := r.m.Segments[idx]
	env, err := newEnv(r)
	if err != nil {
		return nil, fmt.Errorf("rule environment: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.run(prof, req, now)
	ex := &Explanation{Segment: name, Rule: seg.Rule, NeedsRequest: seg.NeedsRequest,
		Result: r.resultString(idx, req), Inputs: []ExplainedValue{}, Steps: []ExplainedValue{}}
	if seg.Rule == "" || r.progs[idx] == nil {
		ex.Note = "computed by a hand-written module: no rule to explain"
		return ex, nil
	}
	checked, iss := env.Compile(seg.Rule)
	if iss != nil && iss.Err() != nil {
		return nil, fmt.Errorf("rule %s: %w", name, iss.Err())
	}
	prg, err := env.Program(checked, cel.EvalOptions(cel.OptExhaustiveEval))
	if err != nil {
		return nil, fmt.Errorf("rule %s: %w", name, err)
	}
	_, det, _ := prg.Eval(refActivation{r}) // errors are values of the steps
	if det == nil || det.State() == nil {
		return nil, fmt.Errorf("rule %s: no evaluation state", name)
	}
	state := det.State()
	native := checked.NativeRep()
	info := native.SourceInfo()
	seen := map[string]bool{}
	var walk func(e ast.Expr)
	walk = func(e ast.Expr) {
		switch e.Kind() {
		case ast.LiteralKind:
			return
		case ast.CallKind:
			c := e.AsCall()
			if c.IsMemberFunction() {
				walk(c.Target())
			}
			for _, a := range c.Args() {
				walk(a)
			}
		case ast.SelectKind:
			walk(e.AsSelect().Operand())
		}
		text, err := celparser.Unparse(e, info)
		if err != nil {
			text = fmt.Sprintf("<expression %d>", e.ID())
		}
		v, _ := state.Value(e.ID())
		ex.Steps = append(ex.Steps, explained(text, v))
		if seen[text] {
			return
		}
		switch i, kind := r.inputOf(e); kind {
		case "input":
			seen[text] = true
			ex.Inputs = append(ex.Inputs, inputValue(text, r.vals[i]))
		case "segment":
			seen[text] = true
			ex.Segments = append(ex.Segments, ExplainedValue{Expr: text, Value: r.resultString(i, req)})
		}
	}
	walk(native.Expr())
	return ex, nil
}

// resultString is segment i's result as Explain gives it.
func (r *Reference) resultString(i int, req RequestSource) string {
	switch v := r.segs[i]; {
	case v == types.True:
		return "true"
	case v == types.False:
		return "false"
	case req == nil && r.m.Segments[i].NeedsRequest:
		return "error: needs a request"
	default:
		return "error: " + fmt.Sprint(v)
	}
}

// inputOf tells whether e reads a ruleset input (kind "input", i its slot) or a segment (kind
// "segment", i its index), the way feature and refActivation resolve them.
func (r *Reference) inputOf(e ast.Expr) (int, string) {
	switch e.Kind() {
	case ast.IdentKind:
		if field, ok := strings.CutPrefix(e.AsIdent(), "request."); ok {
			if i, ok := r.slots[inputKey{req: field}]; ok {
				return i, "input"
			}
		}
	case ast.SelectKind: // request.country before the checker's rewrite
		s := e.AsSelect()
		if op := s.Operand(); op.Kind() == ast.IdentKind && op.AsIdent() == "request" {
			if i, ok := r.slots[inputKey{req: s.FieldName()}]; ok {
				return i, "input"
			}
		}
	case ast.CallKind:
		c := e.AsCall()
		fn := c.FunctionName()
		var args []string
		for _, a := range c.Args() {
			if a.Kind() != ast.LiteralKind {
				return 0, ""
			}
			s, ok := a.AsLiteral().(types.String)
			if !ok {
				return 0, ""
			}
			args = append(args, string(s))
		}
		arg := func(i int) string {
			if i < len(args) {
				return args[i]
			}
			return ""
		}
		var k inputKey
		switch fn {
		case fnSegment:
			if i, ok := r.segIdx[arg(0)]; ok {
				return i, "segment"
			}
			return 0, ""
		case fnTrait, fnHasTrait:
			k.feat = profile.Feature{Kind: profile.FeatureTrait, Name: arg(0)}
		case fnScore:
			k.feat = profile.Feature{Kind: profile.FeatureScore, Name: arg(0)}
		case fnSince:
			k.feat = profile.Feature{Kind: profile.FeatureSince, Name: arg(0)}
		case fnCount:
			w, err := r.window(arg(1))
			if err != nil {
				return 0, ""
			}
			k.feat = profile.Feature{Kind: profile.FeatureCount, Name: arg(0), Window: w}
		case fnSum:
			w, err := r.window(arg(2))
			if err != nil {
				return 0, ""
			}
			k.feat = profile.Feature{Kind: profile.FeatureSum, Name: arg(0), Prop: arg(1), Window: w}
		case fnQuery, fnHasQuery:
			k = inputKey{req: FieldQuery, key: arg(0)}
		case fnHeader, fnHasHeader:
			k = inputKey{req: FieldHeader, key: strings.ToLower(arg(0))}
		case fnCookie, fnHasCookie:
			k = inputKey{req: FieldCookie, key: arg(0)}
		default:
			return 0, ""
		}
		if i, ok := r.slots[k]; ok {
			return i, "input"
		}
	}
	return 0, ""
}

func inputValue(text string, v profile.Value) ExplainedValue {
	out := ExplainedValue{Expr: text}
	switch v.Kind {
	case profile.KindBool:
		out.Value = v.Bool
	case profile.KindInt:
		out.Value = v.Int
	case profile.KindDouble:
		out.Value = jsonFloat(v.Double)
	case profile.KindString:
		out.Value = v.Str
	default:
		out.Absent = true
	}
	return out
}

func explained(text string, v ref.Val) ExplainedValue {
	out := ExplainedValue{Expr: text}
	switch {
	case v == nil:
		out.Error = "not evaluated"
	case types.IsError(v):
		out.Error = fmt.Sprint(v)
	default:
		switch x := v.Value().(type) {
		case bool, int64, uint64, string:
			out.Value = x
		case float64:
			out.Value = jsonFloat(x)
		default:
			out.Value = fmt.Sprint(v)
		}
	}
	return out
}

// jsonFloat keeps a float JSON-encodable: NaN and infinities become strings.
func jsonFloat(f float64) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Sprint(f)
	}
	return f
}
