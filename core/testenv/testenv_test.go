package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/segedge/segedge/core/bus"
)

func TestNATSGivesJetStreamAndCleansUp(t *testing.T) {
	n := StartNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	ack, err := n.JS.Publish(ctx, n.Topology.EventSubject(1), []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if ack.Stream != n.Topology.EventsStream() {
		t.Fatalf("published to %q, want %q", ack.Stream, n.Topology.EventsStream())
	}
}

func TestRedisPrefixIsPerTest(t *testing.T) {
	r := StartRedis(t)
	ctx := context.Background()
	if err := r.Client.Set(ctx, r.Prefix+"k", "v", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if got := r.Client.Get(ctx, r.Prefix+"k").Val(); got != "v" {
		t.Fatalf("got %q", got)
	}
}
