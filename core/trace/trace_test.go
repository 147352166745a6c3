package trace

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"off", Config{SampleRatio: 1}, true},
		{"http endpoint", Config{Endpoint: "http://127.0.0.1:4318", SampleRatio: 0.1}, true},
		{"https endpoint with path", Config{Endpoint: "https://otel.example.com/v1/traces", SampleRatio: 0}, true},
		{"no scheme", Config{Endpoint: "127.0.0.1:4318", SampleRatio: 1}, false},
		{"grpc scheme", Config{Endpoint: "grpc://127.0.0.1:4317", SampleRatio: 1}, false},
		{"ratio above 1", Config{SampleRatio: 1.5}, false},
		{"negative ratio", Config{SampleRatio: -0.1}, false},
		{"NaN ratio", Config{SampleRatio: math.NaN()}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// installRecorder turns tracing on with an in-memory exporter for the test.
func installRecorder(t *testing.T) *tracetest.InMemoryExporter {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	restore := Install(tp)
	t.Cleanup(func() { restore(); _ = tp.Shutdown(context.Background()) })
	return exp
}

func TestNATSHeaderCarriesTraceContext(t *testing.T) {
	exp := installRecorder(t)
	ctx, span := Start(context.Background(), "test", "publish", oteltrace.SpanKindProducer)
	h := nats.Header{}
	h.Set("Nats-Msg-Id", "ev-1")
	Inject(ctx, h)
	span.End()
	if h.Get("traceparent") == "" {
		t.Fatalf("no traceparent header after Inject: %v", h)
	}
	if h.Get("Nats-Msg-Id") != "ev-1" {
		t.Fatalf("Inject changed other headers: %v", h)
	}
	// The receiving side: a fresh context, the message's headers.
	rctx := Extract(context.Background(), h)
	_, child := Start(rctx, "test", "consume", oteltrace.SpanKindConsumer)
	child.End()
	spans := exp.GetSpans()
	if len(spans) != 2 {
		t.Fatalf("got %d spans, want 2", len(spans))
	}
	pub, con := spans[0], spans[1]
	if con.SpanContext.TraceID() != pub.SpanContext.TraceID() {
		t.Fatalf("consumer trace %s, publisher trace %s: not one trace", con.SpanContext.TraceID(), pub.SpanContext.TraceID())
	}
	if con.Parent.SpanID() != pub.SpanContext.SpanID() || !con.Parent.IsRemote() {
		t.Fatalf("consumer's parent = %v, want the publisher's span %s (remote)", con.Parent, pub.SpanContext.SpanID())
	}
}

func TestHeaderCarrier(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    nats.Header
		key  string
		want string
	}{
		{"absent", nats.Header{}, "traceparent", ""},
		{"present", nats.Header{"traceparent": {"00-abc-def-01"}}, "traceparent", "00-abc-def-01"},
		{"first of several", nats.Header{"tracestate": {"a=1", "b=2"}}, "tracestate", "a=1"},
		{"case-sensitive like NATS", nats.Header{"Traceparent": {"x"}}, "traceparent", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Header(tc.h).Get(tc.key); got != tc.want {
				t.Fatalf("Get(%q) = %q, want %q", tc.key, got, tc.want)
			}
		})
	}
	h := Header(nats.Header{"a": {"1"}})
	h.Set("b", "2")
	h.Set("a", "3")
	if len(h.Keys()) != 2 || h.Get("a") != "3" || h.Get("b") != "2" {
		t.Fatalf("after Set: %v", h)
	}
}

func TestOffCostsNothing(t *testing.T) {
	if Enabled() {
		t.Fatal("tracing on before any Setup")
	}
	ctx := context.Background()
	h := nats.Header{}
	allocs := testing.AllocsPerRun(1000, func() {
		c, span := Start(ctx, "test", "x", oteltrace.SpanKindInternal)
		Inject(c, h)
		_ = Extract(c, h)
		span.SetAttributes()
		End(span, nil)
		if c != ctx {
			panic("Start changed the context with tracing off")
		}
	})
	if allocs != 0 {
		t.Fatalf("tracing off: %v allocations per span, want 0", allocs)
	}
	if len(h) != 0 {
		t.Fatalf("tracing off wrote headers: %v", h)
	}
}

func TestEndRecordsError(t *testing.T) {
	exp := installRecorder(t)
	_, span := Start(context.Background(), "test", "fails", oteltrace.SpanKindInternal)
	End(span, errors.New("store down"))
	s := exp.GetSpans()
	if len(s) != 1 || s[0].Status.Code != codes.Error || s[0].Status.Description != "store down" {
		t.Fatalf("span status = %+v, want Error \"store down\"", s)
	}
}

// TestSetupExportsOTLPHTTP runs Setup against a real HTTP server that decodes the OTLP protobuf.
func TestSetupExportsOTLPHTTP(t *testing.T) {
	var mu sync.Mutex
	var got []*collectortrace.ExportTraceServiceRequest
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req collectortrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		got = append(got, &req)
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		b, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Write(b)
	}))
	defer srv.Close()

	for _, tc := range []struct {
		name, endpoint, env, path string
	}{
		{"base URL gets /v1/traces", srv.URL, "", "/v1/traces"},
		{"full URL kept", srv.URL + "/custom/traces", "", "/custom/traces"},
		{"standard OTEL_EXPORTER_OTLP_ENDPOINT", "", srv.URL, "/v1/traces"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", tc.env)
			mu.Lock()
			got, paths = nil, nil
			mu.Unlock()
			shutdown, err := Setup(context.Background(), Config{Endpoint: tc.endpoint, SampleRatio: 1}, "segedge-test", slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			if !Enabled() {
				t.Fatal("Setup with an endpoint left tracing off")
			}
			_, span := Start(context.Background(), "test", "exported", oteltrace.SpanKindInternal)
			span.End()
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := shutdown(sctx); err != nil {
				t.Fatal(err)
			}
			if Enabled() {
				t.Fatal("tracing still on after shutdown")
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) == 0 {
				t.Fatal("the receiver got no export")
			}
			if paths[0] != tc.path {
				t.Fatalf("exported to path %q, want %q", paths[0], tc.path)
			}
			rs := got[0].ResourceSpans
			if len(rs) == 0 || len(rs[0].ScopeSpans) == 0 || len(rs[0].ScopeSpans[0].Spans) != 1 {
				t.Fatalf("export has no span: %v", got[0])
			}
			if n := rs[0].ScopeSpans[0].Spans[0].Name; n != "exported" {
				t.Fatalf("span name %q", n)
			}
			service := ""
			for _, a := range rs[0].Resource.Attributes {
				if a.Key == "service.name" {
					service = a.Value.GetStringValue()
				}
			}
			if service != "segedge-test" {
				t.Fatalf("service.name = %q, want segedge-test", service)
			}
		})
	}
}

func TestSetupWithoutEndpointIsOff(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	shutdown, err := Setup(context.Background(), Config{SampleRatio: 1}, "segedge-test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(context.Background())
	if Enabled() {
		t.Fatal("tracing on without an endpoint")
	}
}

func TestExportErrorsAreLoggedOncePerMinute(t *testing.T) {
	var buf strings.Builder
	h := errorLogger(slog.New(slog.NewTextHandler(&buf, nil)))
	for range 5 {
		h(errors.New("connection refused"))
	}
	if got := strings.Count(buf.String(), "traces not exported"); got != 1 {
		t.Fatalf("%d log lines for 5 errors within a minute, want 1:\n%s", got, buf.String())
	}
}
