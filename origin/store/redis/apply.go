package redis

import (
	"context"
	_ "embed"
	"errors"
	"fmt"

	goredis "github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/origin/store"
)

//go:embed cas.lua
var casSource string

var casScript = goredis.NewScript(casSource)

// maxRounds bounds the compare-and-set rounds of one batch. A round redoes the events whose
// expectation did not hold; one more round is normal (a stale cache entry, a redelivered event
// breaking its user's chain, a script reload), several in a row mean the profile keeps changing
// under this process, and the events left then fail (the engine redelivers them).
const maxRounds = 4

// Replies of cas.lua.
const (
	replyApplied   = "applied"
	replyDuplicate = "duplicate"
	replyStale     = "stale"
)

// errConcurrentWrite fails the rest of a user's events when one of them was written although an
// earlier one was not: only another process writing the same events at the same time does that.
var errConcurrentWrite = errors.New("profile written concurrently by another process; not applied")

// Apply implements store.Store: a batch of one.
func (s *Store) Apply(ctx context.Context, ev event.Event, spec *profile.Spec) (*profile.Profile, bool, error) {
	res, err := s.ApplyBatch(ctx, []event.Event{ev}, spec)
	if err != nil {
		return nil, false, fmt.Errorf("apply event %q to user %s: %w", ev.ID, ops.UserRef(ev.UserID), err)
	}
	return res[0].Profile, res[0].Applied, res[0].Err
}

// ApplyBatch implements store.Store. Go computes every event's new profile (Profile.With, i.e.
// Clone + Apply sharing what the event leaves alone, from the user's cached or read profile,
// chained through the user's events in batch order) and
// Redis stores each one with cas.lua in one pipeline: written if the profile is still the one it
// was computed from and the event id is new. Events whose expectation failed are recomputed from
// what Redis returned in another round (see batch.settle), in order per user.
func (s *Store) ApplyBatch(ctx context.Context, evs []event.Event, spec *profile.Spec) ([]store.Result, error) {
	b := s.newBatch(evs)
	if len(b.chains) == 0 {
		return b.res, nil
	}
	if err := s.users.begin(ctx, b.chains); err != nil {
		return nil, fmt.Errorf("apply %d events: %w", len(evs), err)
	}
	defer s.users.end(b.chains)
	if err := b.run(ctx, spec); err != nil {
		return nil, err
	}
	return b.res, nil
}

// batch is the work of one ApplyBatch.
type batch struct {
	s      *Store
	evs    []event.Event
	res    []store.Result
	chains []*chain
	// seenAt[i] is when evs[i]'s id was applied according to the user's dedup record (Unix ms;
	// 0: not known to be), repeat[i] that an earlier event of the user in the batch has its id:
	// both predict a duplicate, so the user's later events are computed without it.
	seenAt []int64
	repeat []bool
	done   int  // events applied or found duplicate so far
	eval   bool // Redis lost the script (NOSCRIPT): send the next round with EVAL
}

// chain is one user's events of a batch and what is known of the user's stored profile.
type chain struct {
	user    string
	keys    []string
	pending []int  // indexes (in the batch) of the events without a result yet, in order
	base    *state // the stored state the next round computes from; nil: read it first
	dedup   bool   // look the pending events' ids up in the dedup record before the next round
	failed  bool   // an event failed: its outcome, or the order of the rest, is unknown
}

// call is one event's compare-and-set in a round: from the state the chain expects to the state
// Go computed.
type call struct {
	ch       *chain
	i        int
	u        profile.Update
	from, to state
	dup      bool // predicted duplicate: the chain's next call expects from, not to
	cmd      *goredis.Cmd
}

// newBatch groups evs by user (first-seen order); events without ids fail here.
func (s *Store) newBatch(evs []event.Event) *batch {
	b := &batch{s: s, evs: evs, res: make([]store.Result, len(evs)), seenAt: make([]int64, len(evs)), repeat: make([]bool, len(evs))}
	byUser := make(map[string]*chain)
	for i, ev := range evs {
		if ev.UserID == "" || ev.ID == "" {
			b.res[i].Err = fmt.Errorf("apply event %q: missing event or user id", ev.ID)
			continue
		}
		ch := byUser[ev.UserID]
		if ch == nil {
			ch = &chain{user: ev.UserID, keys: s.keys(ev.UserID)}
			byUser[ev.UserID] = ch
			b.chains = append(b.chains, ch)
		}
		for _, j := range ch.pending {
			if evs[j].ID == ev.ID {
				b.repeat[i] = true
				break
			}
		}
		ch.pending = append(ch.pending, i)
	}
	return b
}

// run does the rounds: read what is missing, write, settle; until every event has a result.
// An error is a failure of the batch as a whole, before any event was applied.
func (b *batch) run(ctx context.Context, spec *profile.Spec) error {
	for round := 0; round < maxRounds; round++ {
		if err := b.read(ctx); err != nil {
			return err
		}
		calls := b.plan(spec)
		if len(calls) == 0 {
			return nil
		}
		if err := b.write(ctx, calls); err != nil {
			return err
		}
		b.settle(calls)
	}
	for _, ch := range b.chains {
		for _, i := range ch.pending {
			ev := b.evs[i]
			b.res[i].Err = fmt.Errorf("apply event %q to user %s: the stored profile changed in each of %d attempts", ev.ID, ops.UserRef(ev.UserID), maxRounds)
		}
		ch.pending = nil
	}
	return nil
}

// read fetches, in one pipeline, the stored profile of the users that have no base yet (not
// cached) and the dedup record of the pending events of the users that need it (not cached, or
// a duplicate broke their chain), so that duplicates are predicted instead of each breaking the
// chain (a redelivered message of one user's 50 events would otherwise take 50 rounds).
func (b *batch) read(ctx context.Context) error {
	var need []*chain
	for _, ch := range b.chains {
		if len(ch.pending) > 0 && (ch.base == nil || ch.dedup) {
			need = append(need, ch)
		}
	}
	if len(need) == 0 {
		return nil
	}
	hashes := make([]*goredis.MapStringStringCmd, len(need))
	seen := make([]*goredis.FloatSliceCmd, len(need))
	cmds, err := b.s.c.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for j, ch := range need {
			if ch.base == nil {
				hashes[j] = p.HGetAll(ctx, ch.keys[0])
			}
			ids := make([]string, len(ch.pending))
			for k, i := range ch.pending {
				ids[k] = b.evs[i].ID
			}
			seen[j] = p.ZMScore(ctx, ch.keys[1], ids...)
		}
		return nil
	})
	if err != nil && b.done == 0 && allFailed(cmds) {
		return fmt.Errorf("read %d profiles: %w", len(need), err)
	}
	for j, ch := range need {
		if err := b.readOne(ch, hashes[j], seen[j]); err != nil {
			b.fail(ch, 0, err)
		}
	}
	return nil
}

// readOne takes one user's read replies into its chain.
func (b *batch) readOne(ch *chain, hash *goredis.MapStringStringCmd, seen *goredis.FloatSliceCmd) error {
	if hash != nil {
		m, err := hash.Result()
		if err != nil {
			return fmt.Errorf("read profile of user %s: %w", ops.UserRef(ch.user), err)
		}
		st, err := decodeState(ch.user, hashPairs(m))
		if err != nil {
			return err
		}
		ch.base = &st
	}
	at, err := seen.Result()
	if err != nil {
		return fmt.Errorf("read event ids of user %s: %w", ops.UserRef(ch.user), err)
	}
	for k, i := range ch.pending {
		b.seenAt[i] = int64(at[k])
	}
	ch.dedup = false
	return nil
}

// plan computes every pending event's call of this round: each user's events in order, each
// from the state the previous one leaves (or, for a predicted duplicate, does not change).
func (b *batch) plan(spec *profile.Spec) []call {
	now := b.s.opts.Now()
	window := b.s.opts.DedupWindow.Milliseconds()
	var calls []call
	for _, ch := range b.chains {
		if len(ch.pending) == 0 {
			continue
		}
		cur := *ch.base
		for _, i := range ch.pending {
			u := spec.Plan(b.evs[i], now)
			cl := call{ch: ch, i: i, u: u, from: cur, to: state{p: cur.p.With(u), last: u.EventID},
				dup: b.repeat[i] || b.seenAt[i] > u.Now.UnixMilli()-window}
			calls = append(calls, cl)
			if !cl.dup {
				cur = cl.to
			}
		}
	}
	return calls
}

// write sends the round's calls in one pipeline (EVALSHA, or EVAL after Redis lost the script).
// An error is a failure of the whole batch: every call failed and nothing was applied before.
func (b *batch) write(ctx context.Context, calls []call) error {
	o := b.s.opts
	eval := b.eval
	b.eval = false
	cmds, err := b.s.c.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for j := range calls {
			cl := &calls[j]
			args := casArgs(cl.u.EventID, cl.u.Now.UnixMilli(), o.DedupWindow.Milliseconds(), o.Retention.Milliseconds(),
				cl.from.p, cl.to.p, cl.from.last, cl.u)
			if eval {
				cl.cmd = casScript.Eval(ctx, p, cl.ch.keys, args...)
			} else {
				cl.cmd = casScript.EvalSha(ctx, p, cl.ch.keys, args...)
			}
		}
		return nil
	})
	if err != nil && b.done == 0 && allFailed(cmds) {
		return fmt.Errorf("apply %d events: %w", len(b.evs), err)
	}
	return nil
}

// settle takes the round's replies: per user, the calls up to the first one whose expectation
// failed are final; from there the user's events wait for the next round, computed from the
// state that reply established. Expectations chain (each call expects the state the previous
// call of the user leaves), so once one fails the user's later calls fail too and cannot have
// been written out of order.
func (b *batch) settle(calls []call) {
	for start := 0; start < len(calls); {
		end := start + 1
		for end < len(calls) && calls[end].ch == calls[start].ch {
			end++
		}
		b.settleChain(calls[start].ch, calls[start:end])
		start = end
	}
}

// settleChain settles one user's calls of a round (see settle).
func (b *batch) settleChain(ch *chain, calls []call) {
	for k := range calls {
		cl := &calls[k]
		brk, redo, err := b.settleCall(cl)
		if err != nil {
			b.fail(ch, k, err)
			return
		}
		if !brk {
			continue
		}
		if redo {
			ch.pending = ch.pending[k:]
		} else {
			ch.pending = ch.pending[k+1:]
		}
		for _, later := range calls[k+1:] {
			if r, _ := later.cmd.Result(); r == replyApplied {
				b.fail(ch, 0, errConcurrentWrite)
				return
			}
		}
		return
	}
	ch.pending = nil
}

// settleCall takes one call's reply: whether the chain breaks there (the next call's
// expectation cannot hold), and whether this event itself must be redone.
func (b *batch) settleCall(cl *call) (brk, redo bool, err error) {
	ev := b.evs[cl.i]
	reply, err := cl.cmd.Result()
	if err != nil {
		if goredis.HasErrorPrefix(err, "NOSCRIPT") {
			b.eval = true
			cl.ch.base = &cl.from
			return true, true, nil
		}
		return false, false, fmt.Errorf("apply event %q to user %s: %w", ev.ID, ops.UserRef(ev.UserID), err)
	}
	kind, hash, err := parseReply(reply)
	if err != nil {
		return false, false, fmt.Errorf("apply event %q to user %s: %w", ev.ID, ops.UserRef(ev.UserID), err)
	}
	var stored state
	if hash != nil {
		if stored, err = decodeState(ev.UserID, hash); err != nil {
			return false, false, fmt.Errorf("apply event %q: %w", ev.ID, err)
		}
	}
	switch {
	case kind == replyApplied:
		b.finish(cl.i, cl.to.p, true)
		cl.ch.base = &cl.to
		return cl.dup, false, nil // a predicted duplicate that was new: the next call expected from
	case kind == replyDuplicate && hash == nil:
		b.finish(cl.i, cl.from.p, false)
		cl.ch.base = &cl.from
		cl.ch.dedup = !cl.dup // an unpredicted duplicate: a redelivery, look the rest up
		return !cl.dup, false, nil
	case kind == replyDuplicate:
		b.finish(cl.i, stored.p, false)
		cl.ch.base = &stored
		cl.ch.dedup = !cl.dup
		return true, false, nil
	default: // stale: a new event (whatever was predicted) on a profile Go did not expect
		b.s.users.stale.Add(1)
		b.seenAt[cl.i], b.repeat[cl.i] = 0, false
		cl.ch.base = &stored
		return true, true, nil
	}
}

// parseReply reads cas.lua's reply: its kind, and the profile's HGETALL when it has one.
func parseReply(reply any) (kind string, hash []any, err error) {
	switch r := reply.(type) {
	case string:
		if r == replyApplied || r == replyDuplicate {
			return r, nil, nil
		}
	case []any:
		if len(r) == 2 {
			kind, _ := r[0].(string)
			hash, ok := r[1].([]any)
			if ok && (kind == replyDuplicate || kind == replyStale) {
				return kind, hash, nil
			}
		}
	}
	return "", nil, fmt.Errorf("unexpected script reply %v", reply)
}

// finish records an event's result.
func (b *batch) finish(i int, p *profile.Profile, applied bool) {
	b.res[i] = store.Result{Profile: p, Applied: applied}
	b.done++
}

// fail fails ch's pending events from the k-th on with err (the later ones because they must
// not be applied before it) and marks the chain's stored state unknown.
func (b *batch) fail(ch *chain, k int, err error) {
	for n, i := range ch.pending[k:] {
		if n == 0 {
			b.res[i].Err = err
			continue
		}
		b.res[i].Err = fmt.Errorf("apply event %q: an earlier event of the user failed: %w", b.evs[i].ID, err)
	}
	ch.pending = nil
	ch.failed = true
}

// allFailed reports whether every command of a pipeline failed, other than for a missing script
// (the batch is then retried with EVAL).
func allFailed(cmds []goredis.Cmder) bool {
	for _, c := range cmds {
		if err := c.Err(); err == nil || goredis.HasErrorPrefix(err, "NOSCRIPT") {
			return false
		}
	}
	return true
}
