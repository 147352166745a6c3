// Package engine is the origin's worker: it consumes the EVENTS stream one partition at a time,
// applies each event to its user's profile, evaluates the ruleset, and publishes a delta on
// DELTAS when the user's segments changed.
//
// Ordering and exactly-once: one goroutine owns each partition, so one user's events, expiries
// and re-evaluations never race. The store deduplicates event ids, so a redelivered event changes
// nothing; the engine still re-evaluates it and publishes a delta if the last one was lost. An
// event is acknowledged only after its delta is published, so a crash loses nothing.
//
// Batches: a worker takes every event already waiting for its partition (up to Config.Batch)
// and handles them together, with a fixed number of round trips however many events there are:
// one store pipeline applies them all in order, one reads the users' last memberships, one
// records due times, the deltas are published asynchronously and awaited together, one writes
// the new memberships, then every event is acknowledged. Events of one user in one batch are
// evaluated in order against the membership the previous one produced. A batch that fails is
// retried in place (the store's dedup makes re-applying harmless) with its messages, and every
// message waiting behind them, marked in progress, so a user's later events never overtake an
// earlier one during a store outage and nothing is redelivered meanwhile.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/trace"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/schedule"
	"github.com/segedge/segedge/origin/store"
)

// Rules is the active ruleset as the engine needs it.
type Rules interface {
	// Version is the ruleset version, carried on every delta.
	Version() uint64
	// Spec says what profiles must maintain for the ruleset's features.
	Spec() *profile.Spec
	// EdgeFeatures are the profile features that request-scoped rules read; their values travel
	// on deltas so the edge can evaluate those rules per request.
	EdgeFeatures() []profile.Feature
	// Segments appends to dst the names of the segments that need no request and that p is a
	// member of at now, sorted.
	Segments(ctx context.Context, p *profile.Profile, now time.Time, dst []string) ([]string, error)
}

// EventTypeFilter is implemented by Rules that know which event types can change what they
// read. After an event of a type it does not read, the engine does not evaluate the profile:
// no segment's inputs changed, so no membership, edge feature or due time can have changed
// (the ruleset is one WebAssembly call, so "only the segments whose inputs changed" is all of
// them or none). Rules that read values which change with time alone (since(), decayed
// scores) read every type: any evaluation may move those. A duplicate (redelivered) event is
// always evaluated: its first evaluation may not have been published.
type EventTypeFilter interface {
	ReadsEventType(typ string) bool
}

// Config wires an engine.
type Config struct {
	JS       jetstream.JetStream
	Topology bus.Topology
	Store    store.Store
	Members  members.Store
	Schedule schedule.Schedule
	// Rules returns the active ruleset; nil means none yet (profiles still update, no segments).
	Rules func() Rules
	// Partitions this engine may claim; nil means all. Which of them it consumes is decided by
	// the partition leases it shares with the other origins (lease.go).
	Partitions []int
	// OriginID names this process in the lease bucket (default DefaultOriginID(): unique per
	// process). Two running origins must never share one.
	OriginID string
	// LeaseTTL is how long a partition lease lives without renewal (default DefaultLeaseTTL):
	// the takeover time after a crash. The lease bucket keeps the TTL of the first origin that
	// created it.
	LeaseTTL time.Duration
	// ConsumerName prefixes the durable consumer names ("origin" → "origin-p0"...).
	ConsumerName string
	Registerer   prometheus.Registerer
	Log          *slog.Logger
	Now          func() time.Time
	// DuePoll is how often due re-evaluations are checked (default 100ms).
	DuePoll time.Duration
	// Retention is the profile store's: a profile expires that long after its last event. When
	// set, every evaluated user also gets a due time just after that, and a due user whose
	// profile has expired is forgotten as if erased (erase delta: edges drop their replica,
	// memberships and member counts go), so retention removes a user everywhere, not only
	// from the store. 0: expired profiles leave their memberships behind.
	Retention time.Duration
	// Triggers, if set, is told of every published delta before the event is acknowledged, so a
	// trigger fires at least once per membership change even across a crash.
	Triggers TriggerSink
	// Batch is the most events a partition worker handles at once (default 128).
	Batch int
	// AckWait is how long JetStream waits for an event's acknowledgement before redelivering it
	// (default 15s). It does not decide how soon a crashed origin's events come back (the next
	// holder recreates the consumer from its ack floor, see consumer), and the worker keeps
	// every message it holds in progress every AckWait/4 (inbox), so it only sets how often
	// that costs an InProgress publish per waiting message.
	AckWait time.Duration
	// MaxEventAttempts is how many deliveries of a message the store may refuse one of its
	// events (a per-event error, not an outage: an outage fails the whole batch, which is
	// retried in place) before the refused events go to EVENTS_DLQ and the message is
	// acknowledged (default 5). Without it such a message came back every second forever,
	// holding the consumer's ack floor and re-evaluating every other user in it.
	MaxEventAttempts int
	// Limits are the checks of POST /v1/events (default event.DefaultLimits), applied by the
	// workers to the events a backend publishes on EVENTS itself: no receiver checked those.
	Limits event.Limits
	// RecordCache is how many users' membership records each partition worker keeps in memory
	// (records.go; default DefaultRecordCache, negative: none): a cached record is not read
	// from the members store again while this origin holds the partition.
	RecordCache int
}

// TriggerSink receives published deltas (origin/trigger fires the rules file's triggers).
type TriggerSink interface {
	Fire(ctx context.Context, d *delta.Delta) error
}

// ThresholdSink is implemented by a TriggerSink that also fires threshold triggers (`on:
// <expression>`): the engine evaluates the expressions after each evaluation, remembers which
// held in the user's membership record, and fires those that turned from false to true after
// an event, once per crossing, with the delta that records the crossing.
type ThresholdSink interface {
	// ThresholdSpec is what profiles must maintain for the ruleset and the threshold
	// expressions together, or nil when no threshold trigger is set.
	ThresholdSpec() *profile.Spec
	// Thresholds appends to dst the names of the threshold triggers whose expression holds for
	// p at now, sorted.
	Thresholds(p *profile.Profile, now time.Time, dst []string) []string
	// FireThresholds publishes a firing of each named trigger, identified by d's user and version.
	FireThresholds(ctx context.Context, d *delta.Delta, names []string) error
}

// Engine runs the partition workers.
type Engine struct {
	cfg   Config
	m     *metrics
	lm    *leaseMetrics
	empty *profile.Spec
	// claims[p] is the partition's lease and worker while this origin holds it, else nil.
	claims []atomic.Pointer[claim]
	// edgeKeys are the wire keys of the last ruleset's edge features, built once per ruleset
	// instead of once per evaluation.
	edgeKeys atomic.Pointer[edgeKeys]
	leaseTTL atomic.Int64 // the lease bucket's TTL once open
	ready    atomic.Bool  // the first lease round is done
	running  atomic.Bool
	tail     deltaTail // what each partition knows of its deltas not yet recorded (publish.go)
	// recs[p] is partition p's worker's membership record cache (records.go); a new worker
	// starts a new one.
	recs []atomic.Pointer[recordCache]
}

// task is work for a partition worker that does not come from the stream.
type task struct {
	user  string
	cause delta.Cause
	done  chan error
}

// New checks cfg and registers the metrics.
func New(cfg Config) (*Engine, error) {
	if cfg.JS == nil || cfg.Store == nil || cfg.Members == nil || cfg.Schedule == nil || cfg.Rules == nil {
		return nil, errors.New("engine: JS, Store, Members, Schedule and Rules are required")
	}
	if cfg.Partitions == nil {
		for p := range cfg.Topology.Partitions {
			cfg.Partitions = append(cfg.Partitions, p)
		}
	}
	for _, p := range cfg.Partitions {
		if p < 0 || p >= cfg.Topology.Partitions {
			return nil, fmt.Errorf("engine: partition %d outside 0..%d", p, cfg.Topology.Partitions-1)
		}
	}
	if cfg.ConsumerName == "" {
		cfg.ConsumerName = "origin"
	}
	if cfg.OriginID == "" {
		cfg.OriginID = DefaultOriginID()
	}
	if err := CheckOriginID(cfg.OriginID); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DuePoll == 0 {
		cfg.DuePoll = 100 * time.Millisecond
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 128
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 15 * time.Second
	}
	if cfg.MaxEventAttempts <= 0 {
		cfg.MaxEventAttempts = 5
	}
	if cfg.RecordCache == 0 {
		cfg.RecordCache = DefaultRecordCache
	}
	empty, err := profile.NewSpec(nil, nil)
	if err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, m: newMetrics(cfg.Registerer), lm: newLeaseMetrics(cfg.Registerer), empty: empty,
		claims: make([]atomic.Pointer[claim], cfg.Topology.Partitions),
		recs:   make([]atomic.Pointer[recordCache], cfg.Topology.Partitions)}
	e.leaseTTL.Store(int64(cfg.LeaseTTL))
	return e, nil
}

// Run takes this origin's share of the partitions (partition leases, see lease.go) and consumes
// them until ctx is done; then it stops the workers and releases the leases, so that the other
// origins take the partitions at once. Ready says when the first share is taken.
func (e *Engine) Run(ctx context.Context) error {
	e.running.Store(true)
	defer e.running.Store(false)
	l, err := e.openLeases(ctx)
	if err != nil {
		return nil // ctx ended before the bucket could be opened
	}
	go e.watchLag(ctx)
	l.run(ctx)
	return nil
}

// Reevaluate asks the user's partition worker to re-evaluate the user now (a new ruleset, an
// admin request) and waits for it. The worker runs in whichever origin holds the partition's
// lease: this one, or another one asked over NATS (Topology.TaskSubject). While the partition
// changes hands the request is repeated; after two lease TTLs without a holder it fails with
// ErrNoHolder.
func (e *Engine) Reevaluate(ctx context.Context, user string, cause delta.Cause) error {
	p := event.Partition(user, e.cfg.Topology.Partitions)
	giveUp := time.Now().Add(2 * time.Duration(e.leaseTTL.Load()))
	backoff := 10 * time.Millisecond
	for {
		var err error
		if c := e.claims[p].Load(); c != nil {
			err = submit(ctx, c, task{user: user, cause: cause, done: make(chan error, 1)})
		} else {
			err = e.askHolder(ctx, p, user, cause)
		}
		if !errors.Is(err, errNotHeld) {
			return err
		}
		if time.Now().After(giveUp) {
			return fmt.Errorf("partition %d: %w", p, ErrNoHolder)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

// consumer creates partition p's durable consumer afresh, starting right after its ack floor
// (the last event acknowledged with every earlier one). A new lease holder calls it before it
// applies anything: deleting the consumer takes back every message the previous holder had
// fetched but not acknowledged, and pull requests a dead process left behind, so they are
// delivered again now, in stream order, rather than after AckWait behind the user's later
// events. Events past the floor that were already applied are recognised by id in the store.
func (e *Engine) consumer(ctx context.Context, p int) (jetstream.Consumer, error) {
	name := e.cfg.ConsumerName + "-p" + strconv.Itoa(p)
	stream := e.cfg.Topology.EventsStream()
	cfg := jetstream.ConsumerConfig{
		Durable:       name,
		FilterSubject: e.cfg.Topology.EventSubject(p),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       e.cfg.AckWait,
		MaxAckPending: inboxMax,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	old, err := e.cfg.JS.Consumer(ctx, stream, name)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	case err != nil:
		return nil, fmt.Errorf("read consumer %s: %w", name, err)
	default:
		if floor := old.CachedInfo().AckFloor.Stream; floor > 0 {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, floor+1
		}
		if err := e.cfg.JS.DeleteConsumer(ctx, stream, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, fmt.Errorf("delete consumer %s: %w", name, err)
		}
	}
	c, err := e.cfg.JS.CreateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("create consumer %s: %w", name, err)
	}
	return c, nil
}

// runPartition is partition p's worker while this origin holds c, p's lease: it applies the
// partition's events, its due re-evaluations and the tasks routed to it, until ctx ends (lease
// released, lost, or not renewed in time). It returns only once nothing more is applied.
func (e *Engine) runPartition(ctx context.Context, p int, c *claim) error {
	e.forgetDeltaTail(p)                                          // another origin may have published on p since this one last held it
	e.recs[p].Store(newRecordCache(e.cfg.RecordCache, e.cfg.Now)) // ... and written its users' records
	var cons jetstream.Consumer
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		cn, err := e.consumer(cctx, p)
		cancel()
		if err == nil {
			cons = cn
			break
		}
		e.cfg.Log.Warn("create consumer", "partition", p, "err", err)
		if !e.serveTasksFor(ctx, p, c, time.Second) {
			return nil
		}
	}
	// The consume callback runs on one goroutine per consumer, in stream order; the inbox
	// hands the messages to this worker, which takes whatever has arrived as one batch, and
	// keeps every message it holds in progress however long the worker is busy.
	in := newInbox()
	cc, err := cons.Consume(func(m jetstream.Msg) { in.put(ctx, m) }, jetstream.PullMaxMessages(2*e.cfg.Batch), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if !errors.Is(err, jetstream.ErrNoHeartbeat) {
			e.cfg.Log.Warn("fetch events", "partition", p, "err", err)
		}
	}))
	if err != nil {
		return fmt.Errorf("consume partition %d: %w", p, err)
	}
	defer cc.Stop()
	if sub, err := e.serveTasks(p, c); err != nil {
		e.cfg.Log.Warn("take tasks from other origins", "partition", p, "err", err)
	} else {
		defer func() { _ = sub.Unsubscribe() }()
	}
	kctx, stopKeeping := context.WithCancel(ctx)
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		in.keepInProgress(kctx, e.cfg.AckWait/4)
	}()
	defer func() { stopKeeping(); <-kept }() // no InProgress once the worker is gone
	tick := time.NewTicker(e.cfg.DuePoll)
	defer tick.Stop()
	msgs := make([]jetstream.Msg, 0, e.cfg.Batch)
	lastDue := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-in.wake:
			if ctx.Err() != nil {
				return nil // the lease ended: apply nothing more
			}
			if msgs = in.take(msgs, e.cfg.Batch); len(msgs) > 0 {
				e.handleBatch(ctx, p, msgs)
				clear(msgs)
				in.done()
			}
		case t := <-c.tasks:
			e.runTask(ctx, p, t)
		case <-tick.C:
		}
		if ctx.Err() != nil {
			return nil
		}
		// A tenth of slack: lastDue is when this loop woke, a little after its tick, and a tick
		// that wakes it sooner must not be skipped (that made the poll every 2 DuePoll).
		if now := e.cfg.Now(); now.Sub(lastDue) >= e.cfg.DuePoll-e.cfg.DuePoll/10 {
			lastDue = now
			e.runDue(ctx, p, now)
		}
		e.runTasks(ctx, p, c)
	}
}

// inboxMax bounds the messages a partition worker holds (waiting or in its current batch). It
// is also the consumer's MaxAckPending, all JetStream delivers unacknowledged, so the Consume
// callback never waits while more could come, and every message outstanding is one the worker
// holds and keeps in progress. It is small on purpose: a worker that falls behind leaves the
// backlog in the stream, where it costs nothing, rather than in memory, where keeping it in
// progress would cost an InProgress publish per message every AckWait/4. 512 messages are 10
// worker batches, plenty to keep the worker busy between acknowledgements. inboxMaxBytes bounds
// their data (a message may be up to 256 KiB): past it the callback waits, and the messages
// behind it in the client's buffer (one pull, 2×Batch at most) are the only ones not kept in
// progress.
const (
	inboxMax      = 512
	inboxMaxBytes = 16 << 20
)

// inbox holds the messages JetStream delivered to a partition worker that it has not finished
// (acknowledged, NAKed or terminated): its current batch and those waiting behind it. The
// Consume callback puts them in, the worker takes a batch and says when it is done with it, and
// keepInProgress marks every message held for a while in progress, so that JetStream does not
// redeliver it however long the worker is stuck: a batch retried in place through a store
// outage, a batch of many chunks, a record the members store refuses. Before, only the current
// batch was kept: the messages waiting behind it in a channel (and the callback blocked on it)
// came back after AckWait, as duplicate work and as deliveries that counted towards
// dead-lettering an event on its first real refusal.
//
// The worker's hot path takes one lock per message and per batch, allocates nothing once the
// slice has grown, and holds the lock across no I/O.
type inbox struct {
	mu sync.Mutex
	// msgs[head:head+busy] are the current batch's, msgs[head+busy:] wait; bytes is their data.
	msgs       []jetstream.Msg
	head, busy int
	bytes      int
	// added and finished count the messages ever put and ever finished: msgs[head] is number
	// finished. marked is what added was at keepInProgress's previous round.
	added, finished, marked uint64
	wake                    chan struct{} // a message waits (one token)
	room                    chan struct{} // messages were finished (one token): a full inbox has room
}

func newInbox() *inbox {
	return &inbox{wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

// put adds m, waking the worker. It waits (m held, so kept in progress) while the inbox is full,
// until the worker finishes a batch or ctx ends.
func (q *inbox) put(ctx context.Context, m jetstream.Msg) {
	q.mu.Lock()
	q.msgs = append(q.msgs, m)
	q.added++
	q.bytes += len(m.Data())
	full := q.fullLocked()
	q.mu.Unlock()
	signal(q.wake)
	for full {
		select {
		case <-q.room:
		case <-ctx.Done():
			return
		}
		q.mu.Lock()
		full = q.fullLocked()
		q.mu.Unlock()
	}
}

func (q *inbox) fullLocked() bool {
	return len(q.msgs)-q.head > inboxMax || q.bytes > inboxMaxBytes
}

// take copies up to n waiting messages, in order, into dst[:0] as the worker's current batch.
// The worker must call done before it takes the next one.
func (q *inbox) take(dst []jetstream.Msg, n int) []jetstream.Msg {
	q.mu.Lock()
	waiting := q.msgs[q.head+q.busy:]
	k := min(n, len(waiting))
	dst = append(dst[:0], waiting[:k]...)
	q.busy += k
	more := k < len(waiting)
	q.mu.Unlock()
	if more {
		signal(q.wake) // the rest make the next batch
	}
	return dst
}

// done drops the current batch: its messages are finished.
func (q *inbox) done() {
	q.mu.Lock()
	for _, m := range q.msgs[q.head : q.head+q.busy] {
		q.bytes -= len(m.Data())
	}
	clear(q.msgs[q.head : q.head+q.busy])
	q.head += q.busy
	q.finished += uint64(q.busy)
	q.busy = 0
	if q.head*2 >= len(q.msgs) { // move the rest to the front: amortised, no allocation
		n := copy(q.msgs, q.msgs[q.head:])
		clear(q.msgs[n:])
		q.msgs, q.head = q.msgs[:n], 0
	}
	q.mu.Unlock()
	signal(q.room)
}

// keepInProgress marks the messages held since its previous round in progress, every period
// until ctx ends: a message is marked within two periods of its arrival and every period after,
// and a message handled at once is never marked. With period AckWait/4 none waits half an
// AckWait unmarked. A message finished meanwhile is skipped by the client (no I/O).
func (q *inbox) keepInProgress(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	var held []jetstream.Msg
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		held = q.heldSinceLastRound(held)
		for _, m := range held {
			_ = m.InProgress()
		}
		clear(held)
	}
}

// heldSinceLastRound copies into dst[:0] the messages that were held at the previous round and
// still are, and starts a new round.
func (q *inbox) heldSinceLastRound(dst []jetstream.Msg) []jetstream.Msg {
	q.mu.Lock()
	defer q.mu.Unlock()
	dst = dst[:0]
	if q.marked > q.finished {
		dst = append(dst, q.msgs[q.head:q.head+int(q.marked-q.finished)]...)
	}
	q.marked = q.added
	return dst
}

// signal puts a token in ch unless one is there.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// serveTasksFor runs the tasks routed to partition p (re-evaluations, erasures) for d, or until
// ctx ends (then it reports false): a worker that cannot create its consumer yet still holds
// the lease, and a Reevaluate sent to it must not wait for the consumer.
func (e *Engine) serveTasksFor(ctx context.Context, p int, c *claim, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case t := <-c.tasks:
			e.runTask(ctx, p, t)
		case <-timer.C:
			return true
		}
	}
}

func (e *Engine) runTasks(ctx context.Context, p int, c *claim) {
	for range 64 {
		select {
		case t := <-c.tasks:
			e.runTask(ctx, p, t)
		default:
			return
		}
	}
}

func (e *Engine) runTask(ctx context.Context, p int, t task) {
	var err error
	if ctx.Err() == nil {
		if t.cause == delta.CauseErase {
			err = e.erase(ctx, p, t.user)
		} else {
			err = e.evaluate(ctx, p, t.user, t.cause, 0, 0)
		}
	}
	if ctx.Err() != nil {
		// The lease ended before or during the task: the next holder runs it (again; both
		// tasks are idempotent).
		err = errNotHeld
	}
	t.done <- err
}

func (e *Engine) runDue(ctx context.Context, p int, now time.Time) {
	taken, err := e.cfg.Schedule.Due(ctx, p, now, 256)
	if err != nil {
		e.cfg.Log.Warn("read due re-evaluations", "partition", p, "err", err)
		return
	}
	cache := e.recs[p].Load()
	done := make([]string, 0, len(taken))
	for _, t := range taken {
		u := t.User
		cache.forgetDue(u) // Due took it off the schedule
		// The delta carries the time it was due, so the expiry lateness includes the wait
		// for this poll (it was the poll's time, which left that wait out).
		if err := e.evaluate(ctx, p, u, delta.CauseExpiry, 0, t.At.UnixMilli()); err != nil {
			if ctx.Err() != nil {
				break // the lease ended: the take runs out and the next holder re-evaluates
			}
			e.cfg.Log.Warn("re-evaluate at due time; retrying in 1s", "partition", p, "err", err)
			if err := e.cfg.Schedule.At(ctx, p, u, now.Add(time.Second)); err != nil {
				continue // not rescheduled: the take runs out and Due returns the user again
			}
		}
		done = append(done, u)
	}
	// The exits are published and recorded (or rescheduled): the takes are done. One that is
	// not (Redis failed here) runs out after schedule.Lease and the user is re-evaluated once
	// more, which changes nothing.
	if err := e.cfg.Schedule.Done(ctx, p, done...); err != nil && ctx.Err() == nil {
		e.cfg.Log.Warn("mark due re-evaluations done; they come back after the take runs out", "partition", p, "users", len(done), "err", err)
	}
}

// handleBatch applies a batch of messages and publishes the resulting deltas, retrying until
// it is done or ctx ends (the messages are then redelivered to whoever consumes next).
//
// A message carries one or more events (event.DecodeMessage); the events of all messages are
// applied in order in chunks of at most Config.Batch events, and a message is acknowledged once
// the chunk holding its last event is done: acked when all its events were applied, NAKed (to
// be redelivered whole; the store's dedup skips the events already applied) when one was not.
// A message that cannot be read is terminated and counted as poison.
func (e *Engine) handleBatch(ctx context.Context, p int, msgs []jetstream.Msg) {
	var (
		evs      = make([]event.Event, 0, len(msgs))
		accepted = make([]time.Time, 0, len(msgs))
		ctxs     = make([]context.Context, 0, len(msgs)) // per event: its message's trace
		owner    = make([]int, 0, len(msgs))             // per event: its message's index in keep
		keep     = make([]jetstream.Msg, 0, len(msgs))
		last     = make([]int, 0, len(msgs)) // per kept message: the index of its last event
		spans    = make([]oteltrace.Span, 0, len(msgs))
	)
	for _, m := range msgs {
		ectx, span := traceEvent(ctx, p, m)
		var err error
		n0 := len(evs)
		evs, accepted, err = event.DecodeMessage(m.Data(), evs, accepted)
		if err != nil {
			// A message we cannot read never becomes readable: count it and move on.
			e.m.poison.Inc()
			e.cfg.Log.Error("unreadable event message dropped", "partition", p, "err", err)
			_ = m.Term()
			trace.End(span, err)
			continue
		}
		if stored, direct := stampDirect(m, evs[n0:], accepted[n0:]); direct {
			kept, _, ok := e.checkDirect(ctx, p, m, evs[n0:], accepted[n0:], stored)
			evs, accepted = evs[:n0+len(kept)], accepted[:n0+len(kept)] // kept: a prefix of evs[n0:]
			if ok && len(kept) == 0 {
				_ = m.Ack() // every event went to EVENTS_DLQ
			}
			if !ok || len(kept) == 0 {
				trace.End(span, nil)
				continue
			}
		}
		for range len(evs) - n0 {
			ctxs = append(ctxs, ectx)
			owner = append(owner, len(keep))
		}
		keep = append(keep, m)
		last = append(last, len(evs)-1)
		spans = append(spans, span)
	}
	var err error
	defer func() {
		for _, span := range spans {
			trace.End(span, err)
		}
	}()
	refused := make([]error, len(evs)) // per event: the store's refusal, if any
	failed := make([]bool, len(keep))
	// Many big messages take several chunks: the worker's inbox keeps those not done yet in
	// progress meanwhile (inbox.keepInProgress), so JetStream does not redeliver them.
	for lo := 0; lo < len(evs); {
		hi := min(lo+e.cfg.Batch, len(evs))
		var bad []error
		if bad, err = e.applyChunk(ctx, p, keep[owner[lo]:], evs[lo:hi], accepted[lo:hi], ctxs[lo:hi]); err != nil {
			return // ctx ended: the unacknowledged messages come back
		}
		for i, b := range bad {
			if b != nil {
				refused[lo+i] = b
				failed[owner[lo+i]] = true
			}
		}
		for mi := owner[lo]; mi < len(keep) && last[mi] < hi; mi++ {
			switch {
			case !failed[mi]:
				_ = keep[mi].Ack()
			case e.lastAttempt(keep[mi]):
				first := 0
				if mi > 0 {
					first = last[mi-1] + 1
				}
				e.deadLetter(ctx, p, keep[mi], evs[first:last[mi]+1], accepted[first:last[mi]+1], refused[first:last[mi]+1])
			default:
				_ = keep[mi].NakWithDelay(time.Second)
			}
		}
		lo = hi
	}
}

// stampDirect gives the events of a message a backend published on EVENTS itself (see
// docs/architecture.md, "The EVENTS message") what the origin's ingest would have: the time
// JetStream stored the message as their acceptance time when they carry none, and as their ts
// when they carry none ("ts optional: server time"). Without it such an event counted at
// 1970-01-01, outside every window, and its ingest→profile latency was 56 years. Messages of
// the origin's ingest carry both, so the metadata is only read for the others. direct reports
// that some event carried no acceptance time: no receiver's ingest wrote the message (they
// stamp every event), so no one checked its events (checkDirect); stored is then when
// JetStream stored it.
func stampDirect(m jetstream.Msg, evs []event.Event, accepted []time.Time) (stored time.Time, direct bool) {
	for i := range evs {
		if accepted[i].UnixNano() != 0 && evs[i].TS.UnixMilli() != 0 {
			continue
		}
		if stored.IsZero() {
			md, err := m.Metadata()
			if err != nil {
				return time.Time{}, false // not a JetStream message (tests): leave them as they are
			}
			stored = md.Timestamp.UTC()
		}
		if accepted[i].UnixNano() == 0 {
			accepted[i] = stored
			direct = true
		}
		if evs[i].TS.UnixMilli() == 0 {
			evs[i].TS = stored.Truncate(time.Millisecond)
		}
	}
	return stored, direct
}

// applyChunk applies one chunk of events, retrying in place until it is done or ctx ends; it
// returns, per event, the store's refusal or nil (a refused event's message is redelivered, and
// dead-lettered at the last attempt). pending are the messages not yet acknowledged, kept in
// progress while a retry waits.
func (e *Engine) applyChunk(ctx context.Context, p int, pending []jetstream.Msg, evs []event.Event, accepted []time.Time, ctxs []context.Context) ([]error, error) {
	e.m.batchSize.Observe(float64(len(evs)))
	keep := func() {
		for _, m := range pending {
			_ = m.InProgress()
		}
	}
	backoff := time.Duration(0)
	for attempt := 1; ; attempt++ {
		bad, err := e.applyBatch(ctx, p, evs, accepted, ctxs, keep)
		if err == nil {
			return bad, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		e.cfg.Log.Warn("events not applied; retrying", "partition", p, "events", len(evs), "attempt", attempt, "err", err)
		keep() // the messages stay ours while we retry: no redelivery overtakes them
		backoff = min(max(2*backoff, 100*time.Millisecond), e.cfg.AckWait/2)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
	}
}

// applyBatch applies evs in one store call, evaluates each resulting profile in order and
// publishes the deltas. It returns, per event, the store's refusal or nil (to redeliver its
// message); an error means: nothing is to be acknowledged, retry the whole batch.
// ctxs are the events' trace contexts; keep keeps their messages in progress.
func (e *Engine) applyBatch(ctx context.Context, p int, evs []event.Event, accepted []time.Time, ctxs []context.Context, keep func()) ([]error, error) {
	b := e.newBatch(p)
	b.keep = keep
	t0 := time.Now()
	var applySpans []oteltrace.Span
	if trace.Enabled() {
		for _, c := range ctxs {
			_, span := trace.Start(c, tracerName, "profile.apply", oteltrace.SpanKindClient)
			applySpans = append(applySpans, span)
		}
	}
	res, err := e.cfg.Store.ApplyBatch(ctx, evs, b.spec)
	if err != nil {
		for _, span := range applySpans {
			traceApplied(span, false, err)
		}
		e.m.applyErrors.Add(float64(len(evs)))
		return nil, fmt.Errorf("apply %d events: %w", len(evs), err)
	}
	for i, span := range applySpans {
		traceApplied(span, res[i].Applied, res[i].Err)
	}
	per := time.Since(t0).Seconds() / float64(len(evs))
	users := make([]string, 0, len(res))
	for i, r := range res {
		if r.Err != nil {
			e.m.applyErrors.Inc()
			e.cfg.Log.Warn("event not applied; will be redelivered", "partition", p, "err", r.Err)
			continue
		}
		if r.Applied {
			e.m.applied.Inc()
			e.m.ingestToProfile.Observe(time.Since(accepted[i]).Seconds())
		} else {
			e.m.duplicates.Inc()
		}
		e.m.applyDur.Observe(per)
		if b.skips(r, evs[i].Type) {
			continue
		}
		users = append(users, r.Profile.UserID)
	}
	if err := e.loadMembers(ctx, b, users); err != nil {
		return nil, err
	}
	for i, r := range res {
		if r.Err != nil {
			continue
		}
		if b.skips(r, evs[i].Type) {
			e.m.notEvaluated.Inc()
			continue
		}
		if err := e.evaluateProfile(ctxs[i], b, r.Profile, delta.CauseEvent, accepted[i].UnixMilli(), 0); err != nil {
			return nil, err
		}
	}
	if err := e.flush(ctx, b); err != nil {
		return nil, err
	}
	bad := make([]error, len(res))
	for i, r := range res {
		bad[i] = r.Err
	}
	return bad, nil
}

// batch collects what evaluating a batch of profiles produced, to write it with a fixed number
// of round trips (flush).
type batch struct {
	p     int
	rules Rules
	spec  *profile.Spec
	th    ThresholdSink // nil: no threshold triggers
	// filter tells the event types the ruleset reads; nil: it reads them all.
	filter EventTypeFilter
	// recs are the users' membership records as this batch leaves them; dirty lists the users
	// whose record must be written, in the order they changed.
	recs  map[string]members.Record
	dirty []string
	due   map[string]time.Time
	// deltas to publish, in order; fire are those whose membership changed, crossed the
	// threshold triggers each delta fires.
	deltas          []*delta.Delta
	ctxs            []context.Context // the trace context of each delta's cause
	fire            []*delta.Delta
	crossed         map[*delta.Delta][]string
	entered, exited []string
	// cache is the worker's record cache (nil: none); keep, if set, keeps the batch's messages
	// in progress while flush retries writing the records.
	cache *recordCache
	keep  func()
	// edge are the ruleset's edge features and their wire keys.
	edge *edgeKeys
}

// edgeKeys are a ruleset's edge features and their wire keys (delta.FeatureKey).
type edgeKeys struct {
	features []profile.Feature
	keys     []string
}

// edgeKeysOf returns the edge features of rules with their keys, built again only when the
// features differ from the last ruleset's.
func (e *Engine) edgeKeysOf(rules Rules) *edgeKeys {
	fs := rules.EdgeFeatures()
	if k := e.edgeKeys.Load(); k != nil && slices.Equal(k.features, fs) {
		return k
	}
	k := &edgeKeys{features: fs}
	for _, f := range k.features {
		k.keys = append(k.keys, delta.FeatureKey(f))
	}
	e.edgeKeys.Store(k)
	return k
}

// skips says whether the profile an event left (r) needs no evaluation: the event was applied
// (not a duplicate) and is of a type the ruleset does not read (EventTypeFilter). With
// threshold triggers set, every event is evaluated (their expressions may read anything).
func (b *batch) skips(r store.Result, typ string) bool {
	return r.Applied && b.filter != nil && b.th == nil && !b.filter.ReadsEventType(typ)
}

// newBatch snapshots the active ruleset (and threshold triggers) for one batch.
func (e *Engine) newBatch(p int) *batch {
	b := &batch{p: p, rules: e.cfg.Rules(), spec: e.empty, recs: map[string]members.Record{}, cache: e.recs[p].Load()}
	if b.rules == nil {
		return b
	}
	b.spec = b.rules.Spec()
	b.filter, _ = b.rules.(EventTypeFilter)
	b.edge = e.edgeKeysOf(b.rules)
	if th, ok := e.cfg.Triggers.(ThresholdSink); ok {
		if spec := th.ThresholdSpec(); spec != nil {
			b.th, b.spec = th, spec
		}
	}
	return b
}

// evaluate re-evaluates one user and publishes a delta if their membership changed (or, for an
// event, if request-scoped rules may read changed features).
func (e *Engine) evaluate(ctx context.Context, p int, user string, cause delta.Cause, acceptedAt, due int64) error {
	prof, err := e.cfg.Store.Get(ctx, user)
	if errors.Is(err, store.ErrNotFound) {
		if cause == delta.CauseExpiry && e.cfg.Retention > 0 {
			return e.forgetExpired(ctx, p, user)
		}
		return nil // erased or expired meanwhile
	}
	if err != nil {
		return fmt.Errorf("read profile: %w", err)
	}
	b := e.newBatch(p)
	if err := e.loadMembers(ctx, b, []string{user}); err != nil {
		return err
	}
	if err := e.evaluateProfile(ctx, b, prof, cause, acceptedAt, due); err != nil {
		return err
	}
	return e.flush(ctx, b)
}

// loadMembers fills b.recs for users (deduplicated) from the worker's record cache, reading
// the others from the members store with one round trip when it batches.
func (e *Engine) loadMembers(ctx context.Context, b *batch, users []string) error {
	if b.rules == nil || len(users) == 0 {
		return nil
	}
	slices.Sort(users)
	users = slices.Compact(users)
	miss := users[:0]
	for _, u := range users {
		if r, ok := b.cache.get(u); ok {
			b.recs[u] = r
			continue
		}
		miss = append(miss, u)
	}
	rs, err := e.readRecords(ctx, miss)
	if err != nil {
		return err
	}
	for i, u := range miss {
		b.recs[u] = rs[i]
		b.cache.put(u, rs[i])
	}
	return nil
}

// readRecords reads users' membership records from the members store, with one round trip
// when it batches.
func (e *Engine) readRecords(ctx context.Context, users []string) ([]members.Record, error) {
	if len(users) == 0 {
		return nil, nil
	}
	if mb, ok := e.cfg.Members.(members.Batcher); ok {
		return mb.GetMany(ctx, users)
	}
	rs := make([]members.Record, len(users))
	for i, u := range users {
		r, err := e.cfg.Members.Get(ctx, u)
		if err != nil {
			return nil, err
		}
		rs[i] = r
	}
	return rs, nil
}

// evaluateProfile evaluates prof against the batch's ruleset and records in b the delta to
// publish, if any; flush writes it.
func (e *Engine) evaluateProfile(ctx context.Context, b *batch, prof *profile.Profile, cause delta.Cause, acceptedAt, due int64) error {
	rules := b.rules
	if rules == nil {
		return nil // no ruleset yet: profiles update, memberships stay as last published
	}
	user := prof.UserID
	now := e.cfg.Now()
	version := rules.Version()
	_, espan := trace.Start(ctx, tracerName, "ruleset.evaluate", oteltrace.SpanKindInternal)
	segs, err := rules.Segments(ctx, prof, now, nil)
	traceEvaluated(espan, version, len(segs), err)
	if err != nil {
		e.m.evalErrors.Inc()
		return fmt.Errorf("evaluate ruleset %d: %w", version, err)
	}
	next, ok := prof.NextExpiry(b.spec, now)
	if forget, on := e.forgetAt(now); on && (!ok || forget.Before(next)) {
		next, ok = forget, true
	}
	if ok {
		if cur, ok := b.due[user]; !ok || next.Before(cur) {
			if b.due == nil {
				b.due = map[string]time.Time{}
			}
			b.due[user] = next
		}
	}
	prev, ok := b.recs[user]
	if !ok {
		return errors.New("evaluate: the user's membership record was not loaded") // a bug: loadMembers first
	}
	var thr []string
	if b.th != nil {
		thr = b.th.Thresholds(prof, now, nil)
	}
	// Threshold triggers fire on a crossing after an event. A condition that turns true by time
	// or by a new ruleset (a rescan of every profile) is recorded without firing: activating a
	// ruleset must not fire for every user already above a threshold.
	var crossed []string
	if cause == delta.CauseEvent {
		crossed, _ = diff(prev.Thresholds, thr)
	}
	thrChanged := !slices.Equal(prev.Thresholds, thr)
	entered, exited := diff(prev.Members, segs)
	changed := len(entered) > 0 || len(exited) > 0
	feats := b.edge.values(prof, now)
	send, gone, partial, same := diffFeatures(prev, feats, cause == delta.CauseEvent)
	// Quiet: every edge already knows all this, or there is nothing any edge needs to know.
	quiet := !changed && len(crossed) == 0 && same && (prev.Version > 0 || len(segs) == 0)
	if quiet {
		if thrChanged { // a threshold turned false: remember it, nothing to publish
			prev.Thresholds = thr
			b.put(user, prev)
		}
		return nil
	}
	d := &delta.Delta{
		UserID: user, Version: prev.Version + 1, Ruleset: version, Cause: cause,
		Members: segs, Entered: entered, Exited: exited, AcceptedAt: acceptedAt, Due: due,
	}
	if d.Members == nil {
		d.Members = []string{}
	}
	if partial && d.Version%wholeEvery == 0 {
		send, gone, partial = feats, nil, false
	}
	d.Features, d.Gone = send, gone
	if partial {
		d.Base = prev.Version
	}
	b.deltas = append(b.deltas, d)
	b.ctxs = append(b.ctxs, ctx)
	if changed {
		b.fire = append(b.fire, d)
		b.entered = append(b.entered, entered...)
		b.exited = append(b.exited, exited...)
	}
	if len(crossed) > 0 {
		if b.crossed == nil {
			b.crossed = map[*delta.Delta][]string{}
		}
		b.crossed[d] = crossed
	}
	b.put(user, members.Record{Version: d.Version, Members: segs, Thresholds: thr, Features: feats, FeaturesKnown: true})
	return nil
}

// wholeEvery: every wholeEvery-th version of a user carries all the edge features, even when
// the one before it is known. It bounds how long an edge can hold a wrong value in the cases
// the diff cannot see: the same version computed twice with different values (publish.go's
// "Left" case, two origins overlapping), or an edge that missed a delta while its origin look-up
// failed.
const wholeEvery = 16

// values returns the values of the edge features that prof has at now.
func (k *edgeKeys) values(prof *profile.Profile, now time.Time) []delta.FeatureValue {
	if k == nil || len(k.features) == 0 {
		return nil
	}
	out := make([]delta.FeatureValue, 0, len(k.features))
	for i, f := range k.features {
		if v, ok := prof.Value(f, now); ok {
			out = append(out, delta.FeatureValue{Key: k.keys[i], Value: v})
		}
	}
	return out
}

// diffFeatures returns what the user's next delta carries of the edge features' values cur, and
// whether an edge that followed the user's deltas already holds exactly cur (same). When those
// edges hold prev.Features (prev.FeaturesKnown), the delta is partial: the values that differ,
// and the keys that no longer have one. Otherwise it carries all of cur: a user's first delta,
// the first after an erasure, and the first after a delta that may differ from what DELTAS holds.
// A delta with no features at all is whole too (it says "none" as briefly).
//
// since() and a decayed score() change with time alone: an edge holds them as of the user's last
// delta. Only an event makes their new values worth a delta (it resets or raises them); an
// expiry or a new ruleset that changes nothing else leaves them as the edges hold them (same),
// else every rescan would publish a delta for every user.
func diffFeatures(prev members.Record, cur []delta.FeatureValue, event bool) (send []delta.FeatureValue, gone []string, partial, same bool) {
	if prev.Version == 0 || !prev.FeaturesKnown {
		// Edges hold no features of a new user; of a known user whose features are not, they
		// may hold anything: one whole delta, even of no features, says what they are.
		return cur, nil, false, prev.Version == 0 && len(cur) == 0
	}
	same = true
	for _, f := range cur {
		i := featureIndex(prev.Features, f.Key)
		if i >= 0 && prev.Features[i].Value == f.Value {
			continue
		}
		send = append(send, f)
		if event || i < 0 || !changesWithTime(f.Key) {
			same = false
		}
	}
	for _, f := range prev.Features {
		if featureIndex(cur, f.Key) < 0 {
			gone = append(gone, f.Key)
		}
	}
	same = same && len(gone) == 0
	if len(cur) == 0 || len(send) == len(cur) && len(gone) == 0 {
		// Every value changed (or there are none): a whole delta says the same as briefly, and
		// an edge that missed the one before needs nothing else.
		return send, nil, false, same
	}
	return send, gone, true, same
}

// changesWithTime reports whether the feature of wire key k changes with time alone.
func changesWithTime(k string) bool {
	return strings.HasPrefix(k, "since:") || strings.HasPrefix(k, "score:")
}

// featureIndex returns the index of key in fs, or -1; a ruleset has a handful of edge features.
func featureIndex(fs []delta.FeatureValue, key string) int {
	for i := range fs {
		if fs[i].Key == key {
			return i
		}
	}
	return -1
}

func (b *batch) put(user string, r members.Record) {
	if !slices.Contains(b.dirty, user) {
		b.dirty = append(b.dirty, user)
	}
	b.recs[user] = r
}

// flush publishes the deltas a batch produced (asynchronously, all awaited), then records the
// rest: due times, triggers, the membership records, segment counts. Until the records are
// written, the store's records are as before the batch, so a batch that fails before its deltas
// are out is simply retried (a redelivery produces the same versions again; publishAll leaves
// out the deltas already on DELTAS, JetStream drops the firings by id). Once the deltas are
// out, the records are retried in place until written or ctx ends (record): else the user's
// next delta, of an event or an expiry handled meanwhile, would start from the old record, reuse
// a published version and be left out as already on DELTAS. Due times are written after the
// deltas too, off the path from event to delta: a crash in between leaves the event
// unacknowledged, and its redelivery writes them.
func (e *Engine) flush(ctx context.Context, b *batch) error {
	left, err := e.publishAll(ctx, b.p, b.deltas, b.ctxs)
	if err != nil {
		return err
	}
	for _, d := range left {
		// The edges hold DELTAS's computation of this version, not necessarily these features:
		// the user's next delta carries them all.
		if r, ok := b.recs[d.UserID]; ok && r.Version == d.Version {
			r.Features, r.FeaturesKnown = nil, false
			b.recs[d.UserID] = r
		}
	}
	return e.record(ctx, b)
}

// record writes what a batch leaves to record after its deltas are published, retrying until
// it is written or ctx ends (the lease ended: the next holder reads the partition's last
// deltas back, see deltaTail).
func (e *Engine) record(ctx context.Context, b *batch) error {
	backoff := time.Duration(0)
	for attempt := 1; ; attempt++ {
		err := e.recordOnce(ctx, b)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return err
		}
		e.cfg.Log.Warn("deltas published but not recorded; retrying", "partition", b.p, "deltas", len(b.deltas), "attempt", attempt, "err", err)
		if b.keep != nil {
			b.keep()
		}
		backoff = min(max(2*backoff, 100*time.Millisecond), e.cfg.AckWait/2)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
	}
	if len(b.entered)+len(b.exited) > 0 {
		if err := e.cfg.Members.Count(ctx, b.entered, b.exited); err != nil {
			e.cfg.Log.Warn("segment member counts", "err", err) // counts are advisory
		}
	}
	for _, u := range b.dirty {
		b.cache.put(u, b.recs[u])
	}
	if len(b.deltas) > 0 {
		e.tail.recorded(b.p, b.deltas) // what publishAll published is recorded
	}
	return nil
}

// recordOnce writes the due times, fires the triggers and writes the membership records once.
// Every step may be repeated: a due time keeps the earliest, firings are deduplicated by id, a
// record is overwritten with the same value.
func (e *Engine) recordOnce(ctx context.Context, b *batch) (err error) {
	// The due times go to the schedule while the records go to the members store: two round
	// trips at once instead of one after the other.
	dueErr := make(chan error, 1)
	go func() { dueErr <- e.writeDue(ctx, b) }()
	defer func() {
		if derr := <-dueErr; derr != nil && err == nil {
			err = fmt.Errorf("record due times: %w", derr)
		}
	}()
	if e.cfg.Triggers != nil {
		for _, d := range b.fire {
			if err := e.cfg.Triggers.Fire(ctx, d); err != nil {
				return fmt.Errorf("fire triggers: %w", err)
			}
		}
	}
	if b.th != nil {
		for _, d := range b.deltas {
			if names := b.crossed[d]; len(names) > 0 {
				if err := b.th.FireThresholds(ctx, d, names); err != nil {
					return fmt.Errorf("fire threshold triggers: %w", err)
				}
			}
		}
	}
	if len(b.dirty) == 0 {
		return nil
	}
	rs := make([]members.Record, len(b.dirty))
	for i, u := range b.dirty {
		rs[i] = b.recs[u]
	}
	if mb, ok := e.cfg.Members.(members.Batcher); ok {
		if err := mb.PutMany(ctx, b.dirty, rs); err != nil {
			return fmt.Errorf("write membership records: %w", err)
		}
		return nil
	}
	for i, u := range b.dirty {
		if err := e.cfg.Members.Put(ctx, u, rs[i]); err != nil {
			return fmt.Errorf("write membership records: %w", err)
		}
	}
	return nil
}

// writeDue records the batch's due times, with one round trip when the schedule batches.
func (e *Engine) writeDue(ctx context.Context, b *batch) error {
	if len(b.due) == 0 {
		return nil
	}
	users := make([]string, 0, len(b.due))
	dues := make([]time.Time, 0, len(b.due))
	for u, t := range b.due {
		if !b.cache.dueRecorded(u, t) {
			users = append(users, u)
			dues = append(dues, t)
		}
	}
	if len(users) == 0 {
		return nil
	}
	if sb, ok := e.cfg.Schedule.(schedule.Batcher); ok {
		if err := sb.AtMany(ctx, b.p, users, dues); err != nil {
			return err
		}
	} else {
		for i, u := range users {
			if err := e.cfg.Schedule.At(ctx, b.p, u, dues[i]); err != nil {
				return err
			}
		}
	}
	for i, u := range users {
		b.cache.recordDue(u, dues[i])
	}
	return nil
}

// diff returns what is in b but not a (entered) and in a but not b (exited); both sorted.
func diff(a, b []string) (entered, exited []string) {
	for _, s := range b {
		if !slices.Contains(a, s) {
			entered = append(entered, s)
		}
	}
	for _, s := range a {
		if !slices.Contains(b, s) {
			exited = append(exited, s)
		}
	}
	return entered, exited
}

// Erase deletes a user everywhere the origin keeps them and tells every edge to forget them. It
// runs on the user's partition worker, like everything that writes the user's membership.
func (e *Engine) Erase(ctx context.Context, user string) error {
	return e.Reevaluate(ctx, user, delta.CauseErase)
}

// forgetAt is when a profile evaluated at now will have expired (Config.Retention after now, a
// little later, rounded up to the hour so that a user's events in the same hour ask for the same
// due time and the record cache spares the schedule the writes). An earlier due time the
// schedule keeps only costs an evaluation that finds the profile alive and asks again.
func (e *Engine) forgetAt(now time.Time) (time.Time, bool) {
	if e.cfg.Retention <= 0 {
		return time.Time{}, false
	}
	return now.Add(e.cfg.Retention + time.Minute).Truncate(time.Hour).Add(time.Hour), true
}

// forgetExpired is what a due time finds when the user's profile has expired (Config.Retention):
// the user is erased everywhere else too, unless no delta was ever published for them.
func (e *Engine) forgetExpired(ctx context.Context, p int, user string) error {
	rec, ok := e.recs[p].Load().get(user)
	if !ok {
		var err error
		if rec, err = e.cfg.Members.Get(ctx, user); err != nil {
			return err
		}
	}
	if rec.Version == 0 {
		return nil
	}
	e.m.forgotten.Inc()
	return e.erase(ctx, p, user)
}

func (e *Engine) erase(ctx context.Context, p int, user string) error {
	b := e.newBatch(p)
	prev, ok := b.cache.get(user)
	if !ok {
		var err error
		if prev, err = e.cfg.Members.Get(ctx, user); err != nil {
			return err
		}
	}
	if err := e.cfg.Store.Delete(ctx, user); err != nil {
		return fmt.Errorf("erase profile: %w", err)
	}
	if err := e.cfg.Schedule.Cancel(ctx, p, user); err != nil {
		return err
	}
	b.cache.forgetDue(user)
	d := &delta.Delta{UserID: user, Version: prev.Version + 1, Cause: delta.CauseErase, Members: []string{}, Exited: prev.Members, Erased: true}
	if b.rules != nil {
		d.Ruleset = b.rules.Version()
	}
	b.deltas, b.ctxs = []*delta.Delta{d}, []context.Context{ctx}
	b.exited = prev.Members
	// Keep the version (with no members) so a later profile of the same id continues upward.
	b.put(user, members.Record{Version: d.Version})
	return e.flush(ctx, b)
}
