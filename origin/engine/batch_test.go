package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ingest"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/schedule"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
)

// flakyStore is the real memory store whose ApplyBatch fails while failing > 0 (a store outage).
type flakyStore struct {
	store.Store
	failing atomic.Int32
	calls   atomic.Int32
}

func (f *flakyStore) ApplyBatch(ctx context.Context, evs []event.Event, spec *profile.Spec) ([]store.Result, error) {
	f.calls.Add(1)
	if f.failing.Add(-1) >= 0 {
		return nil, errors.New("store down")
	}
	return f.Store.ApplyBatch(ctx, evs, spec)
}

// TestBacklogIsAppliedInBatchesInOrder: events waiting before the engine starts are taken in
// batches; each user's deltas come out with versions 1, 2, 3 … in the order of the events, with
// memberships flipping as the events say, even though several events of one user share a batch
// and the store fails the first batches.
func TestBacklogIsAppliedInBatchesInOrder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		failing int32
	}{{"store up", 0}, {"store down for the first 3 batches", 3}} {
		t.Run(tc.name, func(t *testing.T) {
			n := testenv.StartNATS(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			users := []string{"ann", "ben", "cat"}
			// Per user, 20 events alternating add_to_cart and page_view, interleaved across users.
			var evs []event.Event
			const rounds = 20
			for i := range rounds {
				for _, u := range users {
					typ := "add_to_cart"
					if i%2 == 1 {
						typ = "page_view"
					}
					evs = append(evs, event.Event{ID: fmt.Sprintf("%s-%d", u, i), UserID: u, Type: typ, TS: now.Add(time.Duration(i) * time.Millisecond)})
				}
			}
			pub := ingest.NewPublisher(n.JS, n.Topology, "origin", prometheus.NewRegistry())
			for i, err := range pub.Publish(ctx, evs, now) {
				if err != nil {
					t.Fatalf("publish %d: %v", i, err)
				}
			}
			st := &flakyStore{Store: memory.New(store.Options{})}
			st.failing.Store(tc.failing)
			rules := &parityRules{}
			eng, err := New(Config{
				JS: n.JS, Topology: n.Topology, Store: st, Members: members.NewMemory(), Schedule: schedule.NewMemory(),
				Rules: func() Rules { return rules }, DuePoll: 10 * time.Millisecond, Batch: 16,
			})
			if err != nil {
				t.Fatal(err)
			}
			go eng.Run(ctx)
			cons, err := n.JS.CreateConsumer(ctx, n.Topology.DeltasStream(), jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string][]*delta.Delta{}
			for n := 0; n < len(evs); {
				msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
				if err != nil {
					t.Fatalf("after %v deltas: %v", got, err)
				}
				ds, err := delta.DecodeBatch(msg.Data())
				if err != nil {
					t.Fatal(err)
				}
				for i := range ds {
					got[ds[i].UserID] = append(got[ds[i].UserID], &ds[i])
				}
				n += len(ds)
			}
			for _, u := range users {
				ds := got[u]
				if len(ds) != rounds {
					t.Fatalf("%s: %d deltas, want %d", u, len(ds), rounds)
				}
				for i, d := range ds {
					// After the i-th event the user has i+1 events; parityRules puts users with an
					// odd count in "odd".
					wantIn := (i+1)%2 == 1
					if d.Version != uint64(i+1) || slices.Contains(d.Members, "odd") != wantIn {
						t.Fatalf("%s delta %d: version %d members %v, want version %d odd=%v", u, i, d.Version, d.Members, i+1, wantIn)
					}
					if i > 0 && (len(d.Entered)+len(d.Exited) != 1) {
						t.Fatalf("%s delta %d: entered %v exited %v, want one change", u, i, d.Entered, d.Exited)
					}
				}
			}
			if _, err := cons.Next(jetstream.FetchMaxWait(300 * time.Millisecond)); err == nil {
				t.Fatal("more deltas than events")
			}
			if c := testutil.ToFloat64(eng.m.applied); c != float64(len(evs)) {
				t.Errorf("applied %v events, want %d", c, len(evs))
			}
			// The backlog was there before the engine started: batches of more than one event.
			var m = &dtoHist{}
			m.read(t, eng.m.batchSize)
			if m.count >= uint64(len(evs)) {
				t.Errorf("%d batches for %d events: no batching", m.count, len(evs))
			}
			if tc.failing > 0 && st.calls.Load() <= tc.failing {
				t.Errorf("store called %d times", st.calls.Load())
			}
		})
	}
}

// parityRules puts a user in "odd" while their number of events is odd (the profile version is
// the number of applied events), and reads a feature at the edge, so every event makes a delta.
type parityRules struct{}

var parityFeature = profile.Feature{Kind: profile.FeatureSince, Name: "add_to_cart"}

func (parityRules) Version() uint64 { return 1 }
func (parityRules) Spec() *profile.Spec {
	s, _ := profile.NewSpec([]profile.Feature{parityFeature}, nil)
	return s
}
func (parityRules) EdgeFeatures() []profile.Feature { return []profile.Feature{parityFeature} }
func (parityRules) Segments(_ context.Context, p *profile.Profile, _ time.Time, dst []string) ([]string, error) {
	if p.Version%2 == 1 {
		dst = append(dst, "odd")
	}
	return dst, nil
}

type dtoHist struct{ count uint64 }

func (h *dtoHist) read(t *testing.T, c prometheus.Collector) {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	m := <-ch
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		t.Fatal(err)
	}
	h.count = pb.GetHistogram().GetSampleCount()
}
