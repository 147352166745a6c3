package wasm

import (
	"errors"
	"fmt"
)

// Evaluation errors. Any error from Module.Evaluate means "no segments, every
// error bit set" to the caller; these sentinels (match with errors.Is) say why.
var (
	// ErrTrap: the module trapped (unreachable, out-of-bounds access, stack
	// exhaustion, bad output bounds).
	ErrTrap = errors.New("wasm: module trapped")
	// ErrTimeout: an untrusted module ran past its deadline.
	ErrTimeout = errors.New("wasm: evaluation deadline exceeded")
	// ErrMemory: the module failed with its memory at (or next to) the cap,
	// i.e. it ran out of the memory the host allows.
	ErrMemory = errors.New("wasm: module exhausted its memory cap")
	// ErrStatus: segedge_eval returned a non-zero status.
	ErrStatus = errors.New("wasm: module returned a non-zero status")
	// ErrExit: the module called WASI proc_exit (a Go guest does on panic).
	ErrExit = errors.New("wasm: module exited")
	// ErrCanceled: the caller's context ended before or during evaluation.
	ErrCanceled = errors.New("wasm: evaluation canceled")
	// ErrInput: the input does not fit the module's input buffer, or the
	// output slice is shorter than the module's output. A caller bug: it is
	// not counted as a module failure.
	ErrInput = errors.New("wasm: input or output size does not fit the module")
	// ErrClosed: the module was released or its runtime closed.
	ErrClosed = errors.New("wasm: module closed")
	// ErrInstantiate: no instance could be created to run the evaluation.
	ErrInstantiate = errors.New("wasm: cannot instantiate module")
)

// EvalError is the error Module.Evaluate returns: which module failed and
// why. errors.Is(err, ErrTimeout) and friends match its Kind.
type EvalError struct {
	Module string // the name given to Load
	Kind   error  // one of the Err* sentinels
	Err    error  // the underlying wazero error, if any
}

func (e *EvalError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("evaluate module %q: %v", e.Module, e.Kind)
	}
	return fmt.Sprintf("evaluate module %q: %v: %v", e.Module, e.Kind, e.Err)
}

// Is reports whether target is the failure kind.
func (e *EvalError) Is(target error) bool { return target == e.Kind }

// Unwrap exposes the underlying wazero error.
func (e *EvalError) Unwrap() error { return e.Err }
