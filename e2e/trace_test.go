package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ingest"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/core/trace"
	"github.com/segedge/segedge/edge/replica"
	"github.com/segedge/segedge/origin/engine"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/schedule"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
)

// viewerRules is a one-segment ruleset in Go (viewer: count("page_view", "1h") > 0), so the
// engine publishes a delta for the first page view; the compiled-wasm path is covered by the
// binaries' test below.
type viewerRules struct{ spec *profile.Spec }

var viewFeature = profile.Feature{Kind: profile.FeatureCount, Name: "page_view", Window: time.Hour}

func (r viewerRules) Version() uint64                 { return 1 }
func (r viewerRules) Spec() *profile.Spec             { return r.spec }
func (r viewerRules) EdgeFeatures() []profile.Feature { return nil }
func (r viewerRules) Segments(_ context.Context, p *profile.Profile, now time.Time, dst []string) ([]string, error) {
	if v, ok := p.Value(viewFeature, now); ok && v.Int > 0 {
		dst = append(dst, "viewer")
	}
	return dst, nil
}

// TestTraceOneEventAcrossProcesses follows one event with an in-memory exporter through the real
// components over real NATS: the ingest publisher (as the origin's POST /v1/events and the edge's
// beacon use it), the origin's engine worker (profile update, evaluation, delta publish) and an
// edge's replica. Every span of the event must be in one trace, each with the right parent.
func TestTraceOneEventAcrossProcesses(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	restore := trace.Install(tp)
	t.Cleanup(func() { restore(); _ = tp.Shutdown(context.Background()) })

	n := testenv.StartNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	spec, err := profile.NewSpec([]profile.Feature{viewFeature}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rules := viewerRules{spec: spec}
	eng, err := engine.New(engine.Config{
		JS: n.JS, Topology: n.Topology,
		Store: memory.New(store.Options{}), Members: members.NewMemory(), Schedule: schedule.NewMemory(),
		Rules:      func() engine.Rules { return rules },
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	engDone := make(chan error, 1)
	go func() { engDone <- eng.Run(ctx) }()
	applied := make(chan string, 16)
	rep, err := replica.New(replica.Config{Topology: n.Topology, Registerer: prometheus.NewRegistry(),
		OnChange: func(user string, _, _ *replica.Entry) { applied <- user }})
	if err != nil {
		t.Fatal(err)
	}
	repDone := make(chan error, 1)
	go func() { repDone <- rep.Run(ctx, n.JS) }()
	waitFor(t, 10*time.Second, "replica caught up", rep.CaughtUp)

	// One event, published inside a request span as the HTTP handlers do.
	pub := ingest.NewPublisher(n.JS, n.Topology, "origin", prometheus.NewRegistry())
	rctx, req := trace.Start(ctx, "e2e", "request", oteltrace.SpanKindServer)
	ev := event.Event{ID: "ev-trace-1", UserID: "trace-user", Type: "page_view", TS: time.Now()}
	for i, err := range pub.Publish(rctx, []event.Event{ev}, time.Now()) {
		if err != nil {
			t.Fatalf("publish event %d: %v", i, err)
		}
	}
	req.End()
	select {
	case u := <-applied:
		if u != "trace-user" {
			t.Fatalf("replica applied a delta for %q", u)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the event's delta never reached the replica")
	}

	want := []string{"request", "ingest.publish", "engine.event", "profile.apply", "ruleset.evaluate", "delta.publish", "replica.apply"}
	var spans tracetest.SpanStubs
	waitFor(t, 5*time.Second, "every span ended", func() bool {
		spans = exp.GetSpans()
		return len(byName(spans)) >= len(want) && byName(spans)["replica.apply"] != nil
	})
	named := byName(spans)
	root := named["request"].SpanContext.TraceID()
	for _, name := range want {
		s := named[name]
		if s == nil {
			t.Fatalf("no %q span; got %s", name, names(spans))
		}
		if s.SpanContext.TraceID() != root {
			t.Errorf("%s: trace %s, want the event's trace %s", name, s.SpanContext.TraceID(), root)
		}
	}
	// The chain of parents: in-process children and the two hops over NATS headers.
	for _, tc := range []struct{ child, parent string }{
		{"ingest.publish", "request"},
		{"engine.event", "ingest.publish"}, // EVENTS message headers
		{"profile.apply", "engine.event"},
		{"ruleset.evaluate", "engine.event"},
		{"delta.publish", "engine.event"},
		{"replica.apply", "delta.publish"}, // DELTAS message headers
	} {
		if got, want := named[tc.child].Parent.SpanID(), named[tc.parent].SpanContext.SpanID(); got != want {
			t.Errorf("%s's parent is span %s, want %s (%s)", tc.child, got, want, tc.parent)
		}
	}
	for _, name := range []string{"engine.event", "replica.apply"} {
		if !named[name].Parent.IsRemote() {
			t.Errorf("%s: parent not marked remote: the context did not come over NATS", name)
		}
	}
	cancel()
	<-engDone
	<-repDone
}

func byName(spans tracetest.SpanStubs) map[string]*tracetest.SpanStub {
	m := map[string]*tracetest.SpanStub{}
	for i := range spans {
		m[spans[i].Name] = &spans[i]
	}
	return m
}

func names(spans tracetest.SpanStubs) string {
	var out []string
	for _, s := range spans {
		out = append(out, fmt.Sprintf("%s(%s)", s.Name, s.SpanContext.TraceID()))
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// waitFor polls cond every 10ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
