package replica

import (
	"context"
	"slices"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/core/trace"
)

// publishRaw publishes a DELTAS message body as it is and returns its stream sequence.
func publishRaw(t *testing.T, n *testenv.NATS, body []byte, h nats.Header) uint64 {
	t.Helper()
	ack, err := n.JS.PublishMsg(context.Background(), &nats.Msg{Subject: n.Topology.DeltaSubject(0), Data: body, Header: h})
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func batchBody(t *testing.T, ds ...*delta.Delta) []byte {
	t.Helper()
	b, err := delta.EncodeBatch(ds)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAppliesEveryDeltaOfAMessageInOrderAndSkipsWhatItCannotRead(t *testing.T) {
	n, ctx := startStreams(t)
	var order []string
	r, err := New(Config{Topology: n.Topology, OnChange: func(user string, _, e *Entry) {
		order = append(order, user) // the consumer goroutine only
	}})
	if err != nil {
		t.Fatal(err)
	}
	go r.Run(ctx, n.JS)
	eventually(t, "catch-up", r.CaughtUp)

	// One origin batch: alice twice (in version order), bob once.
	publishRaw(t, n, batchBody(t,
		&delta.Delta{UserID: "alice", Version: 1, Members: []string{"vip"}},
		&delta.Delta{UserID: "bob", Version: 1, Members: []string{"cart"}},
		&delta.Delta{UserID: "alice", Version: 2, Members: []string{"vip", "cart"}},
	), nil)
	// An older origin's single delta (format 0), an unreadable message, a batch with a delta an
	// edge cannot use among good ones, and a stale one in a batch.
	old, _ := delta.Encode(&delta.Delta{UserID: "carol", Version: 1, Members: []string{"x"}})
	publishRaw(t, n, old, nil)
	publishRaw(t, n, []byte(`[{"user_id":"dave","version":1},`), nil)
	last := publishRaw(t, n, []byte(`[{"user_id":"erin","version":1,"members":["y"]},{"version":3},{"user_id":"alice","version":1,"members":[]}]`), nil)
	eventually(t, "the last message", func() bool { return r.lastSeq.Load() == last })

	if got := memberNames(r, "alice"); !slices.Equal(got, []string{"vip", "cart"}) {
		t.Errorf("alice = %v, want v2's [vip cart] (v1 then v2 of one message, then a stale v1)", got)
	}
	for _, u := range []string{"bob", "carol", "erin"} {
		if _, ok := r.Get(u); !ok {
			t.Errorf("%s not applied", u)
		}
	}
	if _, ok := r.Get("dave"); ok {
		t.Error("dave, from an unreadable message, applied")
	}
	if want := []string{"alice", "bob", "alice", "carol", "erin"}; !slices.Equal(order, want) {
		t.Errorf("applied %v, want %v", order, want)
	}
	for name, c := range map[string]struct {
		got  float64
		want float64
	}{
		"applied":    {testutil.ToFloat64(r.m.applied), 5},
		"stale":      {testutil.ToFloat64(r.m.stale), 1},
		"unreadable": {testutil.ToFloat64(r.m.bad), 2},
	} {
		if c.got != c.want {
			t.Errorf("%s deltas = %v, want %v", name, c.got, c.want)
		}
	}
}

// Each delta of a batch continues the trace of its own event, carried in the delta; a single
// delta of an older origin continues the one in its message headers.
func TestEachDeltaOfABatchContinuesItsOwnTrace(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	restore := trace.Install(tp)
	defer func() { restore(); _ = tp.Shutdown(context.Background()) }()

	r, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	r.caught.Store(true)
	const (
		tpA   = "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-00000000000000a1-01"
		tpB   = "00-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-00000000000000b1-01"
		tpOld = "00-cccccccccccccccccccccccccccccccc-00000000000000c1-01"
	)
	r.applyMessage(batchBody(t,
		&delta.Delta{UserID: "a", Version: 1, TraceParent: tpA},
		&delta.Delta{UserID: "b", Version: 1, TraceParent: tpB},
		&delta.Delta{UserID: "n", Version: 1}, // not sampled at the origin: no span
	), nil)
	old, _ := delta.Encode(&delta.Delta{UserID: "c", Version: 1})
	r.applyMessage(old, nats.Header{"traceparent": []string{tpOld}})

	spans := exp.GetSpans()
	var got []string
	for _, s := range spans {
		if s.Name != "replica.apply" {
			t.Errorf("span %q", s.Name)
		}
		got = append(got, s.SpanContext.TraceID().String()[:2]+"<-"+s.Parent.SpanID().String()[14:])
	}
	if want := []string{"aa<-a1", "bb<-b1", "cc<-c1"}; !slices.Equal(got, want) {
		t.Fatalf("replica.apply spans (trace<-parent) = %v, want %v", got, want)
	}
}
