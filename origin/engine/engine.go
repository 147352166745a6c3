// Package engine is the origin's worker: it consumes the EVENTS stream one partition at a time,
// applies each event to its user's profile, evaluates the ruleset, and publishes a delta on
// DELTAS when the user's segments changed.
//
// Ordering and exactly-once: one goroutine owns each partition, so one user's events, expiries
// and re-evaluations never race. The store deduplicates event ids, so a redelivered event changes
// nothing; the engine still re-evaluates it and publishes a delta if the last one was lost. An
// event is acknowledged only after its delta is published, so a crash loses nothing.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
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

// Config wires an engine.
type Config struct {
	JS       jetstream.JetStream
	Topology bus.Topology
	Store    store.Store
	Members  members.Store
	Schedule schedule.Schedule
	// Rules returns the active ruleset; nil means none yet (profiles still update, no segments).
	Rules func() Rules
	// Partitions this engine consumes; nil means all.
	Partitions []int
	// ConsumerName prefixes the durable consumer names ("origin" → "origin-p0"...).
	ConsumerName string
	Registerer   prometheus.Registerer
	Log          *slog.Logger
	Now          func() time.Time
	// DuePoll is how often due re-evaluations are checked (default 100ms).
	DuePoll time.Duration
	// Triggers, if set, is told of every published delta before the event is acknowledged, so a
	// trigger fires at least once per membership change even across a crash.
	Triggers TriggerSink
}

// TriggerSink receives published deltas (origin/trigger fires the rules file's triggers).
type TriggerSink interface {
	Fire(ctx context.Context, d *delta.Delta) error
}

// Engine runs the partition workers.
type Engine struct {
	cfg     Config
	m       *metrics
	empty   *profile.Spec
	tasks   []chan task
	running atomic.Bool
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
	if cfg.ConsumerName == "" {
		cfg.ConsumerName = "origin"
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
	empty, err := profile.NewSpec(nil, nil)
	if err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, m: newMetrics(cfg.Registerer), empty: empty, tasks: make([]chan task, cfg.Topology.Partitions)}
	for i := range e.tasks {
		e.tasks[i] = make(chan task, 1024)
	}
	return e, nil
}

// Run consumes every configured partition until ctx is done.
func (e *Engine) Run(ctx context.Context) error {
	e.running.Store(true)
	defer e.running.Store(false)
	errc := make(chan error, len(e.cfg.Partitions))
	for _, p := range e.cfg.Partitions {
		go func() { errc <- e.runPartition(ctx, p) }()
	}
	go e.watchLag(ctx)
	var first error
	for range e.cfg.Partitions {
		if err := <-errc; err != nil && first == nil && ctx.Err() == nil {
			first = err
		}
	}
	return first
}

// Reevaluate asks the user's partition worker to re-evaluate the user now (a new ruleset, an
// admin request) and waits for it. Only a running engine that owns the partition can do it.
func (e *Engine) Reevaluate(ctx context.Context, user string, cause delta.Cause) error {
	p := event.Partition(user, e.cfg.Topology.Partitions)
	t := task{user: user, cause: cause, done: make(chan error, 1)}
	select {
	case e.tasks[p] <- t:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-t.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (e *Engine) consumer(ctx context.Context, p int) (jetstream.Consumer, error) {
	name := e.cfg.ConsumerName + "-p" + strconv.Itoa(p)
	return e.cfg.JS.CreateOrUpdateConsumer(ctx, e.cfg.Topology.EventsStream(), jetstream.ConsumerConfig{
		Durable:       name,
		FilterSubject: e.cfg.Topology.EventSubject(p),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 4096,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
}

func (e *Engine) runPartition(ctx context.Context, p int) error {
	var cons jetstream.Consumer
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := e.consumer(cctx, p)
		cancel()
		if err == nil {
			cons = c
			break
		}
		e.cfg.Log.Warn("create consumer", "partition", p, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(512))
	if err != nil {
		return fmt.Errorf("consume partition %d: %w", p, err)
	}
	defer it.Stop()
	lastDue := time.Time{}
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		if backoff > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
		}
		msg, err := it.Next(jetstream.NextMaxWait(e.cfg.DuePoll))
		switch {
		case err == nil:
			if err := e.handleMsg(ctx, p, msg); err != nil {
				e.cfg.Log.Warn("event not applied; will retry", "partition", p, "err", err)
				_ = msg.NakWithDelay(time.Second)
				backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
				continue
			}
			backoff = 0
		case errors.Is(err, nats.ErrTimeout), errors.Is(err, jetstream.ErrNoHeartbeat):
		case errors.Is(err, jetstream.ErrMsgIteratorClosed):
			return nil
		default:
			e.cfg.Log.Warn("fetch events", "partition", p, "err", err)
		}
		if now := e.cfg.Now(); now.Sub(lastDue) >= e.cfg.DuePoll {
			lastDue = now
			e.runDue(ctx, p, now)
		}
		e.runTasks(ctx, p)
	}
	return nil
}

func (e *Engine) runTasks(ctx context.Context, p int) {
	for range 64 {
		select {
		case t := <-e.tasks[p]:
			if t.cause == delta.CauseErase {
				t.done <- e.erase(ctx, p, t.user)
			} else {
				t.done <- e.evaluate(ctx, p, t.user, t.cause, 0, 0)
			}
		default:
			return
		}
	}
}

func (e *Engine) runDue(ctx context.Context, p int, now time.Time) {
	users, err := e.cfg.Schedule.Due(ctx, p, now, 256)
	if err != nil {
		e.cfg.Log.Warn("read due re-evaluations", "partition", p, "err", err)
		return
	}
	for _, u := range users {
		if err := e.evaluate(ctx, p, u, delta.CauseExpiry, 0, now.UnixMilli()); err != nil {
			e.cfg.Log.Warn("re-evaluate at due time; retrying in 1s", "partition", p, "err", err)
			_ = e.cfg.Schedule.At(ctx, p, u, now.Add(time.Second))
		}
	}
}

// handleMsg applies one event and publishes the resulting delta. An error means: not done,
// redeliver later.
func (e *Engine) handleMsg(ctx context.Context, p int, msg jetstream.Msg) error {
	ev, acceptedAt, err := event.DecodeWire(msg.Data())
	if err != nil {
		// A message we cannot read never becomes readable: count it and move on.
		e.m.poison.Inc()
		e.cfg.Log.Error("unreadable event dropped", "partition", p, "err", err)
		return msg.Term()
	}
	rules := e.cfg.Rules()
	spec := e.empty
	if rules != nil {
		spec = rules.Spec()
	}
	t0 := time.Now()
	prof, applied, err := e.cfg.Store.Apply(ctx, ev, spec)
	if err != nil {
		e.m.applyErrors.Inc()
		return fmt.Errorf("apply event: %w", err)
	}
	if applied {
		e.m.applied.Inc()
		e.m.ingestToProfile.Observe(time.Since(acceptedAt).Seconds())
	} else {
		e.m.duplicates.Inc()
	}
	e.m.applyDur.Observe(time.Since(t0).Seconds())
	if err := e.evaluateProfile(ctx, p, prof, delta.CauseEvent, acceptedAt.UnixMilli(), 0); err != nil {
		return err
	}
	return msg.Ack()
}

// evaluate re-evaluates one user and publishes a delta if their membership changed (or, for an
// event, if request-scoped rules may read changed features).
func (e *Engine) evaluate(ctx context.Context, p int, user string, cause delta.Cause, acceptedAt, due int64) error {
	prof, err := e.cfg.Store.Get(ctx, user)
	if errors.Is(err, store.ErrNotFound) {
		return nil // erased or expired meanwhile
	}
	if err != nil {
		return fmt.Errorf("read profile: %w", err)
	}
	return e.evaluateProfile(ctx, p, prof, cause, acceptedAt, due)
}

// evaluateProfile is evaluate with the profile already at hand (Apply returns it).
func (e *Engine) evaluateProfile(ctx context.Context, p int, prof *profile.Profile, cause delta.Cause, acceptedAt, due int64) error {
	rules := e.cfg.Rules()
	if rules == nil {
		return nil // no ruleset yet: profiles update, memberships stay as last published
	}
	user := prof.UserID
	var err error
	now := e.cfg.Now()
	var segs []string
	var version uint64
	var edgeFeatures []profile.Feature
	if rules != nil {
		version = rules.Version()
		edgeFeatures = rules.EdgeFeatures()
		if segs, err = rules.Segments(ctx, prof, now, nil); err != nil {
			e.m.evalErrors.Inc()
			return fmt.Errorf("evaluate ruleset %d: %w", version, err)
		}
		if next, ok := prof.NextExpiry(rules.Spec(), now); ok {
			if err := e.cfg.Schedule.At(ctx, p, user, next); err != nil {
				return err
			}
		}
	}
	prev, err := e.cfg.Members.Get(ctx, user)
	if err != nil {
		return err
	}
	entered, exited := diff(prev.Members, segs)
	changed := len(entered) > 0 || len(exited) > 0
	// Request-scoped rules at the edge read features; after an event they may have changed.
	if !changed && !(cause == delta.CauseEvent && len(edgeFeatures) > 0) && prev.Version > 0 {
		return nil
	}
	if !changed && prev.Version == 0 && len(segs) == 0 && len(edgeFeatures) == 0 {
		return nil // nothing any edge needs to know
	}
	d := &delta.Delta{
		UserID: user, Version: prev.Version + 1, Ruleset: version, Cause: cause,
		Members: segs, Entered: entered, Exited: exited, AcceptedAt: acceptedAt, Due: due,
	}
	if d.Members == nil {
		d.Members = []string{}
	}
	for _, f := range edgeFeatures {
		if v, ok := prof.Value(f, now); ok {
			d.Features = append(d.Features, delta.FeatureValue{Key: delta.FeatureKey(f), Value: v})
		}
	}
	if err := e.publish(ctx, p, d); err != nil {
		return err
	}
	if e.cfg.Triggers != nil && changed {
		if err := e.cfg.Triggers.Fire(ctx, d); err != nil {
			return fmt.Errorf("fire triggers: %w", err)
		}
	}
	if err := e.cfg.Members.Count(ctx, entered, exited); err != nil {
		e.cfg.Log.Warn("segment member counts", "err", err) // counts are advisory
	}
	return e.cfg.Members.Put(ctx, user, members.Record{Version: d.Version, Members: segs})
}

func (e *Engine) publish(ctx context.Context, p int, d *delta.Delta) error {
	body, err := delta.Encode(d)
	if err != nil {
		return err
	}
	msg := &nats.Msg{Subject: e.cfg.Topology.DeltaSubject(p), Data: body, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, delta.MsgID(d))
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := e.cfg.JS.PublishMsg(pctx, msg); err != nil {
		e.m.publishErrors.Inc()
		return fmt.Errorf("publish delta: %w", err)
	}
	e.m.deltas.WithLabelValues(string(d.Cause)).Inc()
	if d.AcceptedAt > 0 {
		e.m.ingestToDelta.Observe(float64(time.Now().UnixMilli()-d.AcceptedAt) / 1000)
	}
	if d.Due > 0 {
		e.m.expiryLateness.Observe(float64(time.Now().UnixMilli()-d.Due) / 1000)
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

func (e *Engine) erase(ctx context.Context, p int, user string) error {
	prev, err := e.cfg.Members.Get(ctx, user)
	if err != nil {
		return err
	}
	if err := e.cfg.Store.Delete(ctx, user); err != nil {
		return fmt.Errorf("erase profile: %w", err)
	}
	if err := e.cfg.Schedule.Cancel(ctx, p, user); err != nil {
		return err
	}
	d := &delta.Delta{UserID: user, Version: prev.Version + 1, Cause: delta.CauseErase, Members: []string{}, Exited: prev.Members, Erased: true}
	if r := e.cfg.Rules(); r != nil {
		d.Ruleset = r.Version()
	}
	if err := e.publish(ctx, p, d); err != nil {
		return err
	}
	if err := e.cfg.Members.Count(ctx, nil, prev.Members); err != nil {
		e.cfg.Log.Warn("segment member counts", "err", err)
	}
	// Keep the version (with no members) so a later profile of the same id continues upward.
	return e.cfg.Members.Put(ctx, user, members.Record{Version: d.Version})
}
