package server

import (
	"context"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/segedge/segedge/core/trace"
)

const tracerName = "segedge/origin/server"

// traceIngest starts the "origin.ingest" span of POST /v1/events. A backend holding the write key
// may send a W3C traceparent header: the span continues that trace, so a backend's own trace
// reaches the edges. With tracing off it returns the request's context and a no-op span.
func traceIngest(r *http.Request) (context.Context, oteltrace.Span) {
	ctx := trace.ExtractHTTP(r.Context(), propagation.HeaderCarrier(r.Header))
	return trace.Start(ctx, tracerName, "origin.ingest", oteltrace.SpanKindServer)
}

// traceIngested records the answer on the ingest span.
func traceIngested(span oteltrace.Span, code, accepted int) {
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attribute.String("http.request.method", "POST"), attribute.String("http.route", "/v1/events"),
		attribute.Int("http.response.status_code", code), attribute.Int("segedge.events_accepted", accepted))
	if code >= 500 {
		span.SetStatus(codes.Error, strconv.Itoa(code))
	}
}
