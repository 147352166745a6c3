// Package trace sets up OpenTelemetry tracing for the segedge programs and carries trace context
// across NATS, so one event can be followed from the beacon (or the origin's ingest API) through
// the EVENTS stream, the origin's worker (profile update, evaluation, delta publish) and the
// DELTAS stream to each edge's replica.
//
// Tracing is off by default. Off, every helper here returns at once without allocating (Start
// hands back the caller's context and a no-op span), so the edge's request path costs what it
// cost before. On, spans are exported over OTLP/HTTP (Jaeger, Tempo and the OpenTelemetry
// Collector accept it) in batches, sampled by trace id with the configured ratio; a span whose
// parent was sampled is always sampled, so a trace is never cut in the middle.
package trace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	oteltrace "go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/segedge/segedge/core/config"
)

// Config is the tracing part of a program's settings.
type Config struct {
	// Endpoint is the OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (SEGEDGE_OTLP_ENDPOINT). A
	// URL without a path gets the standard /v1/traces. Empty: the standard
	// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT if set, else tracing is off.
	Endpoint string
	// SampleRatio is the share of new traces recorded, 0 to 1 (SEGEDGE_TRACE_SAMPLE_RATIO).
	SampleRatio float64
}

// Flags defines the tracing settings on s, writing into c.
func Flags(s *config.Set, c *Config) {
	s.String(&c.Endpoint, "otlp-endpoint", "SEGEDGE_OTLP_ENDPOINT", "", "OTLP/HTTP endpoint traces are sent to, e.g. http://127.0.0.1:4318 (Jaeger, Tempo, the OpenTelemetry Collector); empty: OTEL_EXPORTER_OTLP_ENDPOINT if set, else tracing is off")
	s.Float(&c.SampleRatio, "trace-sample-ratio", "SEGEDGE_TRACE_SAMPLE_RATIO", 1, "share of new traces recorded when tracing is on, 0 to 1 (a trace started upstream with its sampled flag is always followed)")
}

// Validate checks the settings without touching the network.
func (c *Config) Validate() error {
	var errs []error
	if c.Endpoint != "" {
		errs = append(errs, config.CheckURL("SEGEDGE_OTLP_ENDPOINT", c.Endpoint, "http", "https"))
	}
	if c.SampleRatio < 0 || c.SampleRatio > 1 || c.SampleRatio != c.SampleRatio {
		errs = append(errs, fmt.Errorf("SEGEDGE_TRACE_SAMPLE_RATIO %v: want a number from 0 to 1", c.SampleRatio))
	}
	return errors.Join(errs...)
}

// enabled is true while a provider is installed; read on every Start.
var (
	enabled  atomic.Bool
	provider atomic.Pointer[providerBox]
)

type providerBox struct{ tp oteltrace.TracerProvider }

// Enabled reports whether tracing is on in this process.
func Enabled() bool { return enabled.Load() }

var noopSpan oteltrace.Span = noop.Span{}

// Setup turns tracing on if an endpoint is configured (cfg.Endpoint or the standard
// OTEL_EXPORTER_OTLP_* variables) and returns the function that flushes and stops it; with no
// endpoint it does nothing and returns a shutdown that does nothing. service names the program
// ("segedge-origin", "segedge-edge"); export failures are logged on log at warn level, at most
// once a minute.
func Setup(ctx context.Context, cfg Config, service string, log *slog.Logger) (shutdown func(context.Context) error, err error) {
	none := func(context.Context) error { return nil }
	var opts []otlptracehttp.Option
	switch {
	case cfg.Endpoint != "":
		u, err := url.Parse(cfg.Endpoint)
		if err != nil {
			return none, fmt.Errorf("SEGEDGE_OTLP_ENDPOINT: %w", err)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/traces"
		}
		opts = append(opts, otlptracehttp.WithEndpointURL(u.String()))
	case os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "":
		// The exporter reads the standard variables itself (and their headers, TLS, timeout).
	default:
		return none, nil
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return none, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attribute.String("service.name", service)))
	if err != nil {
		return none, fmt.Errorf("trace resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(2*time.Second)),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
	)
	restore := Install(tp)
	otel.SetErrorHandler(errorLogger(log))
	log.Info("tracing on", "service", service, "sample_ratio", cfg.SampleRatio)
	return func(ctx context.Context) error {
		err := tp.Shutdown(ctx)
		restore()
		if err != nil {
			return fmt.Errorf("flush traces: %w", err)
		}
		return nil
	}, nil
}

// Install makes tp the process's tracer provider and turns tracing on (tests install one with an
// in-memory exporter); the returned function turns it off again.
// The provider is also made the OpenTelemetry global one, for libraries that trace by themselves.
func Install(tp oteltrace.TracerProvider) (restore func()) {
	provider.Store(&providerBox{tp: tp})
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagator)
	enabled.Store(true)
	return func() {
		enabled.Store(false)
		provider.Store(nil)
		otel.SetTracerProvider(noop.NewTracerProvider())
	}
}

// Tracer returns the named tracer of the installed provider ("segedge/origin/engine"...), a
// no-op one when tracing is off.
func Tracer(name string) oteltrace.Tracer {
	if b := provider.Load(); b != nil {
		return b.tp.Tracer(name)
	}
	return noop.Tracer{}
}

// Start starts a span named name as a child of the span in ctx. With tracing off it returns ctx
// itself and a no-op span, without allocating.
func Start(ctx context.Context, tracer string, name string, kind oteltrace.SpanKind) (context.Context, oteltrace.Span) {
	b := provider.Load()
	if b == nil {
		return ctx, noopSpan
	}
	return b.tp.Tracer(tracer).Start(ctx, name, oteltrace.WithSpanKind(kind))
}

// NoSpan is the no-op span (ending it or setting attributes on it does nothing), without
// allocating.
func NoSpan() oteltrace.Span { return noopSpan }

// End records err on span (if any) and ends it.
func End(span oteltrace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// propagator is W3C Trace Context: the traceparent and tracestate headers.
var propagator = propagation.TraceContext{}

// Header adapts nats.Header (a NATS message's headers) to propagation.TextMapCarrier. NATS
// header names are case-sensitive; W3C's are lower-case, which is what this writes and reads.
type Header nats.Header

// Get returns the first value of key.
func (h Header) Get(key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set replaces the values of key.
func (h Header) Set(key, value string) { h[key] = []string{value} }

// Keys lists the header names.
func (h Header) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

var _ propagation.TextMapCarrier = Header(nil)

// Inject writes the trace context of ctx into a NATS message's headers (nothing when tracing is
// off or ctx has no span). h must not be nil.
func Inject(ctx context.Context, h nats.Header) {
	if !enabled.Load() {
		return
	}
	propagator.Inject(ctx, Header(h))
}

// Extract returns ctx with the remote span context found in a NATS message's headers, if any.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if !enabled.Load() || h == nil {
		return ctx
	}
	return propagator.Extract(ctx, Header(h))
}

// InjectHTTP and ExtractHTTP do the same for HTTP headers (anything with Get/Set/Keys, like
// http.Header via propagation.HeaderCarrier).
func InjectHTTP(ctx context.Context, c propagation.TextMapCarrier) {
	if enabled.Load() {
		propagator.Inject(ctx, c)
	}
}

// ExtractHTTP returns ctx with the remote span context carried in c, if any.
func ExtractHTTP(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	if !enabled.Load() {
		return ctx
	}
	return propagator.Extract(ctx, c)
}

// TraceID returns the hex trace id of the span in ctx, "" if none (for logs).
func TraceID(ctx context.Context) string {
	sc := oteltrace.SpanContextFromContext(ctx)
	if !sc.HasTraceID() {
		return ""
	}
	return sc.TraceID().String()
}

// Stop flushes and stops tracing with shutdown (from Setup), waiting at most 5 seconds for the
// collector; a failure is logged, not returned, since the program is exiting anyway.
func Stop(shutdown func(context.Context) error, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		log.Warn("traces not flushed", "err", err)
	}
}

// errorLogger sends OpenTelemetry's internal errors (a collector that cannot be reached) to log,
// at most one line a minute, with the number of errors since the last line.
func errorLogger(log *slog.Logger) otel.ErrorHandlerFunc {
	var last atomic.Int64
	var n atomic.Int64
	return func(err error) {
		n.Add(1)
		now := time.Now().UnixNano()
		if prev := last.Load(); now-prev < int64(time.Minute) || !last.CompareAndSwap(prev, now) {
			return
		}
		log.Warn("traces not exported", "err", err, "errors", n.Swap(0))
	}
}
