// Package replica is the edge's in-memory copy of what it needs to know about users: their
// profile-scoped segment memberships and the profile features that request-scoped rules read.
//
// It is fed by the DELTAS stream, one message holding the deltas of one origin batch in order
// (core/delta format 1; single-delta messages of older origins are read too). On start it replays the stream (deltas carry full membership,
// so the newest delta per user is the whole truth) and then follows it; a network cut resumes
// from the last sequence seen (an ordered consumer). Entries are immutable and replaced whole, so
// a request reads one without locks. The map is bounded (otter, by entry count) so memory stays
// flat whatever the number of users; an evicted or never-seen user is looked up at the origin
// once (single-flight) and otherwise treated as new.
//
// Memory: the map is 64 shards of plain Go maps rather than a cache library, because per-user
// overhead is the budget here (goal ≤ 200 bytes per user; BenchmarkReplicaMemory measures it). When
// a shard is full, the least recently applied of 5 sampled entries is evicted (Redis's
// approximated LRU), which needs no per-entry list pointers.
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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/profile"
)

// Entry is what the replica knows of one user. Never modified after it is stored. It is kept
// small because a replica holds millions: 48 bytes plus one packed slice, segment names and
// feature keys as interned 16-bit ids.
type Entry struct {
	Version  uint64
	AsOf     uint32 // Unix seconds when this entry was applied
	nMembers uint16
	flags    uint16 // entryIncomplete
	// data packs the member ids, four to a word, then two words per feature:
	// key<<8|kind, and the value bits (bool 0/1, int64, float64 bits, or an index into strs).
	data []uint64
	strs *[]string // string feature values; nil for most users
}

// entryIncomplete marks an entry built from a partial delta (core/delta Base) relative to a
// version the replica did not hold: its memberships are right, but features the delta did not
// list are missing. Lookup asks the origin for the whole user before using it.
const entryIncomplete uint16 = 1

// Incomplete reports whether e lacks features it should have (see Lookup).
func (e *Entry) Incomplete() bool { return e != nil && e.flags&entryIncomplete != 0 }

// fetchBackoff is how long after a failed origin look-up the replica uses incomplete entries as
// they are (their memberships are right) instead of asking again for every request. Misses still
// ask: a user the replica does not hold at all has nothing better to go on.
const fetchBackoff = time.Second

// Fetcher asks the origin for a user the replica does not hold. It returns a delta-shaped
// snapshot; a user the origin does not know is a nil delta and no error.
type Fetcher func(ctx context.Context, user string) (*delta.Delta, error)

// Config configures a replica.
type Config struct {
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
	cfg      Config
	shards   [nShards]shard
	perShard int
	flight   singleflight.Group
	names    names
	values   names // interned short string feature values
	caught   atomic.Bool
	lastSeq  atomic.Uint64
	// fetchQuiet: until then (Unix ns), incomplete entries are used as they are, without asking
	// the origin, which failed a look-up fetchBackoff before.
	fetchQuiet atomic.Int64
	m          *metrics
}

const nShards = 64

type shard struct {
	mu sync.RWMutex
	m  map[string]*Entry
}

func (r *Replica) shard(user string) *shard {
	// FNV-1a, inlined: no allocation, no interface.
	h := uint32(2166136261)
	for i := 0; i < len(user); i++ {
		h ^= uint32(user[i])
		h *= 16777619
	}
	return &r.shards[h%nShards]
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
	if cfg.MaxUsers < nShards {
		return nil, fmt.Errorf("replica: MaxUsers %d is below the minimum of %d", cfg.MaxUsers, nShards)
	}
	r := &Replica{cfg: cfg, perShard: cfg.MaxUsers / nShards}
	for i := range r.shards {
		r.shards[i].m = map[string]*Entry{}
	}
	r.names.ids = map[string]uint16{}
	r.values.ids = map[string]uint16{}
	r.m = newMetrics(cfg.Registerer, r)
	return r, nil
}

// CaughtUp reports whether the replica has replayed DELTAS up to where it stood when Run began.
func (r *Replica) CaughtUp() bool { return r.caught.Load() }

// Len is the number of users held.
func (r *Replica) Len() int {
	n := 0
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

// Get returns the user's entry if the replica holds it.
func (r *Replica) Get(user string) (*Entry, bool) {
	s := r.shard(user)
	s.mu.RLock()
	e, ok := s.m[user]
	s.mu.RUnlock()
	return e, ok
}

// store puts e for user unless the shard holds a version at least as new; it reports whether it
// did and returns the entry it replaced.
func (r *Replica) store(user string, e *Entry) (old *Entry, stored bool) {
	s := r.shard(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, found := s.m[user]
	if found && e.Version != 0 && (cur.Version > e.Version ||
		cur.Version == e.Version && !(cur.Incomplete() && !e.Incomplete())) {
		return cur, false // only a complete answer of the same version replaces an incomplete entry
	}
	if found && e.Version == 0 {
		return cur, false // a "nobody knows this user" answer never replaces data
	}
	if !found && len(s.m) >= r.perShard {
		r.evict(s)
	}
	s.m[user] = e
	return cur, true
}

// evict removes the least recently applied of a few entries of a full shard (map iteration
// starts at a random place, so the sample is random).
func (r *Replica) evict(s *shard) {
	var victim string
	oldest := uint32(math.MaxUint32)
	n := 0
	for k, e := range s.m {
		if e.AsOf < oldest {
			victim, oldest = k, e.AsOf
		}
		if n++; n == 5 {
			break
		}
	}
	delete(s.m, victim)
	r.m.evicted.Inc()
}

// Lookup returns the user's entry, asking the origin once on a miss (concurrent misses for one
// user share the look-up). A user nobody knows gets an empty entry, remembered, so the next
// request does not ask again; a later delta replaces it. An incomplete entry (a partial delta
// that followed one this replica missed) is looked up the same way, and used as it is while the
// origin cannot answer: its memberships are right.
func (r *Replica) Lookup(ctx context.Context, user string) *Entry {
	held, ok := r.Get(user)
	if ok && !held.Incomplete() {
		return held
	}
	if r.cfg.Fetch == nil {
		return held
	}
	if ok && time.Now().UnixNano() < r.fetchQuiet.Load() {
		return held // the origin failed a moment ago: spare it (and this request) another try
	}
	v, err, _ := r.flight.Do(user, func() (any, error) {
		fctx, cancel := context.WithTimeout(ctx, r.cfg.FetchTimeout)
		defer cancel()
		d, err := r.cfg.Fetch(fctx, user)
		if err != nil {
			r.m.fetches.WithLabelValues("error").Inc()
			r.fetchQuiet.Store(time.Now().Add(fetchBackoff).UnixNano())
			return nil, err
		}
		e := &Entry{AsOf: uint32(time.Now().Unix())}
		if d == nil {
			r.m.fetches.WithLabelValues("unknown").Inc()
		} else {
			r.m.fetches.WithLabelValues("found").Inc()
			e = r.entry(d, nil)
		}
		if cur, stored := r.store(user, e); !stored {
			return cur, nil // a delta arrived meanwhile: it wins
		}
		return e, nil
	})
	if err != nil {
		return held // origin unreachable: what is held, or a new user; ask again next time
	}
	return v.(*Entry)
}

// Apply applies a delta unless the replica already holds this or a newer version of the user.
// It reports whether the delta changed anything.
func (r *Replica) Apply(d *delta.Delta) bool {
	// An erased user keeps an empty entry with the erasure's version, so an older delta still in
	// flight cannot bring the data back.
	old, next, applied := r.applyEntry(d)
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

// applyEntry stores the entry d makes of the user's: a whole delta's on its own, a partial
// one's merged with the entry of the version it is relative to (or marked incomplete when the
// replica holds another). The entry is built outside the shard's lock and stored only if the
// shard still holds the entry it was built from; a fetch that stored meanwhile makes it retry.
func (r *Replica) applyEntry(d *delta.Delta) (old, next *Entry, applied bool) {
	for {
		cur, found := r.Get(d.UserID)
		if found && cur.Version >= d.Version {
			return cur, nil, false
		}
		var base *Entry
		if d.Partial() && found && cur.Version == d.Base {
			base = cur
		}
		next = r.entry(d, base)
		if d.Partial() && (base == nil || base.Incomplete()) {
			next.flags |= entryIncomplete
		}
		if r.swap(d.UserID, cur, found, next) {
			if d.Partial() {
				result := "merged"
				if base == nil {
					result = "gap"
				}
				r.m.partial.WithLabelValues(result).Inc()
			}
			return cur, next, true
		}
	}
}

// swap stores next for user if the shard still holds cur (or nothing, when !found).
func (r *Replica) swap(user string, cur *Entry, found bool, next *Entry) bool {
	s := r.shard(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	now, ok := s.m[user]
	if ok != found || now != cur {
		return false
	}
	if !found && len(s.m) >= r.perShard {
		r.evict(s)
	}
	s.m[user] = next
	return true
}

// entry builds the entry of d; for a partial delta, base (if not nil) is the entry of version
// d.Base, whose features d does not list or remove are carried over.
func (r *Replica) entry(d *delta.Delta, base *Entry) *Entry {
	e := &Entry{Version: d.Version, AsOf: uint32(time.Now().Unix())}
	if d.Erased {
		return e
	}
	ids := make([]uint16, 0, 16)
	for _, m := range d.Members {
		ids = append(ids, r.names.id(m))
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	mw := (len(ids) + 3) / 4
	nf := len(d.Features)
	if base != nil {
		nf += base.features()
	}
	e.data = make([]uint64, mw, mw+2*nf)
	for i, id := range ids {
		e.data[i/4] |= uint64(id) << (16 * (i % 4))
	}
	e.nMembers = uint16(len(ids))
	for _, f := range d.Features {
		var bits uint64
		switch f.Value.Kind {
		case profile.KindBool:
			if f.Value.Bool {
				bits = 1
			}
		case profile.KindInt:
			bits = uint64(f.Value.Int)
		case profile.KindDouble:
			bits = math.Float64bits(f.Value.Double)
		case profile.KindString:
			// Short values of low-cardinality traits (plan, tier) are interned like names; the
			// rest are kept per entry, so a flood of distinct values cannot grow the table.
			if id, ok := r.values.lookupOrAdd(f.Value.Str); ok {
				e.data = append(e.data, uint64(r.names.id(f.Key))<<8|uint64(kindInterned), uint64(id))
				continue
			}
			if e.strs == nil {
				e.strs = new([]string)
			}
			bits = uint64(len(*e.strs))
			*e.strs = append(*e.strs, f.Value.Str)
		default:
			continue
		}
		e.data = append(e.data, uint64(r.names.id(f.Key))<<8|uint64(f.Value.Kind), bits)
	}
	if base != nil {
		e.carry(base, d, mw, &r.names)
	}
	return e
}

// features is the number of features e holds.
func (e *Entry) features() int { return (len(e.data) - (int(e.nMembers)+3)/4) / 2 }

// carry appends to e (whose features start at word mw and are those d lists) the features of
// base that d neither lists nor removes.
func (e *Entry) carry(base *Entry, d *delta.Delta, mw int, keys *names) {
	listed := e.data[mw:]
	gone := make([]uint16, 0, len(d.Gone))
	for _, k := range d.Gone {
		if id, ok := keys.lookup(k); ok {
			gone = append(gone, id)
		}
	}
	for i := (int(base.nMembers) + 3) / 4; i+1 < len(base.data); i += 2 {
		head, bits := base.data[i], base.data[i+1]
		id := uint16(head >> 8)
		if slices.Contains(gone, id) || hasKey(listed, id) {
			continue
		}
		if profile.Kind(head&0xff) == profile.KindString {
			if e.strs == nil {
				e.strs = new([]string)
			}
			*e.strs = append(*e.strs, (*base.strs)[bits])
			bits = uint64(len(*e.strs) - 1)
		}
		e.data = append(e.data, head, bits)
	}
}

// hasKey reports whether the feature words fs (pairs of key<<8|kind, value) hold key id.
func hasKey(fs []uint64, id uint16) bool {
	for i := 0; i+1 < len(fs); i += 2 {
		if uint16(fs[i]>>8) == id {
			return true
		}
	}
	return false
}

// member returns the i-th member id of e.
func (e *Entry) member(i int) uint16 { return uint16(e.data[i/4] >> (16 * (i % 4))) }

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
	for i := range int(e.nMembers) {
		if e.member(i) == id {
			return true
		}
	}
	return false
}

// kindInterned marks a string feature value held in the replica's value table.
const kindInterned profile.Kind = 0x80

// Feature returns the value of feature key id; values is the replica's (Replica.Feature wraps it).
func (e *Entry) feature(values *names, id uint16) (profile.Value, bool) {
	if e == nil {
		return profile.Value{}, false
	}
	for i := (int(e.nMembers) + 3) / 4; i+1 < len(e.data); i += 2 {
		if uint16(e.data[i]>>8) != id {
			continue
		}
		bits := e.data[i+1]
		switch profile.Kind(e.data[i] & 0xff) {
		case profile.KindBool:
			return profile.BoolValue(bits == 1), true
		case profile.KindInt:
			return profile.IntValue(int64(bits)), true
		case profile.KindDouble:
			return profile.DoubleValue(math.Float64frombits(bits)), true
		case profile.KindString:
			return profile.StringValue((*e.strs)[bits]), true
		case kindInterned:
			return profile.StringValue(values.name(uint16(bits))), true
		}
	}
	return profile.Value{}, false
}

// Feature returns the value of feature key id in e.
func (r *Replica) Feature(e *Entry, id uint16) (profile.Value, bool) { return e.feature(&r.values, id) }

// Members is the number of segments e is a member of.
func (e *Entry) Members() int {
	if e == nil {
		return 0
	}
	return int(e.nMembers)
}

// MemberNames appends e's segment names to dst.
func (r *Replica) MemberNames(e *Entry, dst []string) []string {
	if e == nil {
		return dst
	}
	for i := range int(e.nMembers) {
		dst = append(dst, r.names.name(e.member(i)))
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

// lookup returns the id of s if it has one.
func (n *names) lookup(s string) (uint16, bool) {
	n.mu.RLock()
	id, ok := n.ids[s]
	n.mu.RUnlock()
	return id, ok
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

// lookupOrAdd interns s if it is short and the table has room; ok is false otherwise.
func (n *names) lookupOrAdd(s string) (uint16, bool) {
	const maxLen, maxValues = 48, 1 << 14
	if len(s) > maxLen {
		return 0, false
	}
	n.mu.RLock()
	id, ok := n.ids[s]
	full := len(n.ids) >= maxValues
	n.mu.RUnlock()
	if ok {
		return id, true
	}
	if full {
		return 0, false
	}
	return n.id(s), true
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
func (r *Replica) Run(ctx context.Context, js jetstream.JetStream) error {
	stream := r.cfg.Topology.DeltasStream()
	var cons jetstream.Consumer
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := js.OrderedConsumer(cctx, stream, jetstream.OrderedConsumerConfig{})
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
	if s, err := js.Stream(ctx, stream); err == nil {
		if info, err := s.Info(ctx); err == nil && info.State.Msgs > 0 {
			// A stream whose messages all expired or were purged keeps its last sequence: there
			// is nothing to replay, and no message at that sequence will ever arrive.
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
		r.applyMessage(msg.Data(), msg.Headers())
		// The sequence is recorded once the whole message is applied: one message, many deltas.
		if meta != nil {
			r.lastSeq.Store(meta.Sequence.Stream)
			r.m.lag.Set(float64(meta.NumPending))
			if !r.caught.Load() && (meta.Sequence.Stream >= target || meta.NumPending == 0) {
				r.caught.Store(true)
				r.cfg.Log.Info("replica caught up", "users", r.Len(), "seq", meta.Sequence.Stream)
			}
		}
	}
	return nil
}

// applyMessage applies every delta of one DELTAS message in order: a batch (delta format 1) or,
// from an origin before batching, a single delta. What cannot be read is counted and skipped.
func (r *Replica) applyMessage(body []byte, h nats.Header) {
	ds, err := delta.DecodeBatch(body)
	if err != nil {
		var berr *delta.BatchError
		if errors.As(err, &berr) {
			r.m.bad.Add(float64(berr.Skipped))
		} else {
			r.m.bad.Inc()
		}
		r.cfg.Log.Warn("replica: unreadable delta skipped", "err", err)
	}
	for i := range ds {
		r.applyTraced(h, &ds[i])
	}
}

type metrics struct {
	applied, stale, bad, evicted prometheus.Counter
	fetches, partial             *prometheus.CounterVec
	eventToEdge                  prometheus.Histogram
	lag                          prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, r *Replica) *metrics {
	m := &metrics{
		applied: prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_replica_deltas_applied_total", Help: "Deltas applied to the replica."}),
		stale:   prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_replica_deltas_stale_total", Help: "Deltas dropped because the replica held that version or newer."}),
		bad:     prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_replica_deltas_unreadable_total", Help: "Deltas that could not be decoded (a DELTAS message that cannot be read counts once, however many it held)."}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_replica_evictions_total", Help: "Users dropped from the full replica (looked up at the origin when they come back)."}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segedge_edge_replica_origin_lookups_total", Help: "Replica misses looked up at the origin, by result (found, unknown, error)."}, []string{"result"}),
		eventToEdge: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "segedge_edge_event_to_replica_seconds", Help: "From an event accepted (at origin or edge) to its segment change applied in this edge's replica.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		partial: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segedge_edge_replica_partial_deltas_total",
			Help: "Deltas carrying only the features that changed, by result: merged into the version they follow, or gap (this edge did not hold that version: the user is looked up at the origin when a request needs the other features)."}, []string{"result"}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_edge_replica_lag_messages", Help: "Deltas in the stream not yet applied by this edge."}),
	}
	size := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "segedge_edge_replica_users", Help: "Users held in the replica."}, func() float64 { return float64(r.Len()) })
	for _, r := range []string{"found", "unknown", "error"} {
		m.fetches.WithLabelValues(r) // every series from the start: docs/metrics.md, rate() and alerts see them
	}
	for _, r := range []string{"merged", "gap"} {
		m.partial.WithLabelValues(r)
	}
	reg.MustRegister(m.applied, m.stale, m.bad, m.evicted, m.fetches, m.partial, m.eventToEdge, m.lag, size)
	return m
}
