package server

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Ruleset quarantine at the edge, as at the origin (origin/rulesets/quarantine.go): a ruleset
// version whose hand-written module keeps failing is quarantined by the sandbox (wasm/ruleset:
// QuarantineAfter consecutive failures, default 16), and the edge falls back to the previous
// good version, the last one active here without a quarantine. So the version active before a
// version with hand-written modules stays loaded for as long as that version is active. With
// none loaded (the first version since the edge started, or the previous one was quarantined
// too) the quarantined version stays active and its module's segments fail closed; the other
// segments and every slot work as usual.
//
// Each edge counts its own failures, so edges fall back one by one, as their traffic reaches the
// threshold. A fallback keeps the edge ready: it is a degraded state every edge would enter at
// once, and an edge that is not ready takes the site with it. The metrics say which version it
// evaluates (segedge_edge_ruleset_version) and that it is a fallback
// (segedge_edge_ruleset_fallback). The next version made current in the store (a fixed upload,
// a rollback, or the quarantined version activated again to retry it) is loaded as usual.

// rulesetFallback is the edge's quarantine state; mu also serializes ruleset swaps.
type rulesetFallback struct {
	mu   sync.Mutex
	prev *edgeRuleset       // the previous good version, kept loaded to fall back to
	quar *rulesetQuarantine // the quarantine of the version last made active, if any
	stop chan struct{}      // closed to stop the active version's quarantine watch

	outc        *prometheus.CounterVec // segedge_edge_ruleset_quarantines_total{outcome}
	quarantined prometheus.Gauge
	fallback    prometheus.Gauge
}

// rulesetQuarantine is a quarantined version: which module, and the version reinstated (0: none).
type rulesetQuarantine struct {
	version  uint64
	module   string
	fallback uint64
}

func (f *rulesetFallback) register(reg prometheus.Registerer) {
	f.outc = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segedge_edge_ruleset_quarantines_total",
		Help: "Active ruleset versions whose hand-written module was quarantined after repeated failures, by outcome (fallback: the previous good version reinstated; fail_closed: none loaded, the module's segments fail closed)."}, []string{"outcome"})
	f.quarantined = prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_edge_ruleset_quarantined", Help: "1 while the ruleset version last made active here has a quarantined hand-written module, else 0."})
	f.fallback = prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_edge_ruleset_fallback", Help: "1 while this edge evaluates a previous version reinstated after the current one was quarantined, else 0."})
	f.outc.WithLabelValues("fallback")
	f.outc.WithLabelValues("fail_closed")
	reg.MustRegister(f.outc, f.quarantined, f.fallback)
}

// isActive reports whether version, just made current in the store, is the one evaluated here
// already. A quarantined version made current again is not (loading it afresh retries it); the
// fallback version made current is, and that clears the fallback state.
func (e *edge) isActive(version uint64) bool {
	f := &e.fb
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := e.rs.Load()
	if cur == nil || cur.version != version {
		return false
	}
	if f.quar != nil && f.quar.version == version {
		return false
	}
	if f.quar != nil && f.quar.fallback == version {
		f.quar = nil
		f.quarantined.Set(0)
		f.fallback.Set(0)
		e.log.Info("ruleset fallback made current; the fallback state is cleared", "version", version)
	}
	return true
}

// activate makes rs the version evaluated here. The version it replaces is kept loaded as the
// previous good one if rs has hand-written modules (and it was not quarantined itself); any
// other replaced version is closed once no request holds it.
func (e *edge) activate(rs *edgeRuleset) {
	f := &e.fb
	f.mu.Lock()
	old, oldPrev := e.rs.Load(), f.prev
	good := old != nil && (f.quar == nil || f.quar.version != old.version)
	f.prev = nil
	if rs.ev.HasModules() && good {
		f.prev = old
	}
	kept := f.prev
	f.quar = nil
	e.rs.Store(rs)
	e.ruleset.Store(rs.version)
	e.startQuarantineWatchLocked(rs)
	f.mu.Unlock()
	e.rulesetGauge.Set(float64(rs.version))
	f.quarantined.Set(0)
	f.fallback.Set(0)
	e.log.Info("ruleset active", "version", rs.version, "segments", len(rs.man.Segments))
	e.onRulesetChange() // open segment streams (user.go)
	for _, x := range []*edgeRuleset{oldPrev, old} {
		if x != nil && x != kept {
			retire(x)
		}
	}
}

// retire closes a version once the requests holding it are done.
func retire(rs *edgeRuleset) {
	go func() { rs.refs.Wait(); rs.ev.Close() }()
}

// startQuarantineWatchLocked (f.mu held) stops the previous watch and, if rs has hand-written
// modules, waits for their quarantine.
func (e *edge) startQuarantineWatchLocked(rs *edgeRuleset) {
	f := &e.fb
	if f.stop != nil {
		close(f.stop)
		f.stop = nil
	}
	if !rs.ev.HasModules() {
		return
	}
	stop := make(chan struct{})
	f.stop = stop
	go func() {
		select {
		case <-rs.ev.Quarantined():
			e.quarantined(rs)
		case <-stop:
		}
	}()
}

// quarantined reacts to the quarantine of rs: reinstate the previous good version if one is
// loaded, else keep rs, failing closed on the quarantined module's segments.
func (e *edge) quarantined(rs *edgeRuleset) {
	f := &e.fb
	q := rs.ev.Quarantine()
	f.mu.Lock()
	if e.rs.Load() != rs {
		f.mu.Unlock()
		return // replaced meanwhile
	}
	f.stop = nil // this watch has fired
	st := &rulesetQuarantine{version: rs.version, module: q.Module}
	f.quar = st
	prev := f.prev
	if prev == nil {
		f.mu.Unlock()
		f.outc.WithLabelValues("fail_closed").Inc()
		f.quarantined.Set(1)
		e.log.Error("ruleset module quarantined; no previous good version is loaded here, so this version stays active and its module's segments fail closed until another version is activated",
			"version", rs.version, "module", q.Module, "err", q.Err)
		return
	}
	st.fallback = prev.version
	f.prev = nil
	e.rs.Store(prev)
	e.ruleset.Store(prev.version)
	e.startQuarantineWatchLocked(prev) // it may fail later too: then with no fallback left
	f.mu.Unlock()
	e.rulesetGauge.Set(float64(prev.version))
	f.outc.WithLabelValues("fallback").Inc()
	f.quarantined.Set(1)
	f.fallback.Set(1)
	e.log.Error("ruleset module quarantined; falling back to the previous good version",
		"version", rs.version, "fallback", prev.version, "module", q.Module, "err", q.Err)
	e.onRulesetChange()
	retire(rs)
}
