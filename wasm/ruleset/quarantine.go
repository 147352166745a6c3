package ruleset

import (
	"errors"
	"fmt"
	"time"
)

// Quarantine says which hand-written module of a ruleset was quarantined, when, and the last
// failure that tipped it over.
//
// The sandbox (wasm.Module) counts each module's consecutive failed evaluations (trap, deadline,
// memory cap, bad status, a failed instantiation; a canceled caller does not count) and marks
// the module quarantined when the count reaches wasm.Config.QuarantineAfter (default
// wasm.DefaultQuarantineAfter, 16; negative: never). Any successful evaluation resets the
// count, so a module that fails for some users only is not quarantined: it fails closed on its
// own segments for those users, evaluation by evaluation. Consecutive failures rather than a
// failure rate: it needs one atomic counter per module and no window, and a module that fails
// every call — the loop, the memory bomb, the trap on every input — reaches it within
// QuarantineAfter requests.
type Quarantine struct {
	Module string    // the module's path as the rules file writes it
	Err    error     // the failure that reached the threshold
	At     time.Time // when
}

func (q *Quarantine) String() string {
	return fmt.Sprintf("module %q quarantined after repeated failures: %v", q.Module, q.Err)
}

// errQuarantined is what RunTests reports for a module skipped because it is quarantined.
var errQuarantined = errors.New("quarantined after repeated failures; not run")

// Quarantined returns a channel closed when one of the ruleset's hand-written modules is
// quarantined. From then on Evaluate no longer runs that module (a quarantined loop would cost
// every request its deadline): its segments are "not member, error", every other segment keeps
// its value. The host reacts by falling back to the previous good ruleset version, if it has
// one (origin/rulesets, edge/server).
func (e *Evaluator) Quarantined() <-chan struct{} { return e.qdone }

// Quarantine returns the first quarantine of one of the ruleset's modules, or nil.
func (e *Evaluator) Quarantine() *Quarantine { return e.quar.Load() }

// HasModules reports whether the ruleset has hand-written modules, the only part of it that can
// be quarantined (the generated module is loop-free and bounded).
func (e *Evaluator) HasModules() bool { return len(e.mods) > 0 }

// noteQuarantine records that module i is quarantined; the first one closes Quarantined().
// Called on the failure path only.
func (e *Evaluator) noteQuarantine(i int, err error) {
	q := &Quarantine{Module: e.man.Modules[i].Path, Err: err, At: time.Now()}
	if e.quar.CompareAndSwap(nil, q) {
		close(e.qdone)
	}
}
