package rulesets

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/core/rulestore"
	"github.com/segedge/segedge/wasm"
	"github.com/segedge/segedge/wasm/ruleset"
)

// WasmCompiler compiles rules files with core/rules and runs them in the sandbox (wasm).
type WasmCompiler struct {
	RT *wasm.Runtime
}

// Compile implements Compiler: parse, type-check, compile to wasm, link the hand-written
// modules the file lists (modules: path → bytes as uploaded), and run the file's tests on both
// the reference evaluator (cel-go; expectations on CEL segments) and the whole ruleset in the
// sandbox (every expectation; hand-written modules validated and run untrusted).
func (c *WasmCompiler) Compile(ctx context.Context, name string, src []byte, modules map[string][]byte) (*Compiled, []Problem) {
	f, err := rules.Parse(name, src)
	if err != nil {
		return nil, problems(err)
	}
	rs, err := rules.Compile(f)
	if err != nil {
		return nil, problems(err)
	}
	if err := rs.AttachModules(name, modules); err != nil {
		return nil, problems(err)
	}
	if err := rules.RunTests(f, rs); err != nil {
		return nil, problems(fmt.Errorf("tests (reference evaluator): %w", err))
	}
	ev, err := ruleset.Load(ctx, c.RT, name, rs)
	if err != nil {
		return nil, problems(moduleProblem(f, err))
	}
	defer ev.Close()
	if err := ev.RunTests(ctx, f); err != nil {
		return nil, problems(fmt.Errorf("tests (compiled module): %w", err))
	}
	man, err := json.Marshal(rs.Manifest)
	if err != nil {
		return nil, problems(err)
	}
	out := &Compiled{Module: rs.Module, Manifest: man, Tests: fmt.Sprintf("%d tests passed on cel-go and on the compiled module", len(f.Tests))}
	if len(rs.Modules) > 0 {
		out.Tests = fmt.Sprintf("%d tests passed on cel-go (CEL segments) and on the compiled ruleset with %d hand-written module(s)", len(f.Tests), len(rs.Modules))
	}
	for i, mi := range rs.Manifest.Modules {
		out.Modules = append(out.Modules, rulestore.Module{Path: mi.Path, Data: rs.Modules[i]})
	}
	for _, s := range rs.Manifest.Segments {
		out.Segments = append(out.Segments, s.Name)
	}
	return out, nil
}

// moduleProblem puts the rules file position of a module in front of its load error.
func moduleProblem(f *rules.File, err error) error {
	for _, md := range f.Modules {
		if strings.HasPrefix(err.Error(), fmt.Sprintf("module %q:", md.Path)) {
			return fmt.Errorf("%s:%d:%d: %w", f.Name, md.Pos.Line, md.Pos.Col, err)
		}
	}
	return fmt.Errorf("load compiled module: %w", err)
}

// problems turns a (possibly joined, multi-line) error into one Problem per line.
func problems(err error) []Problem {
	var ps []Problem
	for _, line := range strings.Split(strings.TrimSpace(err.Error()), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			ps = append(ps, Problem{Message: line})
		}
	}
	return ps
}

// Load implements Compiler.
func (c *WasmCompiler) Load(ctx context.Context, v *rulestore.Version) (Loaded, error) {
	return LoadVersion(ctx, c.RT, v)
}

// Sample implements Compiler: it loads the candidate into the sandbox and evaluates it, with no
// request (as the origin does), on each profile.
func (c *WasmCompiler) Sample(ctx context.Context, cand *Compiled, profiles []*profile.Profile) (*SampleResult, error) {
	v, err := LoadVersion(ctx, c.RT, &rulestore.Version{Module: cand.Module, Manifest: cand.Manifest, Modules: cand.Modules})
	if err != nil {
		return nil, err
	}
	defer v.Close()
	out := &SampleResult{Size: len(profiles), Counts: map[string]int{}}
	for _, s := range v.man.Segments {
		if s.NeedsRequest {
			out.NeedsRequest = append(out.NeedsRequest, s.Name)
		} else {
			out.Counts[s.Name] = 0
		}
	}
	res := v.man.NewResult()
	now := time.Now()
	for _, p := range profiles {
		if err := v.ev.Evaluate(ctx, p, nil, now, res); err != nil {
			out.Errors++
			continue
		}
		for i, s := range v.man.Segments {
			if !s.NeedsRequest && res.IsMember(i) {
				out.Counts[s.Name]++
			}
		}
	}
	return out, nil
}

// LoadVersion loads a stored version (its generated module, manifest and hand-written modules)
// into the sandbox.
func LoadVersion(ctx context.Context, rt *wasm.Runtime, sv *rulestore.Version) (*Version, error) {
	version := sv.Meta.Version
	var m rules.Manifest
	if err := json.Unmarshal(sv.Manifest, &m); err != nil {
		return nil, fmt.Errorf("ruleset %d manifest: %w", version, err)
	}
	ev, err := ruleset.Load(ctx, rt, fmt.Sprintf("ruleset-v%d", version), &rules.Ruleset{Module: sv.Module, Manifest: m, Modules: sv.ModuleBytes()})
	if err != nil {
		return nil, err
	}
	spec, err := profile.NewSpec(m.Features(), m.ScoreSpecs(), m.TimeMarks())
	if err != nil {
		ev.Close()
		return nil, fmt.Errorf("ruleset %d: %w", version, err)
	}
	v := &Version{ev: ev, man: ev.Manifest(), spec: spec, version: version}
	for _, s := range m.Segments {
		v.names = append(v.names, s.Name)
		v.needsRequest = v.needsRequest || s.NeedsRequest
	}
	// Edges evaluate the whole ruleset per request (slots choose among every segment, and
	// request-scoped rules may read profile features), so deltas carry every feature the ruleset
	// reads, whether or not some rule needs the request: without them an edge would see every
	// profile segment as "not a member".
	v.edgeFeatures = m.Features()
	v.reads, v.readsAll = eventTypesRead(v.edgeFeatures)
	v.results.New = func() any { return v.man.NewResult() }
	return v, nil
}

// eventTypesRead returns the event types whose events change a value the features read:
// count() and sum() their own type, traits the "identify" type. all is true when a feature
// changes with time alone (since(), a decayed score): then any evaluation may change a
// membership, and every event is evaluated as before.
func eventTypesRead(features []profile.Feature) (types map[string]bool, all bool) {
	types = map[string]bool{}
	for _, f := range features {
		switch f.Kind {
		case profile.FeatureCount, profile.FeatureSum:
			types[f.Name] = true
		case profile.FeatureTrait:
			types[profile.TraitEventType] = true
		default: // FeatureSince, FeatureScore, and any kind added later
			all = true
		}
	}
	return types, all
}

// ReadsEventType implements engine.EventTypeFilter.
func (v *Version) ReadsEventType(typ string) bool { return v.readsAll || v.reads[typ] }

// Version is a ruleset version loaded into the sandbox: it implements engine.Rules and Loaded.
type Version struct {
	ev           *ruleset.Evaluator
	man          *rules.Manifest
	spec         *profile.Spec
	version      uint64
	names        []string
	needsRequest bool
	edgeFeatures []profile.Feature
	reads        map[string]bool // event types that change what the rules read
	readsAll     bool            // a feature changes with time alone: every type counts
	results      sync.Pool
}

func (v *Version) Version() uint64                 { return v.version }
func (v *Version) Spec() *profile.Spec             { return v.spec }
func (v *Version) EdgeFeatures() []profile.Feature { return v.edgeFeatures }
func (v *Version) SegmentNames() []string          { return v.names }
func (v *Version) Manifest() *rules.Manifest       { return v.man }
func (v *Version) Evaluator() *ruleset.Evaluator   { return v.ev }
func (v *Version) Close() error                    { v.ev.Close(); return nil }

// Quarantined, Quarantine and HasModules let the manager fall back when a hand-written module
// of this version is quarantined (quarantine.go).
func (v *Version) Quarantined() <-chan struct{}    { return v.ev.Quarantined() }
func (v *Version) Quarantine() *ruleset.Quarantine { return v.ev.Quarantine() }
func (v *Version) HasModules() bool                { return v.ev.HasModules() }

// Segments evaluates the profile without a request: the members among segments that need none.
func (v *Version) Segments(ctx context.Context, p *profile.Profile, now time.Time, dst []string) ([]string, error) {
	res := v.results.Get().(*rules.Result)
	defer v.results.Put(res)
	if err := v.ev.Evaluate(ctx, p, nil, now, res); err != nil {
		return dst, err
	}
	for i, s := range v.man.Segments {
		if !s.NeedsRequest && res.IsMember(i) {
			dst = append(dst, s.Name)
		}
	}
	return dst, nil
}
