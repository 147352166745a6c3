// Package ruleset runs compiled rulesets (core/rules) in the sandbox host (wasm): it encodes a
// user's features and the request into the module's input, makes one sandboxed call for all
// segments and slots, and decodes the result, without allocating.
package ruleset

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/wasm"
)

// Evaluator evaluates one compiled ruleset: its generated module and, if the rules file has a
// modules section, its hand-written modules. It is safe for concurrent use.
//
// A hand-written module that keeps failing is quarantined (see Quarantine): it is no longer
// run, and Quarantined() tells the host, which may fall back to the previous version.
type Evaluator struct {
	mod  *wasm.Module
	mods []*wasm.Module // hand-written, in Manifest.Modules order
	man  *rules.Manifest
	bufs sync.Pool // *buffers

	quar  atomic.Pointer[Quarantine] // the first quarantined module
	qdone chan struct{}              // closed with the first quarantine
}

type buffers struct {
	in, out []byte
	min     []byte   // a hand-written module's input
	mout    [][]byte // per hand-written module: its output
}

// Load loads a compiled ruleset's generated module into rt as a trusted (loop-free) module, and
// each of its hand-written modules (rs.Modules, checked against the hashes in the manifest) as
// an untrusted one: validated (size, imports, exports, memory cap) and instantiated once here,
// then run under the runtime's evaluation deadline.
func Load(ctx context.Context, rt *wasm.Runtime, name string, rs *rules.Ruleset) (*Evaluator, error) {
	man := rs.Manifest
	if len(rs.Modules) != len(man.Modules) {
		return nil, fmt.Errorf("load ruleset %q: %d hand-written modules given, the manifest lists %d", name, len(rs.Modules), len(man.Modules))
	}
	mod, err := rt.Load(ctx, name, rs.Module, wasm.LoadOptions{OutputLen: man.GeneratedOutputLen(), Trusted: true})
	if err != nil {
		return nil, fmt.Errorf("load ruleset %q: %w", name, err)
	}
	e := &Evaluator{mod: mod, man: &man, qdone: make(chan struct{})}
	minCap := 0
	for i, mi := range man.Modules {
		if mi.Hash != "" && rules.HashModule(rs.Modules[i]) != mi.Hash {
			e.Close()
			return nil, fmt.Errorf("load ruleset %q: module %q does not match its hash %s", name, mi.Path, mi.Hash)
		}
		m, err := rt.Load(ctx, name+"/"+mi.Path, rs.Modules[i], wasm.LoadOptions{OutputLen: man.ModuleOutputLen(i)})
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("module %q: %w", mi.Path, err)
		}
		e.mods = append(e.mods, m)
		minCap = max(minCap, m.InputCap())
	}
	e.bufs.New = func() any {
		b := &buffers{in: make([]byte, 0, man.InputCap), out: make([]byte, man.GeneratedOutputLen())}
		if len(man.Modules) > 0 {
			b.min = make([]byte, 0, minCap)
			for i := range man.Modules {
				b.mout = append(b.mout, make([]byte, man.ModuleOutputLen(i)))
			}
		}
		return b
	}
	return e, nil
}

// Manifest returns the ruleset's manifest.
func (e *Evaluator) Manifest() *rules.Manifest { return e.man }

// NewResult returns a Result sized for this ruleset, for reuse across evaluations.
func (e *Evaluator) NewResult() *rules.Result { return e.man.NewResult() }

// Evaluate evaluates every segment and slot for one user (prof; nil = empty profile) and
// request (req; nil = no request: segments that need one are "not member, error") into res.
// If the generated module fails as a whole, res holds "no segments, every error bit set,
// default slots" and the error says why. A hand-written module that fails (trap, deadline,
// memory cap: counted and logged by the sandbox) fails closed on its own: its segments are
// "not member, error", every other segment keeps its value, and Evaluate returns nil. So does a
// quarantined module, which is not run at all.
func (e *Evaluator) Evaluate(ctx context.Context, prof rules.FeatureSource, req rules.RequestSource, now time.Time, res *rules.Result) error {
	err, _ := e.evaluate(ctx, prof, req, now, res, false)
	return err
}

// evaluate is Evaluate that also reports the first hand-written module failure (if wantModErr:
// Evaluate does not want it, and building it would allocate on every failing evaluation).
func (e *Evaluator) evaluate(ctx context.Context, prof rules.FeatureSource, req rules.RequestSource, now time.Time, res *rules.Result, wantModErr bool) (err, modErr error) {
	b := e.bufs.Get().(*buffers)
	defer e.bufs.Put(b)
	b.in = e.man.EncodeInput(b.in[:0], prof, req, now)
	if err := e.mod.Evaluate(ctx, b.in, b.out); err != nil {
		e.man.Fail(res)
		return err, nil
	}
	e.man.DecodeOutput(b.out, res, req == nil)
	for i, m := range e.mods {
		if m.Quarantined() {
			// Its segments stay "not member, error" (DecodeOutput). One atomic load per
			// module on the hot path; the error is built only when a caller wants it.
			if modErr == nil && wantModErr {
				modErr = fmt.Errorf("module %q: %w", e.man.Modules[i].Path, errQuarantined)
			}
			continue
		}
		b.min = e.man.EncodeModuleInput(b.min[:0], i, prof, req, now)
		if err := m.Evaluate(ctx, b.min, b.mout[i]); err != nil {
			if m.Quarantined() {
				e.noteQuarantine(i, err)
			}
			if modErr == nil && wantModErr {
				modErr = fmt.Errorf("module %q: %w", e.man.Modules[i].Path, err)
			}
			continue
		}
		e.man.MergeModuleOutput(i, b.mout[i], res, req == nil)
	}
	return nil, modErr
}

// Close releases the modules (each is closed when no evaluation holds it any more).
func (e *Evaluator) Close() {
	e.mod.Release()
	for _, m := range e.mods {
		m.Release()
	}
}

// RunTests runs a rules file's tests on the compiled module (rules.RunTests runs them on the
// reference evaluator) and returns every failed expectation.
func (e *Evaluator) RunTests(ctx context.Context, f *rules.File) error {
	var errs []error
	res := e.NewResult()
	for ti := range f.Tests {
		t := &f.Tests[ti]
		prof, req, err := t.Sources()
		if err == nil {
			var modErr error
			if err, modErr = e.evaluate(ctx, prof, req, time.Unix(0, 0), res, true); err == nil {
				err = modErr
			}
		}
		if err == nil {
			err = rules.CheckTest(e.man, t, res)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d:%d: test %d: %w", f.Name, t.Pos.Line, t.Pos.Col, ti+1, err))
		}
	}
	return errors.Join(errs...)
}
