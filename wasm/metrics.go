package wasm

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Failure reasons, the values of the reason label of
// segedge_wasm_eval_failures_total. A fixed set: never a module or user name.
const (
	reasonTrap    = "trap"
	reasonTimeout = "timeout"
	reasonMemory  = "memory"
	reasonStatus  = "status"
	reasonExit    = "exit"
	reasonCancel  = "canceled"
	reasonInit    = "instantiate"
)

var allReasons = []string{reasonTrap, reasonTimeout, reasonMemory, reasonStatus, reasonExit, reasonCancel, reasonInit}

// metrics are per Runtime and registered on the Registerer passed in Config.
// Counters for each reason are resolved once so the failure path does no
// label lookups.
type metrics struct {
	failures    *prometheus.CounterVec
	byReason    map[string]prometheus.Counter
	quarantines prometheus.Counter
	swaps       prometheus.Counter
	loadErrors  prometheus.Counter
	modules     prometheus.Gauge
	instances   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "segedge_wasm_eval_failures_total",
			Help: "Rule module evaluations that failed closed, by reason (trap, timeout, memory, status, exit, canceled, instantiate).",
		}, []string{"reason"}),
		quarantines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "segedge_wasm_quarantines_total",
			Help: "Modules quarantined after consecutive failed evaluations (a standalone module: the previous version is reinstated; a module inside a ruleset: see segedge_{origin,edge}_ruleset_quarantines_total for what the host did).",
		}),
		swaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "segedge_wasm_swaps_total",
			Help: "Active rule module swaps.",
		}),
		loadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "segedge_wasm_load_errors_total",
			Help: "Rule modules rejected at load (size, imports, exports, memory, ABI checks).",
		}),
		modules: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "segedge_wasm_modules_open",
			Help: "Loaded rule modules not yet released.",
		}),
		instances: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "segedge_wasm_instances_open",
			Help: "Live rule module instances across all modules.",
		}),
	}
	if reg != nil {
		var err error
		if m.failures, err = register(reg, m.failures); err != nil {
			return nil, err
		}
		if m.quarantines, err = register(reg, m.quarantines); err != nil {
			return nil, err
		}
		if m.swaps, err = register(reg, m.swaps); err != nil {
			return nil, err
		}
		if m.loadErrors, err = register(reg, m.loadErrors); err != nil {
			return nil, err
		}
		if m.modules, err = register(reg, m.modules); err != nil {
			return nil, err
		}
		if m.instances, err = register(reg, m.instances); err != nil {
			return nil, err
		}
	}
	m.byReason = make(map[string]prometheus.Counter, len(allReasons))
	for _, r := range allReasons {
		m.byReason[r] = m.failures.WithLabelValues(r)
	}
	return m, nil
}

// register registers c, or reuses the collector already registered under the
// same description (two Runtimes on one registry share the series).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("register wasm metrics: %w", err)
	}
	return c, nil
}
