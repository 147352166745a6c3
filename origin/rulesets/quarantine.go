package rulesets

import (
	"time"

	"github.com/segedge/segedge/wasm/ruleset"
)

// A version whose hand-written module keeps failing is quarantined by the sandbox (see
// wasm/ruleset.Quarantine: QuarantineAfter consecutive failures, default 16). The manager then
// falls back to the previous good version: the last version that was active here without a
// quarantine. To have it at hand, the version active before a version with hand-written modules
// stays loaded (not closed) for as long as that version is active: its probation lasts its whole
// life, since a module may fail only under traffic that comes hours later. A version without
// hand-written modules cannot be quarantined, so the one before it is closed at once.
//
// With no previous good version loaded (the first version since this origin started, or the
// previous one was itself quarantined), the quarantined version stays active: its module is no
// longer run and its segments fail closed ("not member, error"), every other segment is
// evaluated as usual.
//
// The store's current pointer is not moved: it is the operator's. The next version made current
// (a fixed upload, a rollback, or activating the quarantined version again to retry it) is
// loaded and made active as usual.

// quarantinable is what a Loaded version with hand-written modules offers (*Version does).
type quarantinable interface {
	Quarantined() <-chan struct{}
	Quarantine() *ruleset.Quarantine
	HasModules() bool
}

// canQuarantine reports whether l has hand-written modules that the sandbox may quarantine.
func canQuarantine(l Loaded) (quarantinable, bool) {
	q, ok := l.(quarantinable)
	if !ok || !q.HasModules() {
		return nil, false
	}
	return q, true
}

// Status is what this origin evaluates, as GET /v1/rulesets reports it under "active".
type Status struct {
	// Version is the version this origin evaluates (0: none loaded).
	Version uint64 `json:"version"`
	// Fallback is true when Version is a previous good version reinstated because the current
	// one's module was quarantined (Quarantined says which).
	Fallback bool `json:"fallback"`
	// Quarantined is set while the version most recently made active here has a quarantined
	// module, with or without a fallback.
	Quarantined *QuarantineStatus `json:"quarantined,omitempty"`
}

// QuarantineStatus describes a quarantined version.
type QuarantineStatus struct {
	Version uint64    `json:"version"` // the quarantined version
	Module  string    `json:"module"`  // its module, as the rules file names it
	Reason  string    `json:"reason"`  // the failure that reached the threshold
	At      time.Time `json:"at"`
	// Fallback is the version reinstated; 0: none was loaded here, so the quarantined version
	// stays active and fails closed on the module's segments.
	Fallback uint64 `json:"fallback,omitempty"`
}

// Status reports the version this origin evaluates and any quarantine.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	var st Status
	if m.active != nil {
		st.Version = m.active.Version()
	}
	if m.quar != nil {
		q := *m.quar
		st.Quarantined = &q
		st.Fallback = q.Fallback != 0 && q.Fallback == st.Version
	}
	return st
}

// Settled reports whether this origin has acted on version: it evaluates it, or loaded it and
// then quarantined it (falling back or failing closed). Readiness uses it: a fallback is a
// degraded but working state, and every origin would report it at once.
func (m *Manager) Settled(version uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.active != nil && m.active.Version() == version {
		return true
	}
	return m.quar != nil && m.quar.Version == version
}

// watchQuarantine waits until l is quarantined, or stop is closed (l no longer active).
func (m *Manager) watchQuarantine(l Loaded, q quarantinable, stop <-chan struct{}) {
	select {
	case <-q.Quarantined():
		m.fallback(l, q.Quarantine())
	case <-stop:
	}
}

// startWatchLocked starts the quarantine watch of the new active version l (m.mu held), and
// stops the previous one's.
func (m *Manager) startWatchLocked(l Loaded) {
	if m.stopWatch != nil {
		close(m.stopWatch)
		m.stopWatch = nil
	}
	if q, ok := canQuarantine(l); ok {
		m.stopWatch = make(chan struct{})
		go m.watchQuarantine(l, q, m.stopWatch)
	}
}

// fallback reacts to the quarantine of l: reinstate the previous good version if one is
// loaded, else keep l (failing closed on the quarantined module's segments).
func (m *Manager) fallback(l Loaded, q *ruleset.Quarantine) {
	m.swapMu.Lock()
	defer m.swapMu.Unlock()
	m.mu.Lock()
	if m.active != l {
		m.mu.Unlock()
		return // replaced meanwhile
	}
	st := &QuarantineStatus{Version: l.Version(), Module: q.Module, Reason: q.Err.Error(), At: q.At}
	m.quar = st
	prev, prevSrc := m.prev, m.prevSrc
	if prev == nil {
		m.stopWatch = nil // this watch has fired
		m.mu.Unlock()
		m.quarantines.WithLabelValues("fail_closed").Inc()
		m.quarantined.Set(1)
		m.log.Error("ruleset module quarantined; no previous good version is loaded here, so this version stays active and its module's segments fail closed until another version is activated",
			"version", l.Version(), "module", q.Module, "err", q.Err)
		return
	}
	st.Fallback = prev.Version()
	m.active, m.activeSrc = prev, prevSrc
	m.prev, m.prevSrc = nil, nil
	m.stopWatch = nil
	m.startWatchLocked(prev) // it may fail later too: then with no fallback left
	m.mu.Unlock()
	m.quarantines.WithLabelValues("fallback").Inc()
	m.quarantined.Set(1)
	m.fallbackG.Set(1)
	m.version.Set(float64(prev.Version()))
	if m.onSwap != nil {
		m.onSwap(prev, prevSrc)
	}
	m.mu.Lock()
	close(m.swapped)
	m.swapped = make(chan struct{})
	m.mu.Unlock()
	l.Close()
	m.log.Error("ruleset module quarantined; falling back to the previous good version",
		"version", l.Version(), "fallback", prev.Version(), "module", q.Module, "err", q.Err)
}

// isActive reports whether version, just made current in the store, is the one evaluated here
// already, so that the watch need not load it. A quarantined version made current again is
// not: loading it afresh is how an operator retries it. The fallback version made current (a
// rollback to it) is, and clears the fallback state.
func (m *Manager) isActive(version uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.active == nil || m.active.Version() != version {
		return false
	}
	if m.quar != nil && m.quar.Version == version {
		return false
	}
	if m.quar != nil && m.quar.Fallback == version {
		m.quar = nil
		m.quarantined.Set(0)
		m.fallbackG.Set(0)
		m.log.Info("ruleset fallback made current; the fallback state is cleared", "version", version)
	}
	return true
}
