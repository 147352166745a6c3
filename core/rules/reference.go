package rules

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"

	"github.com/segedge/segedge/core/profile"
)

// Reference evaluates a ruleset with cel-go directly, with the same vocabulary bindings and
// the same input values as the compiled module (Manifest.value). It is the test oracle of the
// compiler and the "explain" view. Evaluations are serialised by a mutex: it is for tests,
// explanations and dry runs, not for the request path.
type Reference struct {
	m     *Manifest
	progs []cel.Program
	order []int

	mu     sync.Mutex
	slots  map[inputKey]int
	segIdx map[string]int
	vals   []profile.Value
	segs   []ref.Val
	hasReq bool
	wins   map[string]time.Duration
}

// NewReference builds the reference evaluator of a manifest's rules.
func NewReference(m *Manifest) (*Reference, error) {
	r := &Reference{m: m, slots: map[inputKey]int{}, segIdx: map[string]int{}, wins: map[string]time.Duration{},
		vals: make([]profile.Value, len(m.Inputs)), segs: make([]ref.Val, len(m.Segments))}
	for i, in := range m.Inputs {
		k := inputKey{req: in.Request, key: in.Key}
		if in.Request == "" {
			k.feat = in.Feature
		}
		r.slots[k] = i
	}
	for i, s := range m.Segments {
		r.segIdx[s.Name] = i
	}
	env, err := newEnv(r)
	if err != nil {
		return nil, fmt.Errorf("rule environment: %w", err)
	}
	deps := make([][]int, len(m.Segments))
	for i, s := range m.Segments {
		if s.Module != "" {
			r.progs = append(r.progs, nil) // computed by a hand-written module: not known here
			continue
		}
		checked, iss := env.Compile(s.Rule)
		if iss != nil && iss.Err() != nil {
			return nil, fmt.Errorf("rule %s: %w", s.Name, iss.Err())
		}
		prg, err := env.Program(checked)
		if err != nil {
			return nil, fmt.Errorf("rule %s: %w", s.Name, err)
		}
		r.progs = append(r.progs, prg)
		for _, d := range s.DependsOn {
			j, ok := r.segIdx[d]
			if !ok {
				return nil, fmt.Errorf("rule %s: unknown segment %q", s.Name, d)
			}
			deps[i] = append(deps[i], j)
		}
	}
	seen := make([]int, len(m.Segments)) // 0 new, 1 visiting, 2 done
	var visit func(i int) error
	visit = func(i int) error {
		if seen[i] == 1 {
			return fmt.Errorf("segment cycle through %s", m.Segments[i].Name)
		}
		if seen[i] == 2 {
			return nil
		}
		seen[i] = 1
		for _, d := range deps[i] {
			if err := visit(d); err != nil {
				return err
			}
		}
		seen[i] = 2
		r.order = append(r.order, i)
		return nil
	}
	for i := range m.Segments {
		if err := visit(i); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Evaluate evaluates every segment and slot for one user and request (nil: no request) into
// res (from Manifest.NewResult). Errors of single rules are reported in res, as the module
// does; see Explain for the error messages.
func (r *Reference) Evaluate(prof FeatureSource, req RequestSource, now time.Time, res *Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.run(prof, req, now)
	for w := range res.Member {
		res.Member[w], res.Error[w] = 0, 0
	}
	for i, v := range r.segs {
		switch v {
		case types.True:
			res.Member[i/64] |= 1 << (i % 64)
		case types.False:
		default:
			res.Error[i/64] |= 1 << (i % 64)
		}
	}
	for s, slot := range r.m.Slots {
		res.Variants[s] = -1
		for v, vi := range slot.Variants {
			if res.IsMember(vi.Segment) {
				res.Variants[s] = int32(v)
				break
			}
		}
	}
	if req == nil {
		r.m.maskRequest(res)
	}
}

// Explain returns, per segment, "true", "false" or the error message of its rule.
func (r *Reference) Explain(prof FeatureSource, req RequestSource, now time.Time) map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.run(prof, req, now)
	out := make(map[string]string, len(r.segs))
	for i, v := range r.segs {
		switch {
		case v == types.True:
			out[r.m.Segments[i].Name] = "true"
		case v == types.False:
			out[r.m.Segments[i].Name] = "false"
		case req == nil && r.m.Segments[i].NeedsRequest:
			out[r.m.Segments[i].Name] = "error: needs a request"
		default:
			out[r.m.Segments[i].Name] = "error: " + fmt.Sprint(v)
		}
	}
	return out
}

func (r *Reference) run(prof FeatureSource, req RequestSource, now time.Time) {
	ix, _ := prof.(IndexedFeatureSource)
	for i := range r.vals {
		r.vals[i] = r.m.value(i, prof, ix, req, now)
	}
	r.hasReq = req != nil
	for i := range r.segs {
		r.segs[i] = nil
	}
	act := refActivation{r}
	for _, i := range r.order {
		if r.progs[i] == nil {
			r.segs[i] = types.NewErr("segment %s is computed by module %s", r.m.Segments[i].Name, r.m.Segments[i].Module)
			continue
		}
		out, _, err := r.progs[i].Eval(act)
		switch {
		case err != nil:
			r.segs[i] = types.WrapErr(err)
		case out == types.True || out == types.False:
			r.segs[i] = out
		default:
			r.segs[i] = types.NewErr("rule value %v is not a bool", out)
		}
	}
}

// refActivation resolves the request variables.
type refActivation struct{ r *Reference }

func (a refActivation) ResolveName(name string) (any, bool) {
	field, ok := strings.CutPrefix(name, "request.")
	if !ok {
		return nil, false
	}
	i, ok := a.r.slots[inputKey{req: field}]
	if !ok {
		return nil, false
	}
	v := a.r.vals[i]
	if v.Kind == profile.KindAbsent {
		return types.NewErr("no request"), true
	}
	return toRef(v), true
}

func (a refActivation) Parent() interpreter.Activation { return nil }

func toRef(v profile.Value) ref.Val {
	switch v.Kind {
	case profile.KindBool:
		return types.Bool(v.Bool)
	case profile.KindInt:
		return types.Int(v.Int)
	case profile.KindDouble:
		return types.Double(v.Double)
	case profile.KindString:
		return types.String(v.Str)
	}
	return types.NewErr("absent")
}

func (r *Reference) window(s string) (time.Duration, error) {
	if w, ok := r.wins[s]; ok {
		return w, nil
	}
	w, err := ParseWindow(s)
	if err == nil {
		r.wins[s] = w
	}
	return w, err
}

// feature implements binder: the vocabulary functions over the current values.
func (r *Reference) feature(fn string, args []ref.Val) ref.Val {
	str := func(i int) string { s, _ := args[i].(types.String); return string(s) }
	var k inputKey
	switch fn {
	case fnTrait, fnHasTrait:
		k.feat = profile.Feature{Kind: profile.FeatureTrait, Name: str(0)}
	case fnScore:
		k.feat = profile.Feature{Kind: profile.FeatureScore, Name: str(0)}
	case fnSince:
		k.feat = profile.Feature{Kind: profile.FeatureSince, Name: str(0)}
	case fnCount:
		w, err := r.window(str(1))
		if err != nil {
			return types.WrapErr(err)
		}
		k.feat = profile.Feature{Kind: profile.FeatureCount, Name: str(0), Window: w}
	case fnSum:
		w, err := r.window(str(2))
		if err != nil {
			return types.WrapErr(err)
		}
		k.feat = profile.Feature{Kind: profile.FeatureSum, Name: str(0), Prop: str(1), Window: w}
	case fnSegment:
		i, ok := r.segIdx[str(0)]
		if !ok || r.segs[i] == nil {
			return types.NewErr("segment %q not evaluated", str(0))
		}
		return r.segs[i]
	case fnQuery, fnHasQuery:
		k = inputKey{req: FieldQuery, key: str(0)}
	case fnHeader, fnHasHeader:
		k = inputKey{req: FieldHeader, key: strings.ToLower(str(0))}
	case fnCookie, fnHasCookie:
		k = inputKey{req: FieldCookie, key: str(0)}
	}
	i, ok := r.slots[k]
	if !ok {
		return types.NewErr("%s(%v): not an input of this ruleset", fn, args)
	}
	v := r.vals[i]
	switch fn {
	case fnHasTrait, fnHasQuery, fnHasHeader, fnHasCookie:
		return types.Bool(v.Kind != profile.KindAbsent)
	}
	if v.Kind == profile.KindAbsent {
		return types.NewErr("%s(%v): no value", fn, args)
	}
	return toRef(v)
}
