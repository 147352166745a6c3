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
	"github.com/segedge/segedge/wasm"
	"github.com/segedge/segedge/wasm/ruleset"
)

// WasmCompiler compiles rules files with core/rules and runs them in the sandbox (wasm).
type WasmCompiler struct {
	RT *wasm.Runtime
}

// Compile implements Compiler: parse, type-check, compile to wasm, and run the file's tests on
// both the reference evaluator (cel-go) and the compiled module in the sandbox.
func (c *WasmCompiler) Compile(ctx context.Context, name string, src []byte) (*Compiled, []Problem) {
	f, err := rules.Parse(name, src)
	if err != nil {
		return nil, problems(err)
	}
	rs, err := rules.Compile(f)
	if err != nil {
		return nil, problems(err)
	}
	if err := rules.RunTests(f, rs); err != nil {
		return nil, problems(fmt.Errorf("tests (reference evaluator): %w", err))
	}
	ev, err := ruleset.Load(ctx, c.RT, name, rs)
	if err != nil {
		return nil, problems(fmt.Errorf("load compiled module: %w", err))
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
	for _, s := range rs.Manifest.Segments {
		out.Segments = append(out.Segments, s.Name)
	}
	return out, nil
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
func (c *WasmCompiler) Load(ctx context.Context, version uint64, module, manifest []byte) (Loaded, error) {
	return LoadVersion(ctx, c.RT, version, module, manifest)
}

// Sample implements Compiler; dry runs report compile and test results only.
func (c *WasmCompiler) Sample(context.Context, *Compiled, []string) (map[string]int, error) {
	return nil, nil
}

// LoadVersion loads a stored version into the sandbox.
func LoadVersion(ctx context.Context, rt *wasm.Runtime, version uint64, module, manifest []byte) (*Version, error) {
	var m rules.Manifest
	if err := json.Unmarshal(manifest, &m); err != nil {
		return nil, fmt.Errorf("ruleset %d manifest: %w", version, err)
	}
	ev, err := ruleset.Load(ctx, rt, fmt.Sprintf("ruleset-v%d", version), &rules.Ruleset{Module: module, Manifest: m})
	if err != nil {
		return nil, err
	}
	spec, err := profile.NewSpec(m.Features(), m.ScoreSpecs())
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
	// profile segment as "not a member" on a ruleset with no request-scoped rule.
	v.edgeFeatures = m.Features()
	v.results.New = func() any { return v.man.NewResult() }
	return v, nil
}

// Version is a ruleset version loaded into the sandbox: it implements engine.Rules and Loaded.
type Version struct {
	ev           *ruleset.Evaluator
	man          *rules.Manifest
	spec         *profile.Spec
	version      uint64
	names        []string
	needsRequest bool
	edgeFeatures []profile.Feature
	results      sync.Pool
}

func (v *Version) Version() uint64                 { return v.version }
func (v *Version) Spec() *profile.Spec             { return v.spec }
func (v *Version) EdgeFeatures() []profile.Feature { return v.edgeFeatures }
func (v *Version) SegmentNames() []string          { return v.names }
func (v *Version) Manifest() *rules.Manifest       { return v.man }
func (v *Version) Evaluator() *ruleset.Evaluator   { return v.ev }
func (v *Version) Close() error                    { v.ev.Close(); return nil }

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
