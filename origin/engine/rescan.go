package engine

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/segedge/segedge/core/delta"
)

// RescanStatus is the progress of re-evaluating every stored profile under a new ruleset.
type RescanStatus struct {
	Ruleset  uint64    `json:"ruleset"`
	Running  bool      `json:"running"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	Done     int64     `json:"done"`
	Failed   int64     `json:"failed"`
	Error    string    `json:"error,omitempty"`
}

// Rescanner re-evaluates every stored profile in the background when the ruleset changes, so a
// new segment fills without waiting for new events. It is rate limited so that live events keep
// their latency; a newer ruleset cancels a running scan and starts over.
type Rescanner struct {
	eng  *Engine
	rate float64

	mu     sync.Mutex
	cancel context.CancelFunc
	status RescanStatus
	done   chan struct{}

	progress prometheus.Counter
	running  prometheus.Gauge
}

// NewRescanner returns a rescanner that re-evaluates at most perSecond profiles a second.
func NewRescanner(eng *Engine, perSecond float64, reg prometheus.Registerer) *Rescanner {
	r := &Rescanner{
		eng:      eng,
		rate:     perSecond,
		progress: prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_reevaluations_total", Help: "Profiles re-evaluated by background rescans after a ruleset change."}),
		running:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_origin_rescan_running", Help: "1 while a background rescan runs."}),
	}
	reg.MustRegister(r.progress, r.running)
	return r
}

// Start begins a rescan for ruleset version, cancelling any running one.
func (r *Rescanner) Start(ruleset uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cancel != nil {
		r.cancel()
		<-r.done
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.done = make(chan struct{})
	r.status = RescanStatus{Ruleset: ruleset, Running: true, Started: time.Now().UTC()}
	go r.run(ctx, r.done)
}

// Stop cancels a running rescan and waits for it.
func (r *Rescanner) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cancel != nil {
		r.cancel()
		<-r.done
		r.cancel = nil
	}
}

// Status returns the progress of the current (or last) rescan.
func (r *Rescanner) Status() RescanStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

func (r *Rescanner) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	r.running.Set(1)
	defer r.running.Set(0)
	lim := rate.NewLimiter(rate.Limit(r.rate), max(1, int(r.rate/10)))
	cursor := ""
	var runErr error
	for {
		users, next, err := r.eng.cfg.Store.Scan(ctx, cursor, 256)
		if err != nil {
			runErr = err
			break
		}
		for _, u := range users {
			if err := lim.Wait(ctx); err != nil {
				runErr = err
				break
			}
			err := r.eng.Reevaluate(ctx, u, delta.CauseRuleset)
			r.mu.Lock()
			if err != nil {
				r.status.Failed++
			} else {
				r.status.Done++
			}
			r.mu.Unlock()
			r.progress.Inc()
		}
		if runErr != nil || next == "" {
			break
		}
		cursor = next
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.Running = false
	r.status.Finished = time.Now().UTC()
	if runErr != nil && ctx.Err() == nil {
		r.status.Error = runErr.Error()
	} else if ctx.Err() != nil {
		r.status.Error = "cancelled by a newer ruleset or shutdown"
	}
}
