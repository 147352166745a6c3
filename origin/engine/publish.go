package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/trace"
)

// Publishing deltas: one DELTAS message per flush (delta format 1, core/delta), split only when
// it would exceed delta.MaxBatchBytes, instead of one message per delta. Every message costs
// nats-server about as much CPU as the origin spends on the event, so at 10k events/s one
// message per event saturated a 2-core machine.
//
// Exactly once on DELTAS. Before batching, a delta republished after a crash (the membership
// record not yet written, so the same version again) was dropped by JetStream's duplicate window
// because its message id was user/version. A batch's id names all its deltas in order
// (delta.BatchMsgID), which dedupes a batch retried with the same deltas but not one regrouped
// after a crash (the redelivered events arrive in other batches). So each partition worker keeps
// the versions it knows are on DELTAS but not recorded (deltaTail) and leaves out any delta not
// newer, which is what JetStream's dedup did per delta. It learns them from its own publishes
// that were not recorded yet (a flush that failed after publishing) and, when it starts or takes
// the partition, by reading back the partition's last flush on DELTAS (tailVersions): only the
// last flush can be unrecorded, since a flush writes the records before the next one starts:
// once its deltas are out, a flush retries writing the records in place until it succeeds or
// the worker stops (Engine.record), on every path (events, expiries, tasks, erasures).
// Left: an origin that dies while catching up after another one died, having published deltas
// of its own meanwhile, hides the first one's unrecorded deltas from the next; those versions can
// then appear twice on DELTAS (edges drop the second as stale, as any redelivery).

// partHeader marks the k-th of n messages of one flush (n > 1 only when a flush was split), so
// tailVersions knows how far back the last flush goes.
const partHeader = "Segedge-Delta-Part"

// maxTailWalk bounds how many stream messages tailVersions reads back to find the earlier
// messages of a split flush (other partitions' messages sit between them).
const maxTailWalk = 4096

// deltaTail is, per partition, what the worker knows of deltas on DELTAS that may not be
// recorded in the membership store yet.
type deltaTail struct {
	mu    sync.Mutex
	parts map[int]*partTail
}

type partTail struct {
	// known: pending is complete. False when the worker has not read the partition's last
	// flush back yet, or a publish failed without telling which messages JetStream stored.
	known bool
	// pending[user] is the highest version of the user on DELTAS that may not be recorded.
	pending map[string]uint64
}

func (t *deltaTail) part(p int) *partTail {
	if t.parts == nil {
		t.parts = map[int]*partTail{}
	}
	pt := t.parts[p]
	if pt == nil {
		pt = &partTail{pending: map[string]uint64{}}
		t.parts[p] = pt
	}
	return pt
}

// filter returns the deltas of ds newer than what is pending, and whether pending is known.
func (t *deltaTail) filter(p int, ds []*delta.Delta) ([]*delta.Delta, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pt := t.part(p)
	if !pt.known {
		return nil, false
	}
	if len(pt.pending) == 0 {
		return ds, true
	}
	out := make([]*delta.Delta, 0, len(ds))
	for _, d := range ds {
		if d.Version > pt.pending[d.UserID] {
			out = append(out, d)
		}
	}
	return out, true
}

// learn adds versions read back from DELTAS to pending and makes it known.
func (t *deltaTail) learn(p int, have map[string]uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pt := t.part(p)
	for u, v := range have {
		pt.pending[u] = max(pt.pending[u], v)
	}
	pt.known = true
}

// published records ds as on DELTAS and not recorded yet; with ok false (JetStream did not
// acknowledge every message), pending is no longer known.
func (t *deltaTail) published(p int, ds []*delta.Delta, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pt := t.part(p)
	if !ok {
		pt.known = false
		return
	}
	for _, d := range ds {
		pt.pending[d.UserID] = max(pt.pending[d.UserID], d.Version)
	}
}

// recorded forgets what the membership records written for ds now cover.
func (t *deltaTail) recorded(p int, ds []*delta.Delta) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pt := t.part(p)
	for _, d := range ds {
		if v, ok := pt.pending[d.UserID]; ok && v <= d.Version {
			delete(pt.pending, d.UserID)
		}
	}
}

// forget makes the next flush of partition p read its last flush back from DELTAS.
func (t *deltaTail) forget(p int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.part(p).known = false
}

// forgetDeltaTail is to be called when this origin (re)takes partition p: another origin may
// have published on it meanwhile.
func (e *Engine) forgetDeltaTail(p int) { e.tail.forget(p) }

// publishAll publishes ds in order (ctxs[i] is the trace context of ds[i]'s cause) as one or a
// few messages, without waiting for each ack, then waits for all of them. Deltas already on
// DELTAS and not recorded (see deltaTail) are left out and returned: DELTAS holds an earlier
// computation of those versions, whose feature values may differ from these.
func (e *Engine) publishAll(ctx context.Context, p int, ds []*delta.Delta, ctxs []context.Context) (left []*delta.Delta, err error) {
	if len(ds) == 0 {
		return nil, nil
	}
	spans := make([]oteltrace.Span, len(ds))
	for i, d := range ds {
		var tctx context.Context
		tctx, spans[i] = traceDelta(ctxs[i], p, d)
		d.TraceParent = traceParent(tctx)
	}
	defer func() {
		for _, span := range spans {
			trace.End(span, err)
		}
	}()
	send, known := e.tail.filter(p, ds)
	if !known {
		if err = e.readTail(ctx, p); err != nil {
			return nil, err
		}
		send, _ = e.tail.filter(p, ds)
	}
	if n := len(ds) - len(send); n > 0 {
		e.cfg.Log.Info("deltas already on DELTAS not published again", "partition", p, "deltas", n)
		for _, d := range ds {
			if !slices.Contains(send, d) {
				left = append(left, d)
			}
		}
	}
	batches, err := delta.EncodeBatches(send, 0)
	if err != nil {
		return nil, err
	}
	acked := false
	defer func() { e.tail.published(p, send, acked) }()
	futs := make([]jetstream.PubAckFuture, 0, len(batches))
	for k, b := range batches {
		msg := &nats.Msg{Subject: e.cfg.Topology.DeltaSubject(p), Data: b.Body, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, delta.BatchMsgID(b.Deltas))
		if len(batches) > 1 {
			msg.Header.Set(partHeader, strconv.Itoa(k+1)+"/"+strconv.Itoa(len(batches)))
		}
		var f jetstream.PubAckFuture
		if f, err = e.cfg.JS.PublishMsgAsync(msg); err != nil {
			e.m.publishErrors.Inc()
			err = fmt.Errorf("publish delta batch: %w", err)
			return nil, err
		}
		futs = append(futs, f)
	}
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	for k, f := range futs {
		select {
		case <-f.Ok():
			e.m.deltaBatchSize.Observe(float64(len(batches[k].Deltas)))
		case perr := <-f.Err():
			e.m.publishErrors.Inc()
			err = fmt.Errorf("publish delta batch: %w", perr)
			return nil, err
		case <-timer.C:
			e.m.publishErrors.Inc()
			err = errors.New("publish delta batch: no ack from JetStream within 5s")
			return nil, err
		case <-ctx.Done():
			err = fmt.Errorf("publish delta batch: %w", ctx.Err())
			return nil, err
		}
	}
	acked = true
	// Deltas left out because they were already on DELTAS count as published, as JetStream's
	// duplicates did before.
	for _, d := range ds {
		e.published(d)
	}
	return left, nil
}

// published counts a stored delta.
func (e *Engine) published(d *delta.Delta) {
	e.m.deltas.WithLabelValues(string(d.Cause)).Inc()
	if d.AcceptedAt > 0 {
		e.m.ingestToDelta.Observe(float64(time.Now().UnixMilli()-d.AcceptedAt) / 1000)
	}
	if d.Due > 0 {
		e.m.expiryLateness.Observe(float64(time.Now().UnixMilli()-d.Due) / 1000)
	}
}

// readTail reads partition p's last flush back from DELTAS into the tail, leaving out the
// users whose membership record already has that version.
func (e *Engine) readTail(ctx context.Context, p int) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	have, err := e.tailVersions(rctx, p)
	if err != nil {
		return fmt.Errorf("read the last deltas of partition %d: %w", p, err)
	}
	if len(have) > 0 {
		users := make([]string, 0, len(have))
		for u := range have {
			users = append(users, u)
		}
		rs, err := e.readRecords(rctx, users)
		if err != nil {
			return fmt.Errorf("read the last deltas of partition %d: %w", p, err)
		}
		for i, u := range users {
			if rs[i].Version >= have[u] {
				delete(have, u)
			}
		}
	}
	e.tail.learn(p, have)
	return nil
}

// tailVersions reads the message(s) of the last flush on partition p's subject and returns the
// highest version of each user in them.
func (e *Engine) tailVersions(ctx context.Context, p int) (map[string]uint64, error) {
	s, err := e.cfg.JS.Stream(ctx, e.cfg.Topology.DeltasStream())
	if err != nil {
		return nil, err
	}
	subj := e.cfg.Topology.DeltaSubject(p)
	m, err := s.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	have := map[string]uint64{}
	add := func(m *jetstream.RawStreamMsg) {
		ds, _ := delta.DecodeBatch(m.Data) // what an edge cannot read, it never applied either
		for _, d := range ds {
			have[d.UserID] = max(have[d.UserID], d.Version)
		}
	}
	add(m)
	part := partOf(m.Header)
	for seq, walked := m.Sequence, 0; part > 1 && seq > 1 && walked < maxTailWalk; walked++ {
		seq--
		prev, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // deleted or trimmed
		}
		if err != nil {
			return nil, err
		}
		if prev.Subject != subj {
			continue
		}
		if partOf(prev.Header) != part-1 {
			break // the earlier parts were not stored: nothing more of that flush
		}
		add(prev)
		part--
	}
	return have, nil
}

// partOf returns k of a message's "k/n" part header, 1 when there is none.
func partOf(h nats.Header) int {
	v := h.Get(partHeader)
	k, _, ok := strings.Cut(v, "/")
	if !ok {
		return 1
	}
	n, err := strconv.Atoi(k)
	if err != nil || n < 1 {
		return 1
	}
	return n
}
