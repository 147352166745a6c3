package engine

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
)

// RescanStatus is this origin's progress in re-evaluating the stored profiles of the partitions
// it holds under the active ruleset.
type RescanStatus struct {
	Ruleset uint64 `json:"ruleset"`
	// Running is true while a partition this origin holds is not rescanned under Ruleset yet.
	Running  bool      `json:"running"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"` // when the last pass ended
	// Done and Failed count this origin's re-evaluations under Ruleset.
	Done   int64 `json:"done"`
	Failed int64 `json:"failed"`
	// PartitionsDone are the held partitions rescanned under Ruleset (here or, as their marker
	// says, by a previous holder); PartitionsPending the held ones still to do.
	PartitionsDone    int    `json:"partitions_done"`
	PartitionsPending int    `json:"partitions_pending"`
	Error             string `json:"error,omitempty"`
}

// Rescanner re-evaluates the stored profiles when the ruleset changes, so a new segment fills
// without waiting for new events. It is rate limited so that live events keep their latency; a
// newer ruleset cancels a running scan and starts over.
//
// Each origin re-evaluates only the users of the partitions it holds (their worker is local),
// so K origins re-evaluate each profile once between them, not K times. A partition's rescan is
// complete when every one of its users was re-evaluated by the same lease holder (one claim)
// without a failure; the holder then records the ruleset version in a marker per partition, a
// key in the JetStream key-value bucket SEG_RESCANS (with the NATS prefix in front), shared by
// the origins and kept across restarts. The markers are why a restarted origin with the same
// ruleset rescans nothing, and why a partition that changes hands before its rescan completed
// is rescanned by its new holder. A partition is done when its marker names the active version
// exactly: going back to an older version (a rollback, a quarantine fallback) rescans too.
// While a ruleset is active the Rescanner keeps looking (every poll) for partitions this
// origin takes later.
type Rescanner struct {
	eng  *Engine
	rate float64
	// poll is how often the held partitions are checked for a rescan to do.
	poll time.Duration
	// failRetry is how long a partition where a re-evaluation failed waits before it is
	// rescanned again (whole: only a complete pass marks it).
	failRetry time.Duration

	// ctl serialises Start and Stop; it is held while they wait for the previous run to end,
	// so that run never needs it (run takes mu to report progress).
	ctl    sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	status RescanStatus

	// kv is the marker bucket once open; only the run goroutine (one at a time) touches it.
	kv jetstream.KeyValue

	progress     prometheus.Counter
	running      prometheus.Gauge
	markerErrors prometheus.Counter
}

const (
	rescanKeyPrefix = "p." // p.<partition> → the ruleset version whose rescan completed
	rescanBatch     = 256  // user ids read per store scan call
)

// NewRescanner returns a rescanner that re-evaluates at most perSecond profiles a second.
func NewRescanner(eng *Engine, perSecond float64, reg prometheus.Registerer) *Rescanner {
	r := &Rescanner{
		eng:       eng,
		rate:      perSecond,
		poll:      time.Second,
		failRetry: 30 * time.Second,
		progress:  prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_reevaluations_total", Help: "Profiles re-evaluated by background rescans after a ruleset change."}),
		running:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_origin_rescan_running", Help: "1 while a partition this origin holds is not rescanned under the active ruleset yet."}),
		markerErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_rescan_marker_errors_total",
			Help: "Reads and writes of the per-partition rescan markers (SEG_RESCANS) that failed; an unreadable marker counts as not done, an unwritten one is retried."}),
	}
	reg.MustRegister(r.progress, r.running, r.markerErrors)
	return r
}

// Start begins the rescan for ruleset version, cancelling any running one. It runs until the
// next Start or Stop.
func (r *Rescanner) Start(ruleset uint64) {
	r.ctl.Lock()
	defer r.ctl.Unlock()
	r.stopLocked()
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.done = make(chan struct{})
	r.mu.Lock()
	r.status = RescanStatus{Ruleset: ruleset, Running: true, Started: time.Now().UTC()}
	r.mu.Unlock()
	go r.run(ctx, ruleset, r.done)
}

// Stop cancels a running rescan and waits for it.
func (r *Rescanner) Stop() {
	r.ctl.Lock()
	defer r.ctl.Unlock()
	r.stopLocked()
}

func (r *Rescanner) stopLocked() {
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

// rescan is what one run knows about the partitions under its ruleset version.
type rescan struct {
	version uint64
	// finished[p] is the claim under which partition p is known rescanned: by this run, or by
	// a marker read while this claim held it. A new claim (the partition was lost and taken
	// again) is checked afresh.
	finished  map[int]*claim
	unwritten map[int]bool         // finished here, marker not written yet
	notBefore map[*claim]time.Time // claims whose last pass had a failed re-evaluation
}

func (r *Rescanner) run(ctx context.Context, version uint64, done chan struct{}) {
	defer close(done)
	defer r.running.Set(0)
	lim := rate.NewLimiter(rate.Limit(r.rate), max(1, int(r.rate/10)))
	s := &rescan{version: version, finished: map[int]*claim{}, unwritten: map[int]bool{}, notBefore: map[*claim]time.Time{}}
	for {
		r.round(ctx, s, lim)
		select {
		case <-ctx.Done():
			r.mu.Lock()
			if r.status.Running {
				r.status.Error = "cancelled by a newer ruleset or shutdown"
			}
			r.mu.Unlock()
			return
		case <-time.After(r.poll):
		}
	}
}

// round rescans the held partitions that still need it, in one pass over the store.
func (r *Rescanner) round(ctx context.Context, s *rescan, lim *rate.Limiter) {
	r.writeMarkers(ctx, s)
	todo := r.pending(ctx, s)
	r.report(s)
	if len(todo) == 0 {
		return
	}
	complete, failed, err := r.pass(ctx, s.version, todo, lim)
	for p, c := range complete {
		s.finished[p] = c
		s.unwritten[p] = true
	}
	for _, c := range failed {
		s.notBefore[c] = time.Now().Add(r.failRetry)
	}
	if len(failed) > 0 {
		r.eng.cfg.Log.Warn("rescan: re-evaluations failed; their partitions are rescanned later",
			"ruleset", s.version, "partitions", len(failed), "retry_in", r.failRetry)
	}
	r.writeMarkers(ctx, s)
	r.mu.Lock()
	r.status.Finished = time.Now().UTC()
	r.status.Error = ""
	if err != nil && ctx.Err() == nil {
		r.status.Error = err.Error()
		r.eng.cfg.Log.Warn("rescan pass failed; retrying", "ruleset", s.version, "err", err)
	}
	r.mu.Unlock()
	r.report(s)
}

// pending returns the partitions this origin holds that still need the rescan, with the claim
// that holds each. A marker that cannot be read counts as not done.
func (r *Rescanner) pending(ctx context.Context, s *rescan) map[int]*claim {
	todo := map[int]*claim{}
	now := time.Now()
	for p := range r.eng.claims {
		c := r.eng.claims[p].Load()
		if c == nil || s.finished[p] == c || now.Before(s.notBefore[c]) {
			continue
		}
		v, err := r.readMarker(ctx, p)
		if err != nil {
			if ctx.Err() == nil {
				r.markerErrors.Inc()
				r.eng.cfg.Log.Warn("read rescan marker; rescanning the partition", "partition", p, "err", err)
			}
		} else if v == s.version {
			s.finished[p] = c
			continue
		}
		todo[p] = c
	}
	return todo
}

// pass reads every stored user once and re-evaluates those of the partitions in todo on this
// origin's worker, as long as the claim that held the partition when the pass began still
// does. It returns the partitions of todo whose every user was re-evaluated under that claim,
// and the claims of those where a re-evaluation failed.
func (r *Rescanner) pass(ctx context.Context, version uint64, todo map[int]*claim, lim *rate.Limiter) (complete map[int]*claim, failed []*claim, err error) {
	partitions := r.eng.cfg.Topology.Partitions
	bad := map[int]bool{}
	cursor := ""
	for {
		users, next, err := r.eng.cfg.Store.Scan(ctx, cursor, rescanBatch)
		if err != nil {
			return nil, nil, fmt.Errorf("rescan ruleset %d: scan profiles: %w", version, err)
		}
		for _, u := range users {
			p := event.Partition(u, partitions)
			c, ok := todo[p]
			if !ok || bad[p] {
				continue
			}
			if r.eng.claims[p].Load() != c { // moved: its new holder rescans it
				delete(todo, p)
				continue
			}
			if err := lim.Wait(ctx); err != nil {
				return nil, nil, err
			}
			err := submit(ctx, c, task{user: u, cause: delta.CauseRuleset, done: make(chan error, 1)})
			if errors.Is(err, errNotHeld) {
				delete(todo, p)
				continue
			}
			r.count(err)
			if err != nil {
				bad[p] = true
				failed = append(failed, c)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	complete = map[int]*claim{}
	for p, c := range todo {
		if !bad[p] && r.eng.claims[p].Load() == c {
			complete[p] = c
		}
	}
	return complete, failed, nil
}

func (r *Rescanner) count(err error) {
	r.mu.Lock()
	if err != nil {
		r.status.Failed++
	} else {
		r.status.Done++
	}
	r.mu.Unlock()
	r.progress.Inc()
}

// report updates the status and the running gauge from the held partitions.
func (r *Rescanner) report(s *rescan) {
	done, pending := 0, 0
	for p := range r.eng.claims {
		switch c := r.eng.claims[p].Load(); {
		case c == nil:
		case s.finished[p] == c:
			done++
		default:
			pending++
		}
	}
	r.mu.Lock()
	r.status.PartitionsDone, r.status.PartitionsPending = done, pending
	r.status.Running = pending > 0
	r.mu.Unlock()
	if pending > 0 {
		r.running.Set(1)
	} else {
		r.running.Set(0)
	}
}

// writeMarkers records the partitions finished here; those that fail are tried again next round
// (meanwhile this origin knows they are done; another origin taking one rescans it).
func (r *Rescanner) writeMarkers(ctx context.Context, s *rescan) {
	for p := range s.unwritten {
		if err := r.writeMarker(ctx, p, s.version); err != nil {
			if ctx.Err() == nil {
				r.markerErrors.Inc()
				r.eng.cfg.Log.Warn("write rescan marker; retrying", "partition", p, "err", err)
			}
			continue
		}
		delete(s.unwritten, p)
	}
}

// readMarker returns the ruleset version whose rescan completed on partition p (0: none).
func (r *Rescanner) readMarker(ctx context.Context, p int) (uint64, error) {
	kv, err := r.bucket(ctx)
	if err != nil {
		return 0, err
	}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	en, err := kv.Get(gctx, rescanKey(p))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		r.kv = nil // open it again next time: it may have been deleted
		return 0, fmt.Errorf("rescan marker of partition %d: %w", p, err)
	}
	v, err := strconv.ParseUint(string(en.Value()), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("rescan marker of partition %d: %w", p, err)
	}
	return v, nil
}

func (r *Rescanner) writeMarker(ctx context.Context, p int, version uint64) error {
	kv, err := r.bucket(ctx)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := kv.Put(pctx, rescanKey(p), []byte(strconv.FormatUint(version, 10))); err != nil {
		r.kv = nil
		return fmt.Errorf("rescan marker of partition %d: %w", p, err)
	}
	return nil
}

// bucket opens (creating it if needed) the marker bucket, named like the lease bucket.
func (r *Rescanner) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	if r.kv != nil {
		return r.kv, nil
	}
	name := r.eng.cfg.Topology.RescanBucket()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	js := r.eng.cfg.JS
	kv, err := js.KeyValue(cctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(cctx, jetstream.KeyValueConfig{
			Bucket: name, History: 1, Storage: jetstream.FileStorage,
			Description: "segedge: the ruleset version whose rescan completed, per partition",
		})
		if errors.Is(err, jetstream.ErrBucketExists) { // another origin was faster
			kv, err = js.KeyValue(cctx, name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open rescan marker bucket %s: %w", name, err)
	}
	r.kv = kv
	return kv, nil
}

func rescanKey(p int) string { return rescanKeyPrefix + strconv.Itoa(p) }

// RescanProgress is the rescan's progress across every origin, read from the per-partition
// markers, with this origin's own status: what GET /v1/rescan answers, whichever origin is asked.
type RescanProgress struct {
	// Ruleset is the version this origin rescans for (its active ruleset; 0: none yet).
	Ruleset uint64 `json:"ruleset"`
	// Complete is true when every partition's marker names Ruleset.
	Complete       bool              `json:"complete"`
	PartitionsDone int               `json:"partitions_done"`
	Partitions     []PartitionRescan `json:"partitions"`
	Origin         RescanStatus      `json:"origin"` // this origin's passes over its partitions
}

// PartitionRescan is one partition's marker.
type PartitionRescan struct {
	Partition int `json:"partition"`
	// Rescanned is the ruleset version whose rescan completed on the partition (0: none).
	Rescanned uint64 `json:"rescanned"`
	Done      bool   `json:"done"` // Rescanned is the active version
	Held      bool   `json:"held"` // by this origin
}

// Progress reads every partition's marker. It opens the bucket on its own (the run goroutine
// owns r.kv) and creates nothing: no bucket yet means no partition rescanned yet.
func (r *Rescanner) Progress(ctx context.Context) (RescanProgress, error) {
	out := RescanProgress{Origin: r.Status()}
	out.Ruleset = out.Origin.Ruleset
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	kv, err := r.eng.cfg.JS.KeyValue(ctx, r.eng.cfg.Topology.RescanBucket())
	if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return out, fmt.Errorf("rescan progress: open marker bucket: %w", err)
	}
	for p := range r.eng.cfg.Topology.Partitions {
		pr := PartitionRescan{Partition: p, Held: r.eng.claims[p].Load() != nil}
		if kv != nil {
			en, err := kv.Get(ctx, rescanKey(p))
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
			case err != nil:
				return out, fmt.Errorf("rescan progress: marker of partition %d: %w", p, err)
			default:
				if pr.Rescanned, err = strconv.ParseUint(string(en.Value()), 10, 64); err != nil {
					return out, fmt.Errorf("rescan progress: marker of partition %d: %w", p, err)
				}
			}
		}
		pr.Done = out.Ruleset != 0 && pr.Rescanned == out.Ruleset
		if pr.Done {
			out.PartitionsDone++
		}
		out.Partitions = append(out.Partitions, pr)
	}
	out.Complete = out.Ruleset != 0 && out.PartitionsDone == len(out.Partitions)
	return out, nil
}
