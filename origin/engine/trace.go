package engine

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/trace"
)

// tracerName names the engine's spans' instrumentation scope.
const tracerName = "segedge/origin/engine"

// traceEvent continues the trace an event's publisher put in its message headers (the edge's
// beacon or the origin's ingest API) with the worker's span for that event. With tracing off it
// returns ctx and a no-op span.
func traceEvent(ctx context.Context, p int, msg jetstream.Msg) (context.Context, oteltrace.Span) {
	if !trace.Enabled() {
		return trace.Start(ctx, tracerName, "", oteltrace.SpanKindConsumer)
	}
	ctx = trace.Extract(ctx, msg.Headers())
	ctx, span := trace.Start(ctx, tracerName, "engine.event", oteltrace.SpanKindConsumer)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("messaging.system", "nats"), attribute.Int("segedge.partition", p))
		if meta, err := msg.Metadata(); err == nil {
			span.SetAttributes(attribute.Int64("messaging.nats.stream_sequence", int64(meta.Sequence.Stream)),
				attribute.Int64("segedge.deliveries", int64(meta.NumDelivered)))
		}
	}
	return ctx, span
}

// traceApplied ends the profile update's span: applied is false for a duplicate event id.
func traceApplied(span oteltrace.Span, applied bool, err error) {
	if span.IsRecording() {
		span.SetAttributes(attribute.Bool("segedge.applied", applied))
	}
	trace.End(span, err)
}

// traceEvaluated ends the ruleset evaluation's span.
func traceEvaluated(span oteltrace.Span, version uint64, members int, err error) {
	if span.IsRecording() {
		span.SetAttributes(attribute.Int64("segedge.ruleset", int64(version)), attribute.Int("segedge.members", members))
	}
	trace.End(span, err)
}

// traceDelta starts the span of a delta's publication; publishAll puts its context in the delta
// (traceParent), so each edge's replica continues the trace.
func traceDelta(ctx context.Context, p int, d *delta.Delta) (context.Context, oteltrace.Span) {
	ctx, span := trace.Start(ctx, tracerName, "delta.publish", oteltrace.SpanKindProducer)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("messaging.system", "nats"), attribute.Int("segedge.partition", p),
			attribute.String("segedge.cause", string(d.Cause)), attribute.Int64("segedge.delta_version", int64(d.Version)),
			attribute.Int("segedge.entered", len(d.Entered)), attribute.Int("segedge.exited", len(d.Exited)))
	}
	return ctx, span
}

// traceParent is the W3C traceparent of the span in ctx, "" when tracing is off or ctx has no
// sampled span. It travels inside each delta: many deltas share one DELTAS message, and so its
// headers.
func traceParent(ctx context.Context) string {
	if !trace.Enabled() || !oteltrace.SpanContextFromContext(ctx).IsValid() {
		return ""
	}
	c := propagation.MapCarrier{}
	trace.InjectHTTP(ctx, c)
	return c["traceparent"]
}
