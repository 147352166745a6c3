// Package replica is the edge's in-memory copy of what it needs to know about users: their
// profile-scoped segment memberships and the profile features that request-scoped rules read.
//
// It is fed by the DELTAS stream. On start it replays the stream (deltas carry full membership,
// so the newest delta per user is the whole truth) and then follows it; a network cut resumes
// from the last sequence seen (an ordered consumer). Entries are immutable and replaced whole, so
// a request reads one without locks. The map is bounded (otter, by entry count) so memory stays
// flat whatever the number of users; an evicted or never-seen user is looked up at the origin
// once (single-flight) and otherwise treated as new.
package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/profile"
)

// Entry is what the replica knows of one user. Never modified after it is stored. It is kept
// small (a replica holds millions): ids instead of names, numbers as 8 bytes.
type Entry struct {
	Version  uint64
	Ruleset  uint32
	AsOf     uint32   // Unix seconds when this entry was applied
	Members  []uint16 // interned segment ids, sorted
	Features []Feature
	Strs     []string // string feature values, indexed by Feature.Bits
}

// Feature is one feature value, its key interned: 16 bytes.
type Feature struct {
	Key  uint16
	Kind profile.Kind
	Bits uint64 // bool (0/1), int64, float64 bits, or an index into Entry.Strs
}

// Fetcher asks the origin for a user the replica does not hold. It returns a delta-shaped
// snapshot; a user the origin does not know is a nil delta and no error.
type Fetcher func(ctx context.Context, user string) (*delta.Delta, error)

// Config configures a replica.
type Config struct {
	JS       jetstream.JetStream
	Topology bus.Topology
	// MaxUsers bounds the map (default 1,000,000).
	MaxUsers int
	// Fetch is used on a miss; nil: misses are new users.
	Fetch Fetcher
	// FetchTimeout bounds a miss look-up (default 50ms).
	FetchTimeout time.Duration
	// OnChange is called after an entry changed because of a delta (not a fetch), with the old
	// entry (nil if none) and the new one (empty if erased). It runs on the consumer goroutine:
	// keep it short.
	OnChange   func(user string, old, new *Entry)
	Registerer prometheus.Registerer
	Log        *slog.Logger
}

// Replica is the bounded map fed by DELTAS.
type Replica struct {
	cfg     Config
	users   *otter.Cache[string, *Entry]
	names   names
	caught  atomic.Bool
	lastSeq atomic.Uint64
	m       *metrics
}

// New returns an empty replica; Run feeds it.
func New(cfg Config) (*Replica, error) {
	if cfg.MaxUsers == 0 {
		cfg.MaxUsers = 1_000_000
	}
	if cfg.FetchTimeout == 0 {
		cfg.FetchTimeout = 50 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	c, err := otter.New(&otter.Options[string, *Entry]{MaximumSize: cfg.MaxUsers})
	if err != nil {
		return nil, fmt.Errorf("replica map: %w", err)
	}
	r := &Replica{cfg: cfg, users: c}
	r.names.ids = map[string]uint16{}
	r.m = newMetrics(cfg.Registerer, r)
	return r, nil
}

// CaughtUp reports whether the replica has replayed DELTAS up to where it stood when Run began.
func (r *Replica) CaughtUp() bool { return r.caught.Load() }

// Len is the number of users held.
func (r *Replica) Len() int { return r.users.EstimatedSize() }

// Get returns the user's entry if the replica holds it.
func (r *Replica) Get(user string) (*Entry, bool) {
	return r.users.GetIfPresent(user)
}

// Lookup returns the user's entry, asking the origin once on a miss (concurrent misses for one
// user share the look-up). A user nobody knows gets an empty entry, remembered, so the next
// request does not ask again; a later delta replaces it.
func (r *Replica) Lookup(ctx context.Context, user string) *Entry {
	if e, ok := r.users.GetIfPresent(user); ok {
		return e
	}
	if r.cfg.Fetch == nil {
		return nil
	}
	e, err := r.users.Get(ctx, user, otter.LoaderFunc[string, *Entry](func(ctx context.Context, user string) (*Entry, error) {
		fctx, cancel := context.WithTimeout(ctx, r.cfg.FetchTimeout)
		defer cancel()
		d, err := r.cfg.Fetch(fctx, user)
		if err != nil {
			r.m.fetches.WithLabelValues("error").Inc()
			return nil, err
		}
		if d == nil {
			r.m.fetches.WithLabelValues("unknown").Inc()
			return &Entry{}, nil
		}
		r.m.fetches.WithLabelValues("found").Inc()
		return r.entry(d), nil
	}))
	if err != nil {
		return nil // origin unreachable: treat as new, ask again next time
	}
	return e
}

// Apply applies a delta unless the replica already holds this or a newer version of the user.
// It reports whether the delta changed anything.
func (r *Replica) Apply(d *delta.Delta) bool {
	var old *Entry
	applied := false
	// An erased user keeps an empty entry with the erasure's version, so an older delta still in
	// flight cannot bring the data back.
	next := r.entry(d)
	r.users.Compute(d.UserID, func(cur *Entry, found bool) (*Entry, otter.ComputeOp) {
		if found && cur.Version >= d.Version {
			return cur, otter.CancelOp
		}
		old, applied = cur, true
		return next, otter.WriteOp
	})
	if !applied {
		r.m.stale.Inc()
		return false
	}
	r.m.applied.Inc()
	if d.AcceptedAt > 0 {
		r.m.eventToEdge.Observe(float64(time.Now().UnixMilli()-d.AcceptedAt) / 1000)
	}
	if r.cfg.OnChange != nil {
		r.cfg.OnChange(d.UserID, old, next)
	}
	return true
}

func (r *Replica) entry(d *delta.Delta) *Entry {
	e := &Entry{Version: d.Version, Ruleset: uint32(d.Ruleset), AsOf: uint32(time.Now().Unix())}
	if d.Erased {
		return e
	}
	if len(d.Members) > 0 {
		e.Members = make([]uint16, 0, len(d.Members))
		for _, m := range d.Members {
			e.Members = append(e.Members, r.names.id(m))
		}
		slices.Sort(e.Members)
	}
	if len(d.Features) > 0 {
		e.Features = make([]Feature, 0, len(d.Features))
		for _, f := range d.Features {
			ft := Feature{Key: r.names.id(f.Key), Kind: f.Value.Kind}
			switch f.Value.Kind {
			case profile.KindBool:
				if f.Value.Bool {
					ft.Bits = 1
				}
			case profile.KindInt:
				ft.Bits = uint64(f.Value.Int)
			case profile.KindDouble:
				ft.Bits = math.Float64bits(f.Value.Double)
			case profile.KindString:
				ft.Bits = uint64(len(e.Strs))
				e.Strs = append(e.Strs, f.Value.Str)
			default:
				continue
			}
			e.Features = append(e.Features, ft)
		}
	}
	return e
}

// ID returns the interned id of a segment name or feature key (assigning one if new). Resolve
// names once (at ruleset load), not per request.
func (r *Replica) ID(name string) uint16 { return r.names.id(name) }

// Name returns the name of an interned id.
func (r *Replica) Name(id uint16) string { return r.names.name(id) }

// Has reports whether e holds segment id.
func (e *Entry) Has(id uint16) bool {
	if e == nil {
		return false
	}
	_, ok := slices.BinarySearch(e.Members, id)
	return ok
}

// Feature returns the value of feature key id.
func (e *Entry) Feature(id uint16) (profile.Value, bool) {
	if e == nil {
		return profile.Value{}, false
	}
	for _, f := range e.Features {
		if f.Key != id {
			continue
		}
		switch f.Kind {
		case profile.KindBool:
			return profile.BoolValue(f.Bits == 1), true
		case profile.KindInt:
			return profile.IntValue(int64(f.Bits)), true
		case profile.KindDouble:
			return profile.DoubleValue(math.Float64frombits(f.Bits)), true
		case profile.KindString:
			return profile.StringValue(e.Strs[f.Bits]), true
		}
	}
	return profile.Value{}, false
}

// MemberNames appends e's segment names to dst.
func (r *Replica) MemberNames(e *Entry, dst []string) []string {
	if e == nil {
		return dst
	}
	for _, id := range e.Members {
		dst = append(dst, r.names.name(id))
	}
	return dst
}

// names interns segment names and feature keys to small ids; a replica sees a few hundred at
// most (the rulesets' names), so ids never run out in practice. Reads take a read lock only on
// the slow path of a new name.
type names struct {
	mu   sync.RWMutex
	ids  map[string]uint16
	list atomic.Pointer[[]string]
}

func (n *names) id(s string) uint16 {
	n.mu.RLock()
	id, ok := n.ids[s]
	n.mu.RUnlock()
	if ok {
		return id
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if id, ok := n.ids[s]; ok {
		return id
	}
	var list []string
	if p := n.list.Load(); p != nil {
		list = append(list, *p...)
	}
	if len(list) >= 1<<16-1 {
		return 1<<16 - 1 // saturated: shared overflow id; never expected with real rulesets
	}
	id = uint16(len(list))
	list = append(list, s)
	n.ids[s] = id
	n.list.Store(&list)
	return id
}

func (n *names) name(id uint16) string {
	p := n.list.Load()
	if p == nil || int(id) >= len(*p) {
		return ""
	}
	return (*p)[id]
}

// Run replays DELTAS and follows it until ctx is done. The ordered consumer resumes after the
// last sequence seen when NATS comes back, so nothing is lost across a cut.
func (r *Replica) Run(ctx context.Context) error {
	stream := r.cfg.Topology.DeltasStream()
	var cons jetstream.Consumer
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := r.cfg.JS.OrderedConsumer(cctx, stream, jetstream.OrderedConsumerConfig{})
		cancel()
		if err == nil {
			cons = c
			break
		}
		r.cfg.Log.Warn("replica: open DELTAS", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	// Where the stream stands now: once we reach it, we are caught up.
	target := uint64(0)
	if s, err := r.cfg.JS.Stream(ctx, stream); err == nil {
		if info, err := s.Info(ctx); err == nil {
			target = info.State.LastSeq
		}
	}
	if target == 0 {
		r.caught.Store(true)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("replica: consume DELTAS: %w", err)
	}
	defer it.Stop()
	for ctx.Err() == nil {
		msg, err := it.Next(jetstream.NextMaxWait(time.Second))
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			if !errors.Is(err, nats.ErrTimeout) {
				r.cfg.Log.Warn("replica: read DELTAS", "err", err)
			}
			continue
		}
		meta, _ := msg.Metadata()
		d, err := delta.Decode(msg.Data())
		if err != nil {
			r.m.bad.Inc()
			r.cfg.Log.Warn("replica: unreadable delta skipped", "err", err)
		} else {
			r.Apply(d)
		}
		if meta != nil {
			r.lastSeq.Store(meta.Sequence.Stream)
			r.m.lag.Set(float64(meta.NumPending))
			if !r.caught.Load() && meta.Sequence.Stream >= target {
				r.caught.Store(true)
				r.cfg.Log.Info("replica caught up", "users", r.Len(), "seq", meta.Sequence.Stream)
			}
		}
	}
	return nil
}

type metrics struct {
	applied, stale, bad prometheus.Counter
	fetches             *prometheus.CounterVec
	eventToEdge         prometheus.Histogram
	lag                 prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, r *Replica) *metrics {
	m := &metrics{
		applied: prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_replica_deltas_applied_total", Help: "Deltas applied to the replica."}),
		stale:   prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_replica_deltas_stale_total", Help: "Deltas dropped because the replica held that version or newer."}),
		bad:     prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_replica_deltas_unreadable_total", Help: "Deltas that could not be decoded."}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segedge_edge_replica_origin_lookups_total", Help: "Replica misses looked up at the origin, by result (found, unknown, error)."}, []string{"result"}),
		eventToEdge: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "segedge_edge_event_to_replica_seconds", Help: "From an event accepted (at origin or edge) to its segment change applied in this edge's replica.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_edge_replica_lag_messages", Help: "Deltas in the stream not yet applied by this edge."}),
	}
	size := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "segedge_edge_replica_users", Help: "Users held in the replica."}, func() float64 { return float64(r.Len()) })
	reg.MustRegister(m.applied, m.stale, m.bad, m.fetches, m.eventToEdge, m.lag, size)
	return m
}
