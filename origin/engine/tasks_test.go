package engine

import (
	"context"
	"testing"
	"time"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/schedule"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
)

// A worker that holds its partition's lease but cannot create the consumer yet (here: EVENTS
// is gone) still runs the re-evaluations sent to it; before, a Reevaluate waited for the
// consumer, forever for a caller without a deadline (the background rescan).
func TestTasksRunWhileTheConsumerCannotBeCreated(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := n.JS.DeleteStream(ctx, n.Topology.EventsStream()); err != nil {
		t.Fatal(err)
	}
	user := "u0"
	p := event.Partition(user, n.Topology.Partitions)
	st := memory.New(store.Options{})
	if _, _, err := st.Apply(ctx, event.Event{ID: "e1", UserID: user, Type: "add_to_cart", TS: time.Now()}, nil); err != nil {
		t.Fatal(err)
	}
	eng, err := New(Config{
		JS: n.JS, Topology: n.Topology, Store: st, Members: members.NewMemory(), Schedule: schedule.NewMemory(),
		Rules: func() Rules { return parityRules{} }, Partitions: []int{p}, DuePoll: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	go eng.Run(ctx)
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	t0 := time.Now()
	if err := eng.Reevaluate(rctx, user, "ruleset"); err != nil {
		t.Fatalf("Reevaluate while the consumer cannot be created: %v (after %s)", err, time.Since(t0).Round(time.Millisecond))
	}
}
