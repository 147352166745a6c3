package replica

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/testenv"
)

func publish(t *testing.T, n *testenv.NATS, d *delta.Delta) {
	t.Helper()
	b, _ := delta.Encode(d)
	msg := &nats.Msg{Subject: n.Topology.DeltaSubject(0), Data: b, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, delta.MsgID(d))
	if _, err := n.JS.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// startStreams starts a NATS server with the project's streams, and a context that ends with the
// test (a replica's Run stops with it).
func startStreams(t *testing.T) (*testenv.NATS, context.Context) {
	t.Helper()
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return n, ctx
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func memberNames(r *Replica, user string) []string {
	e, _ := r.Get(user)
	return r.MemberNames(e, nil)
}

func TestReplaysThenFollowsDeltasDroppingStaleVersions(t *testing.T) {
	n, ctx := startStreams(t)
	// Published before the replica starts: replayed.
	publish(t, n, &delta.Delta{UserID: "alice", Version: 1, Members: []string{"vip"}})
	publish(t, n, &delta.Delta{UserID: "alice", Version: 2, Members: []string{"vip", "cart"},
		Features: []delta.FeatureValue{{Key: "score:engagement", Value: profile.DoubleValue(42)}}})

	var changes atomic.Int32
	r, err := New(Config{Topology: n.Topology, OnChange: func(string, *Entry, *Entry) { changes.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	go r.Run(ctx, n.JS)
	eventually(t, "catch-up", r.CaughtUp)
	if got := memberNames(r, "alice"); !slices.Equal(got, []string{"vip", "cart"}) && !slices.Equal(got, []string{"cart", "vip"}) {
		t.Fatalf("alice = %v after replay", got)
	}
	e, _ := r.Get("alice")
	if v, ok := r.Feature(e, r.ID("score:engagement")); !ok || v.Double != 42 {
		t.Fatalf("feature = %v, %v", v, ok)
	}

	// Followed live; an older version arriving late is dropped.
	publish(t, n, &delta.Delta{UserID: "alice", Version: 4, Members: []string{}})
	publish(t, n, &delta.Delta{UserID: "alice", Version: 3, Members: []string{"vip"}})
	publish(t, n, &delta.Delta{UserID: "bob", Version: 1, Members: []string{"cart"}})
	eventually(t, "bob", func() bool { _, ok := r.Get("bob"); return ok })
	if got := memberNames(r, "alice"); len(got) != 0 {
		t.Fatalf("alice = %v, want no segments (v4 wins over the late v3)", got)
	}
	if e, _ := r.Get("alice"); e.Version != 4 {
		t.Fatalf("alice version %d, want 4", e.Version)
	}

	// Erasure keeps a tombstone: a late older delta cannot resurrect the data.
	publish(t, n, &delta.Delta{UserID: "bob", Version: 2, Erased: true, Members: []string{}})
	publish(t, n, &delta.Delta{UserID: "bob", Version: 1, Members: []string{"cart"}})
	publish(t, n, &delta.Delta{UserID: "carol", Version: 1, Members: []string{"x"}})
	eventually(t, "carol", func() bool { _, ok := r.Get("carol"); return ok })
	if got := memberNames(r, "bob"); len(got) != 0 {
		t.Fatalf("bob = %v after erasure", got)
	}
	if c := changes.Load(); c != 6 {
		t.Fatalf("OnChange called %d times, want 6 (v1, v2, v4 of alice; bob v1, v2; carol)", c)
	}
}

func TestMissAsksTheOriginOnceForConcurrentRequests(t *testing.T) {
	var calls atomic.Int32
	r, err := New(Config{Fetch: func(ctx context.Context, user string) (*delta.Delta, error) {
		calls.Add(1)
		time.Sleep(20 * time.Millisecond)
		switch user {
		case "known":
			return &delta.Delta{UserID: user, Version: 5, Members: []string{"vip"}}, nil
		case "broken":
			return nil, errors.New("origin down")
		}
		return nil, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *Entry, 50)
	for range 50 {
		go func() { done <- r.Lookup(context.Background(), "known") }()
	}
	for range 50 {
		if e := <-done; !e.Has(r.ID("vip")) {
			t.Fatal("lookup did not return the origin's answer")
		}
	}
	if c := calls.Load(); c != 1 {
		t.Fatalf("origin asked %d times for one user, want 1", c)
	}
	if e := r.Lookup(context.Background(), "stranger"); e == nil || e.Members() != 0 {
		t.Fatalf("unknown user = %+v, want an empty entry", e)
	}
	r.Lookup(context.Background(), "stranger")
	if c := calls.Load(); c != 2 {
		t.Fatalf("an unknown user is asked again (%d calls); it should be remembered", c)
	}
	if e := r.Lookup(context.Background(), "broken"); e != nil {
		t.Fatalf("origin error should be treated as a new user, got %+v", e)
	}
}

// BenchmarkReplicaMemory reports the replica's heap bytes per user for a typical ruleset: each
// user in a few of ~20 segments with three request-rule features.
func BenchmarkReplicaMemory(b *testing.B) {
	const users = 200_000
	segs := make([]string, 20)
	for i := range segs {
		segs[i] = fmt.Sprintf("segment_%d", i)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r, _ := New(Config{MaxUsers: users * 2})
	for i := range users {
		r.Apply(&delta.Delta{
			UserID: fmt.Sprintf("u%012d", i), Version: 1,
			Members: []string{segs[i%20], segs[(i+7)%20], segs[(i+13)%20]},
			Features: []delta.FeatureValue{
				{Key: "score:engagement", Value: profile.DoubleValue(float64(i % 100))},
				{Key: "count:add_to_cart:30m0s", Value: profile.IntValue(int64(i % 3))},
				{Key: "trait:plan", Value: profile.StringValue("pro")},
			},
		})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/users, "bytes/user")
	runtime.KeepAlive(r)
	for range b.N {
		r.Get("u000000000001")
	}
}

func TestFeatureValuesKeepTheirKind(t *testing.T) {
	r, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 100)
	want := map[string]profile.Value{
		"trait:plan":              profile.StringValue("pro"),
		"trait:note":              profile.StringValue(long),
		"trait:beta":              profile.BoolValue(true),
		"count:add_to_cart:30m0s": profile.IntValue(-3),
		"score:engagement":        profile.DoubleValue(42),
	}
	d := &delta.Delta{UserID: "u", Version: 1, Members: []string{"b", "a", "c", "d", "e"}}
	for k, v := range want {
		d.Features = append(d.Features, delta.FeatureValue{Key: k, Value: v})
	}
	r.Apply(d)
	e, _ := r.Get("u")
	for k, v := range want {
		if got, ok := r.Feature(e, r.ID(k)); !ok || got != v {
			t.Errorf("%s = %+v, %v; want %+v", k, got, ok, v)
		}
	}
	if _, ok := r.Feature(e, r.ID("trait:missing")); ok {
		t.Error("a missing feature was found")
	}
	for _, s := range []string{"a", "b", "c", "d", "e"} {
		if !e.Has(r.ID(s)) {
			t.Errorf("member %s missing", s)
		}
	}
	if e.Has(r.ID("z")) || e.Members() != 5 {
		t.Errorf("members = %d", e.Members())
	}
}

// A stream whose deltas all expired (DELTAS keeps a day) or were purged still has a last
// sequence; a replica started on it has nothing to replay and is caught up at once, not when the
// next delta arrives.
func TestAReplicaOnAStreamWithNoMessagesLeftIsCaughtUp(t *testing.T) {
	n, ctx := startStreams(t)
	publish(t, n, &delta.Delta{UserID: "alice", Version: 1, Members: []string{"vip"}})
	s, err := n.JS.Stream(ctx, n.Topology.DeltasStream())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Topology: n.Topology})
	if err != nil {
		t.Fatal(err)
	}
	go r.Run(ctx, n.JS)
	eventually(t, "catch-up on an emptied stream", r.CaughtUp)
}
