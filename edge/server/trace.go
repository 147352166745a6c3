package server

import (
	"context"
	"strconv"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/segedge/segedge/core/trace"
	"github.com/segedge/segedge/edge/proxy"
)

// Request tracing. With tracing off (the default) none of this runs: handler returns e.handle
// itself, and the span helpers return at their first line without allocating, so the request
// path costs what it cost before (BenchmarkPersonalizedHit measures it).
//
// With tracing on, every public request is an "edge.request" span, a new trace: a traceparent
// sent by a visitor is not trusted (it could force every request to be sampled). Its children:
// "edge.cache" (the proxy and its cache, with the cache's answer), inside it "edge.upstream"
// (each request to the site, whose own server continues the trace from the traceparent header
// the edge sends), "edge.eval" (the ruleset evaluated for the visitor) and "edge.splice"
// (writing the personalized page); a beacon's "ingest.publish" continues to the origin.

const tracerName = "segedge/edge/server"

// spanKey is the fasthttp user value holding the request's current trace context.
type spanKey struct{}

// handler is the public listener's handler: e.handle, wrapped in a request span when tracing
// is on.
func (e *edge) handler() fasthttp.RequestHandler {
	if !trace.Enabled() {
		return e.handle
	}
	return e.handleTraced
}

func (e *edge) handleTraced(ctx *fasthttp.RequestCtx) {
	// Not a child of anything the visitor sent: the edge starts the trace.
	ctx.Request.Header.Del("traceparent")
	ctx.Request.Header.Del("tracestate")
	sctx, span := trace.Start(context.Context(ctx), tracerName, "edge.request", oteltrace.SpanKindServer)
	ctx.SetUserValue(spanKey{}, sctx)
	e.handle(ctx)
	if span.IsRecording() {
		code := ctx.Response.StatusCode()
		span.SetAttributes(attribute.String("http.request.method", string(ctx.Method())),
			attribute.String("http.route", route(ctx.Path())),
			attribute.Int("http.response.status_code", code))
		if code >= 500 {
			span.SetStatus(codes.Error, strconv.Itoa(code))
		}
	}
	span.End()
}

// route names the endpoint for the span, never the visitor's URL (it may carry personal data).
func route(path []byte) string {
	switch p := string(path); {
	case p == "/v1/events", p == "/segedge.js", p == "/user/segments", p == "/user/segments/stream":
		return p
	case len(p) > len("/user/slots/") && p[:len("/user/slots/")] == "/user/slots/":
		return "/user/slots/{name}"
	default:
		return "site"
	}
}

// spanContext is the request's current trace context, or ctx itself with tracing off.
func spanContext(ctx *fasthttp.RequestCtx) context.Context {
	if !trace.Enabled() {
		return ctx
	}
	if c, ok := ctx.UserValue(spanKey{}).(context.Context); ok {
		return c
	}
	return ctx
}

// startSpan starts a child span of the request's current one: a no-op span with tracing off or
// when the request was not sampled (its children would not be recorded either).
func startSpan(ctx *fasthttp.RequestCtx, name string) oteltrace.Span {
	if !trace.Enabled() {
		return trace.NoSpan()
	}
	parent := spanContext(ctx)
	if !sampled(parent) {
		return trace.NoSpan()
	}
	_, span := trace.Start(parent, tracerName, name, oteltrace.SpanKindInternal)
	return span
}

// sampled reports whether the span in ctx is recorded.
func sampled(ctx context.Context) bool {
	return oteltrace.SpanContextFromContext(ctx).IsSampled()
}

// proxied runs the proxy (cache, upstream, render) inside an "edge.cache" span, whose context
// goes to the upstream in the traceparent header, so upstream spans are its children.
func (e *edge) proxied(ctx *fasthttp.RequestCtx) {
	if !trace.Enabled() {
		e.proxy.Handle(ctx)
		return
	}
	parent := spanContext(ctx)
	if !sampled(parent) {
		// Not sampled: no spans, but the site learns that (the flag is in the traceparent).
		trace.InjectHTTP(parent, requestHeader{&ctx.Request.Header})
		e.proxy.Handle(ctx)
		return
	}
	sctx, span := trace.Start(parent, tracerName, "edge.cache", oteltrace.SpanKindInternal)
	ctx.SetUserValue(spanKey{}, sctx)
	trace.InjectHTTP(sctx, requestHeader{&ctx.Request.Header})
	e.proxy.Handle(ctx)
	ctx.SetUserValue(spanKey{}, parent)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("segedge.cache", string(ctx.Response.Header.Peek(proxy.CacheHeader))))
	}
	span.End()
}

// traceUpstream is the proxy's OnUpstream hook: an "edge.upstream" client span per request to
// the site, child of the span in the request's traceparent header (the request's "edge.cache"),
// and the header rewritten to name it. Background refreshes continue the trace that began them.
func traceUpstream(req *fasthttp.Request) func(*fasthttp.Response, error) {
	if !trace.Enabled() {
		return nil
	}
	h := requestHeader{&req.Header}
	parent := trace.ExtractHTTP(context.Background(), h)
	if sc := oteltrace.SpanContextFromContext(parent); sc.IsValid() && !sc.IsSampled() {
		return nil // an unsampled request: its traceparent goes upstream as it is
	}
	sctx, span := trace.Start(parent, tracerName, "edge.upstream", oteltrace.SpanKindClient)
	trace.InjectHTTP(sctx, h)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("http.request.method", string(req.Header.Method())))
	}
	return func(resp *fasthttp.Response, err error) {
		if err == nil && span.IsRecording() {
			span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode()))
		}
		trace.End(span, err)
	}
}

// requestHeader adapts fasthttp's request headers to propagation.TextMapCarrier.
type requestHeader struct{ h *fasthttp.RequestHeader }

func (c requestHeader) Get(key string) string { return string(c.h.Peek(key)) }
func (c requestHeader) Set(key, value string) { c.h.Set(key, value) }
func (c requestHeader) Keys() []string {
	var keys []string
	for k := range c.h.All() {
		keys = append(keys, string(k))
	}
	return keys
}

// traceEval ends the evaluation's span; known says the replica held the visitor.
func traceEval(span oteltrace.Span, version uint64, known bool, err error) {
	if span.IsRecording() {
		span.SetAttributes(attribute.Int64("segedge.ruleset", int64(version)), attribute.Bool("segedge.known_visitor", known))
	}
	trace.End(span, err)
}
