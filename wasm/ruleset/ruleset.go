// Package ruleset runs compiled rulesets (core/rules) in the sandbox host (wasm): it encodes a
// user's features and the request into the module's input, makes one sandboxed call for all
// segments and slots, and decodes the result, without allocating.
package ruleset

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/wasm"
)

// Evaluator evaluates one compiled ruleset. It is safe for concurrent use.
type Evaluator struct {
	mod  *wasm.Module
	man  *rules.Manifest
	bufs sync.Pool // *buffers
}

type buffers struct{ in, out []byte }

// Load loads a compiled ruleset's module into rt as a trusted (generated, loop-free) module.
func Load(ctx context.Context, rt *wasm.Runtime, name string, rs *rules.Ruleset) (*Evaluator, error) {
	man := rs.Manifest
	mod, err := rt.Load(ctx, name, rs.Module, wasm.LoadOptions{OutputLen: man.OutputLen(), Trusted: true})
	if err != nil {
		return nil, fmt.Errorf("load ruleset %q: %w", name, err)
	}
	e := &Evaluator{mod: mod, man: &man}
	e.bufs.New = func() any {
		return &buffers{in: make([]byte, 0, man.InputCap), out: make([]byte, man.OutputLen())}
	}
	return e, nil
}

// Manifest returns the ruleset's manifest.
func (e *Evaluator) Manifest() *rules.Manifest { return e.man }

// NewResult returns a Result sized for this ruleset, for reuse across evaluations.
func (e *Evaluator) NewResult() *rules.Result { return e.man.NewResult() }

// Evaluate evaluates every segment and slot for one user (prof; nil = empty profile) and
// request (req; nil = no request: segments that need one are "not member, error") into res.
// If the module fails as a whole, res holds "no segments, every error bit set, default
// slots" and the error says why.
func (e *Evaluator) Evaluate(ctx context.Context, prof rules.FeatureSource, req rules.RequestSource, now time.Time, res *rules.Result) error {
	b := e.bufs.Get().(*buffers)
	defer e.bufs.Put(b)
	b.in = e.man.EncodeInput(b.in[:0], prof, req, now)
	if err := e.mod.Evaluate(ctx, b.in, b.out); err != nil {
		e.man.Fail(res)
		return err
	}
	e.man.DecodeOutput(b.out, res, req == nil)
	return nil
}

// Close releases the module (it is closed when no evaluation holds it any more).
func (e *Evaluator) Close() { e.mod.Release() }

// RunTests runs a rules file's tests on the compiled module (rules.RunTests runs them on the
// reference evaluator) and returns every failed expectation.
func (e *Evaluator) RunTests(ctx context.Context, f *rules.File) error {
	var errs []error
	res := e.NewResult()
	for ti := range f.Tests {
		t := &f.Tests[ti]
		prof, req, err := t.Sources()
		if err == nil {
			err = e.Evaluate(ctx, prof, req, time.Unix(0, 0), res)
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
