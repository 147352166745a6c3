package engine

// Partition leases: how several origin processes share the partitions of EVENTS.
//
// Every origin binds the same durable consumer per partition, so without leases JetStream would
// hand one partition's messages to two processes at once and one user's events could be applied
// concurrently, out of order. A lease is a key per partition in a JetStream key-value bucket
// whose TTL makes it expire unless its holder renews it; a partition worker runs only while its
// origin holds the lease.
//
// Why the order of a user's events holds across a handover:
//   - An origin claims a free partition with Create (atomic: one winner) and renews every TTL/3
//     with a revision-checked Update; a failed check means someone else owns it now, and the
//     worker stops.
//   - A holder that cannot renew stops its worker 2/3 TTL after it SENT its last successful
//     renewal (a watchdog timer, independent of the lease loop, which may itself be stuck in a
//     NATS call). The server stored that renewal no earlier than it was sent, so the lease
//     expires — and another origin can claim it — at least TTL/3 after the worker stopped.
//   - The new holder deletes the partition's durable consumer and creates it again starting
//     right after its ack floor, before it applies anything. Messages the previous holder had
//     fetched but not acknowledged (in its pull buffer, or in a batch it was applying when it
//     stopped) are therefore delivered again first, in stream order, instead of coming back
//     after AckWait behind later events of the same users. Events applied but not acknowledged
//     are recognised by id in the store and change nothing.
//
// Fair share: each origin also renews a heartbeat key; with K heartbeats each origin aims for
// ceil(P/K) partitions, releases the extras (highest first, worker stopped before the key is
// deleted) so that a newcomer can take them, and claims free ones up to its share. A dead
// origin's leases and heartbeat expire after the TTL and the others take its partitions.
//
// Safety assumes the bucket does not lose keys (it is a file-backed stream like EVENTS) and
// that no process pauses for longer than TTL/3 between checking its watchdog and writing.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
)

// DefaultLeaseTTL is how long a partition lease lives without renewal: how long the partitions
// of a crashed origin wait before another origin takes them.
const DefaultLeaseTTL = 10 * time.Second

const (
	leaseKeyPrefix  = "p." // p.<partition> → the holder's origin id
	originKeyPrefix = "o." // o.<origin id> → heartbeat
)

// errNotHeld says the task reached an origin (or a worker) that does not hold the partition
// (any more): ask again, the partition is changing hands.
var errNotHeld = errors.New("partition not held here")

// ErrNoHolder is returned by Reevaluate and Erase when no origin held the user's partition for
// longer than a handover takes (two lease TTLs).
var ErrNoHolder = errors.New("no origin holds the user's partition")

// DefaultOriginID names this process: hostname, pid and 4 random bytes, so that two processes
// never share an id (a restarted process is a new origin; its predecessor's leases expire).
func DefaultOriginID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "origin"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	clean := []byte(id)
	for i, c := range clean {
		if !idChar(c) {
			clean[i] = '_'
		}
	}
	if len(clean) > 64 {
		clean = clean[len(clean)-64:] // keep the pid and random part
	}
	return string(clean)
}

func idChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// CheckOriginID reports whether id can name an origin in the lease bucket: 1 to 64 letters,
// digits, '-' or '_'.
func CheckOriginID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("origin id %q: want 1 to 64 characters", id)
	}
	for i := range len(id) {
		if !idChar(id[i]) {
			return fmt.Errorf("origin id %q: only letters, digits, '-' and '_'", id)
		}
	}
	return nil
}

// claim is one held partition lease and the worker that runs under it.
type claim struct {
	p   int
	rev uint64 // the lease key's revision we last wrote; only the lease loop touches it
	// ctx is the worker's; cancel stops the worker (lease lost, released, or not renewed in time).
	ctx    context.Context
	cancel context.CancelFunc
	// done is closed once the worker has stopped applying anything.
	done chan struct{}
	// tasks are re-evaluations and erasures for the worker, from this process or another origin.
	tasks    chan task
	watchdog *time.Timer
}

// extend moves the worker's stop deadline to until, after a successful renewal; false when the
// watchdog already stopped the worker.
func (c *claim) extend(until time.Time) bool {
	if c.ctx.Err() != nil {
		return false
	}
	c.watchdog.Reset(time.Until(until))
	return c.ctx.Err() == nil
}

type leaseMetrics struct {
	held    prometheus.Gauge
	changes *prometheus.CounterVec
	refused prometheus.Counter
}

func newLeaseMetrics(reg prometheus.Registerer) *leaseMetrics {
	m := &leaseMetrics{
		held: prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_origin_partitions_held",
			Help: "Partitions of EVENTS this origin holds the lease of and consumes."}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segedge_origin_partition_lease_changes_total",
			Help: "Partition leases acquired, released (fair share or shutdown) and lost (taken over, or not renewed within 2/3 of the TTL)."},
			[]string{"change"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_origin_task_requests_refused_total",
			Help: "Re-evaluations or erasures sent by another origin that could not be read (bad JSON, user id, cause or partition)."}),
	}
	for _, c := range []string{"acquired", "released", "lost"} {
		m.changes.WithLabelValues(c)
	}
	reg.MustRegister(m.held, m.changes, m.refused)
	return m
}

// Ready reports whether the engine has taken its first share of the partitions (for /readyz):
// with one origin, every partition is claimed before it says ready.
func (e *Engine) Ready(context.Context) error {
	if !e.ready.Load() {
		return errors.New("partition leases not claimed yet")
	}
	return nil
}

// Held returns the partitions this engine holds the lease of, in order.
func (e *Engine) Held() []int {
	var out []int
	for p := range e.claims {
		if e.claims[p].Load() != nil {
			out = append(out, p)
		}
	}
	return out
}

// leaser claims, renews and releases this origin's partition leases and runs a worker per held
// partition. Its run goroutine owns held.
type leaser struct {
	e    *Engine
	kv   jetstream.KeyValue
	id   string
	ttl  time.Duration
	log  *slog.Logger
	held map[int]*claim
}

// openLeases opens (or creates) the lease bucket, retrying until ctx ends. The bucket's TTL is
// the one every origin uses: the first origin sets it, later ones adopt it (a holder that
// assumed a longer TTL than the bucket's would stop its worker too late).
func (e *Engine) openLeases(ctx context.Context) (*leaser, error) {
	name := e.cfg.Topology.LeaseBucket()
	for {
		kv, ttl, err := openLeaseBucket(ctx, e.cfg.JS, name, e.cfg.LeaseTTL)
		if err == nil {
			if ttl != e.cfg.LeaseTTL {
				e.cfg.Log.Warn("partition lease bucket has another TTL than configured; using the bucket's (delete the bucket to change it)",
					"bucket", name, "bucket_ttl", ttl, "configured", e.cfg.LeaseTTL)
			}
			e.leaseTTL.Store(int64(ttl))
			return &leaser{e: e, kv: kv, id: e.cfg.OriginID, ttl: ttl, log: e.cfg.Log, held: map[int]*claim{}}, nil
		}
		e.cfg.Log.Warn("open partition lease bucket; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func openLeaseBucket(ctx context.Context, js jetstream.JetStream, name string, ttl time.Duration) (jetstream.KeyValue, time.Duration, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(cctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(cctx, jetstream.KeyValueConfig{
			Bucket: name, TTL: ttl, History: 1, Storage: jetstream.FileStorage,
			Description: "segedge origin partition leases and heartbeats",
		})
		if errors.Is(err, jetstream.ErrBucketExists) { // another origin was faster
			kv, err = js.KeyValue(cctx, name)
		}
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open partition lease bucket %s: %w", name, err)
	}
	st, err := kv.Status(cctx)
	if err != nil {
		return nil, 0, fmt.Errorf("partition lease bucket %s status: %w", name, err)
	}
	if st.TTL() <= 0 {
		return nil, 0, fmt.Errorf("partition lease bucket %s has no TTL: a dead origin's leases would never expire", name)
	}
	return kv, st.TTL(), nil
}

func leaseKey(p int) string      { return leaseKeyPrefix + strconv.Itoa(p) }
func originKey(id string) string { return originKeyPrefix + id }

// run keeps the leases until ctx ends, then stops every worker and releases their leases.
func (l *leaser) run(ctx context.Context) {
	l.log.Info("partition leases", "origin", l.id, "ttl", l.ttl, "partitions", len(l.e.cfg.Partitions))
	kick := make(chan struct{}, 1)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go l.watchChanges(wctx, kick)
	for {
		wait, ok := l.round(ctx)
		if ok && !l.e.ready.Load() {
			l.e.ready.Store(true)
		}
		select {
		case <-ctx.Done():
			stopWatch()
			l.releaseAll()
			return
		case <-time.After(wait):
		case <-kick:
		}
	}
}

// watchChanges wakes the lease loop when the sharing changes: an origin appears (holders above
// the new share release partitions for it), or a lease or heartbeat is deleted (an origin
// released partitions or stopped: they can be taken now rather than at the next renewal).
// Renewals, the bulk of the bucket's traffic, wake nothing.
func (l *leaser) watchChanges(ctx context.Context, kick chan<- struct{}) {
	for ctx.Err() == nil {
		w, err := l.kv.WatchAll(ctx, jetstream.UpdatesOnly())
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		known := map[string]bool{}
		for en := range w.Updates() { // closed when ctx ends or the connection closes
			if en == nil {
				continue
			}
			wake := en.Operation() != jetstream.KeyValuePut
			if strings.HasPrefix(en.Key(), originKeyPrefix) {
				if wake {
					delete(known, en.Key())
				} else if !known[en.Key()] {
					known[en.Key()], wake = true, true
				}
			}
			if wake {
				select {
				case kick <- struct{}{}:
				default:
				}
			}
		}
		_ = w.Stop()
	}
}

// round renews the held leases, beats the heartbeat, and moves towards the fair share. It
// returns when to run again, and false when it could not see the bucket.
func (l *leaser) round(ctx context.Context) (time.Duration, bool) {
	wait := l.ttl / 3
	retry := l.ttl / 12
	for _, p := range l.heldOrder() {
		c := l.held[p]
		if c.ctx.Err() != nil { // the watchdog stopped it: not renewed in time
			l.drop(c, "lost", true)
			continue
		}
		select {
		case <-c.done: // the worker ended on its own (consume failed): give the partition back
			l.e.cfg.Log.Warn("partition worker ended; releasing its lease", "partition", p)
			l.drop(c, "released", true)
			continue
		default:
		}
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, l.ttl/6)
		rev, err := l.kv.Update(rctx, leaseKey(p), []byte(l.id), c.rev)
		cancel()
		switch {
		case err == nil:
			c.rev = rev
			if !c.extend(sent.Add(2 * l.ttl / 3)) {
				l.drop(c, "lost", true)
			}
		case lostCAS(err):
			if rev, ok := l.stillOurs(ctx, p); ok {
				// An earlier renewal that timed out was stored after all. Renew at its revision
				// soon; the watchdog still counts from the last renewal we saw succeed.
				c.rev = rev
				wait = retry
				continue
			}
			l.drop(c, "lost", false)
		case ctx.Err() != nil:
			return wait, false
		default:
			l.log.Warn("renew partition lease; retrying", "partition", p, "err", err)
			wait = retry
		}
	}

	hctx, cancel := context.WithTimeout(ctx, l.ttl/6)
	_, err := l.kv.Put(hctx, originKey(l.id), []byte(time.Now().UTC().Format(time.RFC3339Nano)))
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			l.log.Warn("origin heartbeat; retrying", "err", err)
		}
		return retry, false
	}
	owners, origins, err := l.view(ctx)
	if err != nil {
		if ctx.Err() == nil {
			l.log.Warn("read partition leases; retrying", "err", err)
		}
		return retry, false
	}
	parts := l.e.cfg.Partitions
	share := (len(parts) + origins - 1) / max(1, origins)
	for len(l.held) > share {
		order := l.heldOrder()
		l.drop(l.held[order[len(order)-1]], "released", true)
	}
	if len(l.held) < share {
		for _, p := range l.claimOrder(parts) {
			if len(l.held) >= share {
				break
			}
			if _, mine := l.held[p]; mine || owners[p] != "" {
				continue
			}
			sent := time.Now()
			cctx, cancel := context.WithTimeout(ctx, l.ttl/6)
			rev, err := l.kv.Create(cctx, leaseKey(p), []byte(l.id))
			cancel()
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // someone else was faster
			}
			if err != nil {
				if ctx.Err() == nil {
					l.log.Warn("claim partition lease; retrying", "partition", p, "err", err)
				}
				return retry, false
			}
			l.start(ctx, p, rev, sent)
		}
		if len(l.held) < share {
			// Partitions above their holders' share are about to be released: look again soon.
			wait = min(wait, l.ttl/10)
		}
	}
	return wait, true
}

// lostCAS reports whether a renewal failed because the key is no longer at our revision: it
// expired, or someone else claimed it.
func lostCAS(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) ||
		errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)
}

// stillOurs returns the revision of partition p's lease key when it names this origin: only this
// process writes its id, so the key was never someone else's since we claimed it.
func (l *leaser) stillOurs(ctx context.Context, p int) (uint64, bool) {
	gctx, cancel := context.WithTimeout(ctx, l.ttl/6)
	defer cancel()
	en, err := l.kv.Get(gctx, leaseKey(p))
	if err != nil || string(en.Value()) != l.id {
		return 0, false
	}
	return en.Revision(), true
}

// view reads the bucket: each partition's holder and the number of live origins.
func (l *leaser) view(ctx context.Context) (map[int]string, int, error) {
	vctx, cancel := context.WithTimeout(ctx, l.ttl/3)
	defer cancel()
	w, err := l.kv.WatchAll(vctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, 0, err
	}
	defer w.Stop()
	owners := map[int]string{}
	origins := 0
	for {
		select {
		case en, ok := <-w.Updates():
			if !ok {
				return nil, 0, errors.New("lease watch closed")
			}
			if en == nil { // every current key seen
				return owners, max(1, origins), nil
			}
			if s, ok := strings.CutPrefix(en.Key(), leaseKeyPrefix); ok {
				if p, err := strconv.Atoi(s); err == nil {
					owners[p] = string(en.Value())
				}
			} else if strings.HasPrefix(en.Key(), originKeyPrefix) {
				origins++
			}
		case <-vctx.Done():
			return nil, 0, fmt.Errorf("read partition leases: %w", vctx.Err())
		}
	}
}

func (l *leaser) heldOrder() []int {
	ps := make([]int, 0, len(l.held))
	for p := range l.held {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// claimOrder starts at a place that depends on the origin id, so that origins starting together
// mostly try different partitions first.
func (l *leaser) claimOrder(parts []int) []int {
	if len(parts) == 0 {
		return nil
	}
	off := event.Partition(l.id, len(parts))
	return append(slices.Clone(parts[off:]), parts[:off]...)
}

// start runs partition p's worker under a lease written (revision rev) at sent.
func (l *leaser) start(ctx context.Context, p int, rev uint64, sent time.Time) {
	wctx, cancel := context.WithCancel(ctx)
	c := &claim{p: p, rev: rev, ctx: wctx, cancel: cancel, done: make(chan struct{}), tasks: make(chan task, 1024)}
	c.watchdog = time.AfterFunc(time.Until(sent.Add(2*l.ttl/3)), cancel)
	l.held[p] = c
	l.e.claims[p].Store(c)
	l.e.lm.held.Set(float64(len(l.held)))
	l.e.lm.changes.WithLabelValues("acquired").Inc()
	l.log.Info("partition lease claimed", "partition", p, "origin", l.id, "holding", len(l.held))
	go func() {
		defer close(c.done)
		defer l.e.claims[p].CompareAndSwap(c, nil)
		if err := l.e.runPartition(wctx, p, c); err != nil {
			l.log.Error("partition worker", "partition", p, "err", err)
		}
	}()
}

// drop stops c's worker and waits until it has stopped applying; then, if deleteKey, deletes
// the lease (only at our revision) so that another origin can take it without waiting for the
// TTL. change is the metric label: released or lost.
func (l *leaser) drop(c *claim, change string, deleteKey bool) {
	if !deleteKey {
		l.dropWithin(nil, c, change)
		return
	}
	dctx, cancel := context.WithTimeout(context.Background(), l.ttl/6)
	defer cancel()
	l.dropWithin(dctx, c, change)
}

// dropWithin is drop with the lease deleted within dctx (nil: not deleted).
func (l *leaser) dropWithin(dctx context.Context, c *claim, change string) {
	c.cancel()
	<-c.done
	c.watchdog.Stop()
	delete(l.held, c.p)
	l.e.lm.held.Set(float64(len(l.held)))
	l.e.lm.changes.WithLabelValues(change).Inc()
	if dctx != nil {
		err := l.kv.Delete(dctx, leaseKey(c.p), jetstream.LastRevision(c.rev))
		if lostCAS(err) {
			// A renewal we took for failed (timed out, or interrupted by shutdown) may have been
			// stored after all. The key is still ours if it names this process; our worker has
			// stopped, so deleting it at its current revision is safe.
			if en, gerr := l.kv.Get(dctx, leaseKey(c.p)); gerr == nil && string(en.Value()) == l.id {
				err = l.kv.Delete(dctx, leaseKey(c.p), jetstream.LastRevision(en.Revision()))
			}
		}
		if err != nil && !lostCAS(err) {
			l.log.Warn("delete partition lease; it expires on its own", "partition", c.p, "err", err)
		}
	}
	if change == "lost" {
		l.log.Warn("partition lease lost; worker stopped", "partition", c.p, "origin", l.id, "holding", len(l.held))
	} else {
		l.log.Info("partition lease released", "partition", c.p, "origin", l.id, "holding", len(l.held))
	}
}

// releaseAll stops every worker and deletes this origin's heartbeat and leases, so that the
// other origins take the partitions at once (a shutdown, not a crash): the heartbeat first, so
// that they count one origin less before the leases come free. The deletions share one
// deadline: with NATS unreachable, shutdown waits TTL/3 at most and the leases expire.
func (l *leaser) releaseAll() {
	for _, c := range l.held {
		c.cancel() // every worker stops at once
	}
	dctx, cancel := context.WithTimeout(context.Background(), l.ttl/3)
	defer cancel()
	_ = l.kv.Delete(dctx, originKey(l.id))
	for _, p := range l.heldOrder() {
		l.dropWithin(dctx, l.held[p], "released")
	}
}

// submit hands t to the worker of claim c and waits for its answer; errNotHeld when the worker
// stopped before running it.
func submit(ctx context.Context, c *claim, t task) error {
	select {
	case c.tasks <- t:
	case <-c.done:
		return errNotHeld
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-t.done:
		return err
	case <-c.done:
		// The worker answers before it stops: no answer now means it never ran the task.
		select {
		case err := <-t.done:
			return err
		default:
			return errNotHeld
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// taskRequest is a task sent to the origin that holds the user's partition.
type taskRequest struct {
	User  string      `json:"user"`
	Cause delta.Cause `json:"cause"`
}

// taskReply answers a taskRequest: no error, an error, or NotHeld (ask again).
type taskReply struct {
	Error   string `json:"error,omitempty"`
	NotHeld bool   `json:"not_held,omitempty"`
}

// taskTimeout bounds how long a holder works on a task asked by another origin.
const taskTimeout = 10 * time.Second

// askHolder sends the task to the origin holding partition p; errNotHeld when none answers.
func (e *Engine) askHolder(ctx context.Context, p int, user string, cause delta.Cause) error {
	nc := e.cfg.JS.Conn()
	body, err := json.Marshal(taskRequest{User: user, Cause: cause})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, taskTimeout+time.Second)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, e.cfg.Topology.TaskSubject(p), body)
	if errors.Is(err, nats.ErrNoResponders) {
		return errNotHeld
	}
	if err != nil {
		return fmt.Errorf("ask the holder of partition %d: %w", p, err)
	}
	var rep taskReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return fmt.Errorf("answer of the holder of partition %d: %w", p, err)
	}
	switch {
	case rep.NotHeld:
		return errNotHeld
	case rep.Error != "":
		return fmt.Errorf("holder of partition %d: %s", p, rep.Error)
	}
	return nil
}

// serveTasks answers other origins' tasks for partition p while c's worker runs.
func (e *Engine) serveTasks(p int, c *claim) (*nats.Subscription, error) {
	return e.cfg.JS.Conn().Subscribe(e.cfg.Topology.TaskSubject(p), func(m *nats.Msg) {
		req, err := decodeTaskRequest(m.Data, p, e.cfg.Topology.Partitions)
		if err != nil {
			e.lm.refused.Inc()
			e.cfg.Log.Warn("task from another origin refused", "partition", p, "err", err)
			respondTask(m, err)
			return
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), taskTimeout)
			defer cancel()
			respondTask(m, submit(ctx, c, task{user: req.User, cause: req.Cause, done: make(chan error, 1)}))
		}()
	})
}

// decodeTaskRequest reads a task sent to the holder of partition p (of partitions).
func decodeTaskRequest(b []byte, p, partitions int) (taskRequest, error) {
	var req taskRequest
	if err := json.Unmarshal(b, &req); err != nil {
		return req, fmt.Errorf("decode task: %w", err)
	}
	switch {
	case req.User == "" || len(req.User) > event.DefaultMaxIDLen:
		return req, fmt.Errorf("task: user id must be 1 to %d bytes", event.DefaultMaxIDLen)
	case req.Cause != delta.CauseRuleset && req.Cause != delta.CauseErase && req.Cause != delta.CauseExpiry:
		return req, fmt.Errorf("task: unknown cause %q", req.Cause)
	case event.Partition(req.User, partitions) != p:
		return req, fmt.Errorf("task: user is not in partition %d", p)
	}
	return req, nil
}

func respondTask(m *nats.Msg, err error) {
	var rep taskReply
	if errors.Is(err, errNotHeld) {
		rep.NotHeld = true
	} else if err != nil {
		rep.Error = err.Error()
	}
	body, _ := json.Marshal(rep)
	_ = m.Respond(body)
}
