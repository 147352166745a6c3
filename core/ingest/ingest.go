// Package ingest is the one way events enter segedge: validated events are appended to the
// JetStream stream EVENTS, on the partition of their user, and an event counts as accepted only
// once JetStream has acknowledged storing it. The origin's POST /v1/events and the edge's browser
// beacon both use it, so both give the same guarantees and the same answers.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/trace"
)

// Publisher appends events to EVENTS.
type Publisher struct {
	js         jetstream.JetStream
	topo       bus.Topology
	timeout    time.Duration
	maxPayload int // the server's max_payload; 0: unknown
	accepted   prometheus.Counter
	rejected   *prometheus.CounterVec
	publishDur prometheus.Histogram
}

// Metrics are registered once per process by the program that owns the registry; component is
// "origin" or "edge", so the names read segedge_origin_events_accepted_total and so on.
func NewPublisher(js jetstream.JetStream, topo bus.Topology, component string, reg prometheus.Registerer) *Publisher {
	p := &Publisher{
		js:      js,
		topo:    topo,
		timeout: 5 * time.Second,
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "segedge_" + component + "_events_accepted_total",
			Help: "Events stored in the EVENTS stream (answered 202).",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "segedge_" + component + "_events_rejected_total",
			Help: "Events refused, by reason: invalid (a field failed validation), too_large (body or batch over the limit), malformed (not JSON/NDJSON), unauthorized, unavailable (JetStream did not store it), rate_limited.",
		}, []string{"reason"}),
		publishDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "segedge_" + component + "_events_publish_duration_seconds",
			Help:    "Time to store one request's events in JetStream.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
	}
	if nc := js.Conn(); nc != nil {
		p.maxPayload = int(nc.MaxPayload())
	}
	for _, r := range []string{"invalid", "too_large", "malformed", "unauthorized", "unavailable", "rate_limited"} {
		p.rejected.WithLabelValues(r)
	}
	reg.MustRegister(p.accepted, p.rejected, p.publishDur)
	return p
}

// Reject counts refused events by reason (see the metric's help for the reasons).
func (p *Publisher) Reject(reason string, n int) {
	if n > 0 {
		p.rejected.WithLabelValues(reason).Add(float64(n))
	}
}

// DefaultMaxMessageBytes bounds one EVENTS message: a partition's events of one request are
// split into several messages past it (or past the server's max_payload, if smaller).
const DefaultMaxMessageBytes = 256 << 10

// Publish appends events and waits for JetStream's acknowledgements. It returns, per event, nil
// when stored or the error.
//
// The events of one call are grouped by partition into one message per partition (more when a
// group outgrows DefaultMaxMessageBytes), in the order given, in the EVENTS message format
// (event.DecodeMessage): JetStream's cost is per message, so a request of 50 events costs a
// handful of stores and acks instead of 50. An event is stored iff its message was. The message
// id is derived from its events' ids (event.MessageID), so a client retrying a request within
// JetStream's duplicate window does not store its events twice. With tracing on, each message
// carries the trace context of the publish span in its headers, so the origin's worker
// continues the trace.
func (p *Publisher) Publish(ctx context.Context, events []event.Event, acceptedAt time.Time) []error {
	t0 := time.Now()
	ctx, span := trace.Start(ctx, "segedge/core/ingest", "ingest.publish", oteltrace.SpanKindProducer)
	defer span.End()
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	errs := make([]error, len(events))
	msgs := p.group(events, acceptedAt, errs)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("messaging.system", "nats"), attribute.Int("segedge.events", len(events)),
			attribute.Int("segedge.messages", len(msgs)))
	}
	futures := make([]jetstream.PubAckFuture, len(msgs))
	perr := make([]error, len(msgs))
	for i, m := range msgs {
		msg := &nats.Msg{Subject: p.topo.EventSubject(m.partition), Data: m.body, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, event.MessageID(m.ids))
		trace.Inject(ctx, msg.Header)
		futures[i], perr[i] = p.js.PublishMsgAsync(msg)
	}
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case <-f.Ok():
		case err := <-f.Err():
			perr[i] = err
		case <-ctx.Done():
			perr[i] = fmt.Errorf("no acknowledgement from JetStream: %w", ctx.Err())
		}
	}
	for i, m := range msgs {
		if perr[i] != nil {
			for _, j := range m.idx {
				errs[j] = perr[i]
			}
		}
	}
	n, failed := 0, 0
	for _, err := range errs {
		if err == nil {
			n++
		} else {
			failed++
		}
	}
	p.accepted.Add(float64(n))
	p.Reject("unavailable", failed)
	if failed > 0 && span.IsRecording() {
		span.SetAttributes(attribute.Int("segedge.events_failed", failed))
		span.SetStatus(codes.Error, "events not stored")
	}
	p.publishDur.Observe(time.Since(t0).Seconds())
	return errs
}

// outMsg is one EVENTS message being built: events idx (indexes into the request) of one
// partition, encoded in body.
type outMsg struct {
	partition int
	idx       []int
	ids       []string
	body      []byte
}

// group encodes events into messages, one per partition in order of first appearance, split
// before a body would pass the size bound. An event that does not encode gets its error in
// errs and is left out.
func (p *Publisher) group(events []event.Event, acceptedAt time.Time, errs []error) []*outMsg {
	limit := p.maxMessageBytes()
	var msgs []*outMsg
	open := make(map[int]*outMsg, p.topo.Partitions)
	// Each message is sized once from how many events its partition gets, instead of growing
	// by doubling (that was 12 % of the bytes the origin allocated).
	parts := make([]int, len(events))
	left := make([]int, p.topo.Partitions) // events of each partition not yet in a message
	for i, ev := range events {
		parts[i] = event.Partition(ev.UserID, p.topo.Partitions)
		left[parts[i]]++
	}
	var scratch []byte
	for i, ev := range events {
		part := parts[i]
		left[part]--
		var err error
		if scratch, err = event.AppendWire(scratch[:0], ev, acceptedAt); err != nil {
			errs[i] = fmt.Errorf("encode event: %w", err)
			continue
		}
		m := open[part]
		if m != nil && len(m.body)+1+len(scratch) > limit {
			m = nil // full: later events of this partition go into a new message, after it
		}
		if m == nil {
			n := left[part] + 1
			m = &outMsg{partition: part, idx: make([]int, 0, n), ids: make([]string, 0, n),
				body: make([]byte, 0, min(limit, n*(len(scratch)+len(scratch)/4+1)))}
			open[part] = m
			msgs = append(msgs, m)
		} else {
			m.body = append(m.body, '\n')
		}
		m.body = append(m.body, scratch...)
		m.idx = append(m.idx, i)
		m.ids = append(m.ids, ev.ID)
	}
	return msgs
}

// maxMessageBytes is DefaultMaxMessageBytes, or less when the server's max_payload (minus room
// for the headers) is smaller.
func (p *Publisher) maxMessageBytes() int {
	limit := DefaultMaxMessageBytes
	if p.maxPayload > 0 {
		limit = min(limit, p.maxPayload-1024)
	}
	return max(limit, 1024)
}

// Result is the JSON answer to an ingest request.
type Result struct {
	Accepted int                `json:"accepted"`
	Rejected []event.FieldError `json:"rejected,omitempty"`
	Error    string             `json:"error,omitempty"`
}

// Handle decodes a request body, publishes the good events and returns the HTTP status and
// answer: 202 when every event was stored, 207-style partial success as 202 with the rejected
// ones listed, 400/413 for a request refused as a whole, 503 when JetStream stored none.
func (p *Publisher) Handle(ctx context.Context, body []byte, contentType string, lim event.Limits, now time.Time) (int, Result) {
	events, fieldErrs, err := event.Decode(body, contentType, lim, now)
	return p.HandleDecoded(ctx, events, fieldErrs, err, now)
}

// HandleDecoded is Handle for a body the caller already decoded with event.Decode (the edge's
// beacon counts the events for its rate limit first), so it is not decoded twice.
func (p *Publisher) HandleDecoded(ctx context.Context, events []event.Event, fieldErrs []event.FieldError, err error, now time.Time) (int, Result) {
	if err != nil {
		code, reason := 400, "malformed"
		if errors.Is(err, event.ErrBodyTooLarge) || errors.Is(err, event.ErrBatchTooLarge) {
			code, reason = 413, "too_large"
		}
		p.Reject(reason, 1)
		return code, Result{Error: err.Error()}
	}
	p.Reject("invalid", len(fieldErrs))
	res := Result{Rejected: fieldErrs}
	if len(events) == 0 {
		res.Error = "no valid events"
		return 400, res
	}
	// Map each published event back to its index in the request for the answer.
	idx := make([]int, 0, len(events))
	bad := make(map[int]bool, len(fieldErrs))
	for _, fe := range fieldErrs {
		bad[fe.Index] = true
	}
	for i := 0; len(idx) < len(events); i++ {
		if !bad[i] {
			idx = append(idx, i)
		}
	}
	for i, perr := range p.Publish(ctx, events, now) {
		if perr == nil {
			res.Accepted++
			continue
		}
		res.Rejected = append(res.Rejected, event.FieldError{Index: idx[i], Reason: "not stored: " + perr.Error()})
	}
	if res.Accepted == 0 {
		res.Error = "events could not be stored; retry"
		return 503, res
	}
	return 202, res
}

// AcceptedCounter is the counter of accepted events, for tests and dashboards in-process.
func (p *Publisher) AcceptedCounter() prometheus.Counter { return p.accepted }
