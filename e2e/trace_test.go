package e2e

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

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

// otlpSpan is one span as an OTLP receiver got it.
type otlpSpan struct {
	service, name, trace, id, parent string
	attrs                            map[string]string
}

// otlpReceiver is a tiny OTLP/HTTP collector: it decodes the protobuf exports the programs send.
type otlpReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	spans  []otlpSpan
	errors []string
}

func (r *otlpReceiver) fail(msg string) {
	r.mu.Lock()
	r.errors = append(r.errors, msg)
	r.mu.Unlock()
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	r := &otlpReceiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var ex collectortrace.ExportTraceServiceRequest
		if req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" {
			r.fail(fmt.Sprintf("%s %s: not protobuf on /v1/traces", req.URL.Path, req.Header.Get("Content-Type")))
			http.Error(w, "want protobuf on /v1/traces", http.StatusBadRequest)
			return
		}
		if err := proto.Unmarshal(body, &ex); err != nil {
			r.fail(err.Error())
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		for _, rs := range ex.ResourceSpans {
			service := ""
			for _, a := range rs.Resource.GetAttributes() {
				if a.Key == "service.name" {
					service = a.Value.GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					attrs := map[string]string{}
					for _, a := range s.Attributes {
						v := a.Value.GetStringValue()
						if v == "" {
							v = fmt.Sprint(a.Value.GetIntValue())
						}
						attrs[a.Key] = v
					}
					r.spans = append(r.spans, otlpSpan{service: service, name: s.Name, trace: hex.EncodeToString(s.TraceId),
						id: hex.EncodeToString(s.SpanId), parent: hex.EncodeToString(s.ParentSpanId), attrs: attrs})
				}
			}
		}
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		b, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Write(b)
	}))
	t.Cleanup(r.Close)
	return r
}

// find returns the spans that match service and name (either may be empty) in trace (or any).
func (r *otlpReceiver) find(service, name, trace string) []otlpSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []otlpSpan
	for _, s := range r.spans {
		if (service == "" || s.service == service) && (name == "" || s.name == name) && (trace == "" || s.trace == trace) {
			out = append(out, s)
		}
	}
	return out
}

func (r *otlpReceiver) dump() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, s := range r.spans {
		out = append(out, fmt.Sprintf("%s/%s trace=%s id=%s parent=%s %v", s.service, s.name, s.trace, s.id, s.parent, s.attrs))
	}
	return strings.Join(append(out, r.errors...), "\n")
}

// TestTracesFromOriginAndEdgeBinaries runs the real programs with SEGEDGE_OTLP_ENDPOINT pointing at
// an OTLP/HTTP receiver: a beacon event's trace starts at the edge, crosses to the origin over
// EVENTS and back to the edge over DELTAS; a page request's trace has the cache, the upstream
// (whose server sees the traceparent), the evaluation and the splice; a backend's own trace,
// sent with its events to the origin, reaches the edge's replica.
func TestTracesFromOriginAndEdgeBinaries(t *testing.T) {
	recv := newOTLPReceiver(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("spans received:\n%s", recv.dump())
		}
	})
	var upMu sync.Mutex
	var upstreamTraceparents []string
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		upMu.Lock()
		upstreamTraceparents = append(upstreamTraceparents, r.Header.Get("traceparent"))
		upMu.Unlock()
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "public, max-age=600")
		w.Write([]byte(`<!doctype html><title>shop</title><div data-seg-slot="hero">Welcome</div><p>end</p>`))
	})
	mux.HandleFunc("/fragments/vip-hero.html", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`VIP hero`)) })
	site := httptest.NewServer(mux)
	t.Cleanup(site.Close)

	otlp := "SEGEDGE_OTLP_ENDPOINT=" + recv.URL
	sys := startSystem(t, services{originEnv: []string{otlp}}, site.URL, otlp)
	putRules(t, sys, "../scripts/demo/rules.yaml")
	res, _ := get(t, sys.edgeURL+"/", "")
	user := cookieOf(res)
	waitFor(t, 10*time.Second, "ruleset 1 at the edge", func() bool {
		res, _ := get(t, sys.edgeURL+"/", user)
		return res.Header.Get("Segedge-Ruleset") == "1"
	})

	// A beacon event (edge → EVENTS → origin → DELTAS → edge), with a visitor's traceparent that
	// must not be trusted.
	req, _ := http.NewRequest("POST", sys.edgeURL+"/v1/events", strings.NewReader(`[{"event_id":"tr1","type":"add_to_cart"}]`))
	req.Header.Set("Cookie", "segedge_uid="+user)
	req.Header.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != 202 {
		t.Fatalf("beacon: %v %v", res, err)
	}
	waitFor(t, 10*time.Second, "the visitor's personalized page", func() bool {
		_, body := get(t, sys.edgeURL+"/", user)
		return strings.Contains(body, "Your cart is waiting")
	})
	// A backend's own trace: POST /v1/events at the origin with its traceparent.
	const backendTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, _ = http.NewRequest("POST", sys.originURL+"/v1/events", strings.NewReader(`[{"event_id":"tr2","user_id":"backend-user","type":"purchase_completed"}]`))
	req.Header.Set("Authorization", "Bearer write-secret")
	req.Header.Set("traceparent", "00-"+backendTrace+"-00f067aa0ba902b7-01")
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != 202 {
		t.Fatalf("origin ingest: %v %v", res, err)
	}
	waitFor(t, 10*time.Second, "both deltas applied at the edge", func() bool {
		_, m := status(sys.edgeOpsURL + "/metrics")
		return strings.Contains(m, "segedge_edge_replica_deltas_applied_total 2")
	})
	// Stopping flushes each program's spans.
	sys.edge.stop(15 * time.Second)
	sys.origin.stop(15 * time.Second)

	// 1. The beacon's trace: edge, origin, edge.
	var beacon otlpSpan
	for _, s := range recv.find("segedge-edge", "edge.request", "") {
		if s.attrs["http.route"] == "/v1/events" {
			beacon = s
		}
	}
	if beacon.trace == "" {
		t.Fatal("no edge.request span for the beacon")
	}
	if beacon.trace == "0af7651916cd43dd8448eb211c80319c" || beacon.parent != "" {
		t.Fatal("the edge continued a trace a visitor sent")
	}
	ids := map[string]string{"edge.request": beacon.id}
	for _, c := range []struct{ service, name, parent string }{
		{"segedge-edge", "ingest.publish", "edge.request"},
		{"segedge-origin", "engine.event", "ingest.publish"}, // over EVENTS
		{"segedge-origin", "profile.apply", "engine.event"},
		{"segedge-origin", "ruleset.evaluate", "engine.event"},
		{"segedge-origin", "delta.publish", "engine.event"},
		{"segedge-edge", "replica.apply", "delta.publish"}, // over DELTAS
	} {
		got := recv.find(c.service, c.name, beacon.trace)
		if len(got) != 1 {
			t.Fatalf("%d %s spans from %s in the beacon's trace %s, want 1", len(got), c.name, c.service, beacon.trace)
		}
		if got[0].parent != ids[c.parent] {
			t.Errorf("%s's parent = %s, want %s's span %s", c.name, got[0].parent, c.parent, ids[c.parent])
		}
		ids[c.name] = got[0].id
	}

	// 2. Page requests: the first one (a cache miss) went upstream, and the site saw its trace;
	// the personalized ones evaluated the ruleset and spliced the page.
	cacheSpan := func(trace string) otlpSpan {
		t.Helper()
		cache := recv.find("segedge-edge", "edge.cache", trace)
		req := recv.find("segedge-edge", "edge.request", trace)
		if len(cache) != 1 || len(req) != 1 || cache[0].parent != req[0].id {
			t.Fatalf("trace %s: edge.cache %v is not the one child of edge.request %v", trace, cache, req)
		}
		return cache[0]
	}
	var missTrace, personalizedTrace string
	for _, s := range recv.find("segedge-edge", "edge.cache", "") {
		if s.attrs["segedge.cache"] == "MISS" {
			missTrace = s.trace
		}
		if len(recv.find("segedge-edge", "edge.splice", s.trace)) > 0 {
			personalizedTrace = s.trace
		}
	}
	if missTrace == "" || personalizedTrace == "" {
		t.Fatalf("no cache miss (%q) or no personalized page (%q) among the edge's spans", missTrace, personalizedTrace)
	}
	cache := cacheSpan(missTrace)
	upstream := recv.find("segedge-edge", "edge.upstream", missTrace)
	if len(upstream) != 1 || upstream[0].parent != cache.id || upstream[0].attrs["http.response.status_code"] != "200" {
		t.Fatalf("the miss's edge.upstream spans: %v, want one child of edge.cache %s with status 200", upstream, cache.id)
	}
	upMu.Lock()
	sent := slices.Clone(upstreamTraceparents)
	upMu.Unlock()
	if want := "00-" + missTrace + "-" + upstream[0].id + "-01"; !slices.Contains(sent, want) {
		t.Errorf("the site never got traceparent %s from the edge; got %q", want, sent)
	}
	cache = cacheSpan(personalizedTrace)
	for _, name := range []string{"edge.eval", "edge.splice"} {
		if got := recv.find("segedge-edge", name, personalizedTrace); len(got) != 1 || got[0].parent != cache.id {
			t.Errorf("%s in a personalized page's trace: %v, want one child of edge.cache %s", name, got, cache.id)
		}
	}

	// 3. The backend's trace, from the origin's API to the edge's replica.
	for _, c := range []struct{ service, name string }{
		{"segedge-origin", "origin.ingest"}, {"segedge-origin", "ingest.publish"}, {"segedge-origin", "engine.event"},
		{"segedge-origin", "delta.publish"}, {"segedge-edge", "replica.apply"},
	} {
		if len(recv.find(c.service, c.name, backendTrace)) != 1 {
			t.Errorf("no %s span from %s in the backend's trace", c.name, c.service)
		}
	}
	if in := recv.find("segedge-origin", "origin.ingest", backendTrace); len(in) == 1 && in[0].parent != "00f067aa0ba902b7" {
		t.Errorf("origin.ingest's parent = %s, want the backend's span", in[0].parent)
	}
}
