package replica

import (
	"context"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/trace"
)

// tracerName names the replica's spans' instrumentation scope.
const tracerName = "segedge/edge/replica"

// applyTraced applies a delta from the stream. With tracing on, a delta that carries a trace
// context (the origin's delta.publish span: in the delta itself, or for a single-delta message
// of an older origin, in the message headers h) is applied inside a "replica.apply" span of that
// trace, so one event is followed to every edge. Deltas replayed at start-up (before the replica
// caught up) are applied without spans: a restart must not flood the collector with old traces.
func (r *Replica) applyTraced(h nats.Header, d *delta.Delta) bool {
	if !trace.Enabled() || !r.caught.Load() {
		return r.Apply(d)
	}
	ctx := context.Background()
	if d.TraceParent != "" {
		ctx = trace.ExtractHTTP(ctx, propagation.MapCarrier{"traceparent": d.TraceParent})
	} else if h != nil {
		ctx = trace.Extract(ctx, h)
	}
	if !oteltrace.SpanContextFromContext(ctx).IsValid() {
		return r.Apply(d)
	}
	_, span := trace.Start(ctx, tracerName, "replica.apply", oteltrace.SpanKindConsumer)
	applied := r.Apply(d)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("messaging.system", "nats"), attribute.Bool("segedge.applied", applied),
			attribute.String("segedge.cause", string(d.Cause)), attribute.Int64("segedge.delta_version", int64(d.Version)))
	}
	span.End()
	return applied
}
