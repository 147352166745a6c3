package server

import (
	"context"
	"net"
	"testing"

	"github.com/valyala/fasthttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/segedge/segedge/core/trace"
	"github.com/segedge/segedge/edge/proxy"
)

func TestHandlerIsUntouchedWithTracingOff(t *testing.T) {
	e := &edge{}
	if trace.Enabled() {
		t.Fatal("tracing on in a fresh test process")
	}
	var ctx fasthttp.RequestCtx
	ctx.Request.SetRequestURI("/user/slots/hero")
	if c := spanContext(&ctx); c != context.Context(&ctx) {
		t.Fatal("spanContext with tracing off is not the request itself")
	}
	if traceUpstream(&ctx.Request) != nil {
		t.Fatal("the upstream hook does something with tracing off")
	}
	_ = e.handler() // e.handle itself (a method value cannot be compared; the benchmark measures the path)
}

// TestRequestSpans runs requests through the edge's handler with tracing on and an in-memory
// exporter: a cache miss has its upstream span, a personalized hit its evaluation and splice,
// all children of the request's span, and a visitor's traceparent is not continued.
func TestRequestSpans(t *testing.T) {
	e, req := benchEdge(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	restore := trace.Install(tp)
	t.Cleanup(func() { restore(); _ = tp.Shutdown(context.Background()) })
	h := e.handler()

	const visitorTrace = "0af7651916cd43dd8448eb211c80319c"
	for i, tc := range []struct {
		cache string
		spans []string // children of edge.cache, besides
	}{
		{"MISS", []string{"edge.upstream", "edge.eval", "edge.splice"}},
		{"HIT", []string{"edge.eval", "edge.splice"}},
	} {
		exp.Reset()
		var ctx fasthttp.RequestCtx
		r := new(fasthttp.Request)
		req.CopyTo(r)
		r.Header.Set("traceparent", "00-"+visitorTrace+"-b7ad6b7169203331-01")
		ctx.Init(r, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}, nil)
		h(&ctx)
		if got := string(ctx.Response.Header.Peek(proxy.CacheHeader)); got != tc.cache {
			t.Fatalf("request %d: cache %q, want %q", i, got, tc.cache)
		}
		named := map[string]tracetest.SpanStub{}
		for _, s := range exp.GetSpans() {
			if _, dup := named[s.Name]; dup {
				t.Fatalf("request %d: two %s spans", i, s.Name)
			}
			named[s.Name] = s
		}
		root, ok := named["edge.request"]
		if !ok || root.Parent.IsValid() {
			t.Fatalf("request %d: edge.request %+v, want a root span", i, root.Parent)
		}
		if root.SpanContext.TraceID().String() == visitorTrace {
			t.Fatalf("request %d: the visitor's trace was continued", i)
		}
		cache := named["edge.cache"]
		if cache.Parent.SpanID() != root.SpanContext.SpanID() {
			t.Fatalf("request %d: edge.cache is not a child of edge.request", i)
		}
		for _, name := range tc.spans {
			s, ok := named[name]
			if !ok || s.Parent.SpanID() != cache.SpanContext.SpanID() || s.SpanContext.TraceID() != root.SpanContext.TraceID() {
				t.Errorf("request %d: %s missing or not a child of edge.cache; spans: %v", i, name, keys(named))
			}
		}
		if len(named) != 2+len(tc.spans) {
			t.Errorf("request %d: spans %v, want edge.request, edge.cache and %v", i, keys(named), tc.spans)
		}
	}
}

func keys(m map[string]tracetest.SpanStub) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// BenchmarkPersonalizedHitTraced is BenchmarkPersonalizedHit with tracing on and every request
// sampled (spans batched to an exporter that drops them): the cost of tracing when it is on.
func BenchmarkPersonalizedHitTraced(b *testing.B) {
	e, req := benchEdge(b)
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	restore := trace.Install(tp)
	b.Cleanup(func() { restore(); _ = tp.Shutdown(context.Background()) })
	benchHandle(b, e.handler(), req)
}

// BenchmarkPersonalizedHitTracedUnsampled is tracing on with a sampler that records no request
// (as a small SEGEDGE_TRACE_SAMPLE_RATIO does for most): the cost for the requests not sampled.
func BenchmarkPersonalizedHitTracedUnsampled(b *testing.B) {
	e, req := benchEdge(b)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0))),
		sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	restore := trace.Install(tp)
	b.Cleanup(func() { restore(); _ = tp.Shutdown(context.Background()) })
	benchHandle(b, e.handler(), req)
}

func TestUnsampledRequestRecordsNothing(t *testing.T) {
	e, req := benchEdge(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0))), sdktrace.WithSyncer(exp))
	restore := trace.Install(tp)
	t.Cleanup(func() { restore(); _ = tp.Shutdown(context.Background()) })
	h := e.handler()
	for _, want := range []string{"MISS", "HIT"} {
		var ctx fasthttp.RequestCtx
		ctx.Init(req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}, nil)
		h(&ctx)
		if got := string(ctx.Response.Header.Peek(proxy.CacheHeader)); got != want || ctx.Response.StatusCode() != 200 {
			t.Fatalf("cache %q status %d, want %s 200", got, ctx.Response.StatusCode(), want)
		}
	}
	if spans := exp.GetSpans(); len(spans) != 0 {
		t.Fatalf("%d spans recorded with a sampler that records none: %v", len(spans), spans)
	}
}
