package e2e

// Several origin processes share the partitions of EVENTS through partition leases (issue #4):
// a second origin takes half of them, and when it dies the first takes them back, without
// applying any event twice or any user's events out of order.

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

// partitionsHeld reads segedge_origin_partitions_held from an origin; -1 when unreachable.
func partitionsHeld(originURL string) int {
	return int(counter(originURL, "segedge_origin_partitions_held"))
}

// waitPartitions waits until each origin holds want[i] partitions.
func waitPartitions(t *testing.T, within time.Duration, urls []string, want ...int) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		var got []int
		for _, u := range urls {
			got = append(got, partitionsHeld(u))
		}
		if slices.Equal(got, want) {
			return time.Since(t0)
		}
		if time.Since(t0) > within {
			t.Fatalf("partitions held %v after %s, want %v", got, within, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTwoOriginsShareThePartitionsAndSurviveAKill runs two origin processes against the same
// NATS and Redis while events flow: the second one takes half of the partitions as it starts,
// applies events, and is killed with SIGKILL; the first takes its partitions back after the
// lease TTL. Every accepted event is applied exactly once and every user's deltas carry
// versions 1…n in stream order.
func TestTwoOriginsShareThePartitionsAndSurviveAKill(t *testing.T) {
	const ttl = 3 * time.Second
	a := newChaosOrigin(t, "")
	a.env = append(a.env, "SEGEDGE_LEASE_TTL="+ttl.String(), "SEGEDGE_ORIGIN_ID=origin-a")
	b := &chaosOrigin{addr: freeAddr(t), nats: a.nats}
	for _, kv := range a.env {
		switch {
		case strings.HasPrefix(kv, "ORIGIN_ADDR="):
			kv = "ORIGIN_ADDR=" + b.addr
		case strings.HasPrefix(kv, "SEGEDGE_DATA_DIR="):
			kv = "SEGEDGE_DATA_DIR=" + t.TempDir()
		case strings.HasPrefix(kv, "SEGEDGE_ORIGIN_ID="):
			kv = "SEGEDGE_ORIGIN_ID=origin-b"
		}
		b.env = append(b.env, kv)
	}
	first := a.start(t)
	if got := partitionsHeld(a.url()); got != 8 {
		t.Fatalf("alone and ready, the first origin holds %d partitions, want 8", got)
	}
	putChaosRules(t, a)

	const events, users = 6000, 50
	batches, userIDs := chaosBatches("s", events, users, 20, 7)
	s := newChaosSender(a.url())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.run(ctx, batches, 500, 4) }()

	// The second origin joins while events flow and takes half of the partitions.
	for s.nAcc.Load() < events/6 {
		time.Sleep(5 * time.Millisecond)
	}
	second := b.start(t)
	took := waitPartitions(t, 3*ttl, []string{a.url(), b.url()}, 4, 4)
	t.Logf("second origin holds 4 of 8 partitions %s after it was ready (%d events accepted)", took.Round(time.Millisecond), s.nAcc.Load())

	// Kill it once it has applied events of its own, while events still flow.
	var byB float64
	for byB = counter(b.url(), "segedge_origin_events_applied_total"); byB < 200; byB = counter(b.url(), "segedge_origin_events_applied_total") {
		select {
		case err := <-done:
			t.Fatalf("sender ended before the kill (second origin applied %v events): %v", byB, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := second.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-second.done
	t.Logf("SIGKILL of the second origin after it applied %.0f events; %d events accepted", byB, s.nAcc.Load())
	took = waitPartitions(t, ttl+ttl/3+5*time.Second, []string{a.url()}, 8)
	t.Logf("first origin holds all 8 partitions again %s after the kill (lease TTL %s)", took.Round(time.Millisecond), ttl)
	if took < ttl/2 {
		t.Errorf("partitions taken back %s after the kill, before the dead origin's leases could expire", took)
	}

	if err := <-done; err != nil {
		t.Fatalf("sender: %v (accepted %d of %d)", err, s.nAcc.Load(), events)
	}
	if got := s.nAcc.Load(); got != events {
		t.Fatalf("accepted %d distinct events, want all %d", got, events)
	}
	waitExactlyOnce(t, a, userIDs, s.Expected(), 30*time.Second)
	checkDeltaVersions(t, a, userIDs)
	t.Logf("first origin: %.0f events applied, %.0f redelivered events recognised as already applied; leases acquired %.0f, released %.0f, lost %.0f",
		counter(a.url(), "segedge_origin_events_applied_total"), counter(a.url(), "segedge_origin_events_duplicate_total"),
		counter(a.url(), `segedge_origin_partition_lease_changes_total{change="acquired"}`),
		counter(a.url(), `segedge_origin_partition_lease_changes_total{change="released"}`),
		counter(a.url(), `segedge_origin_partition_lease_changes_total{change="lost"}`))
	if lost := counter(a.url(), `segedge_origin_partition_lease_changes_total{change="lost"}`); lost != 0 {
		t.Errorf("the surviving origin lost %v leases, want 0", lost)
	}
	if code, took := first.stop(10 * time.Second); code != 0 {
		t.Errorf("origin exited %d after SIGTERM (%s)", code, took)
	}
}

// TestSecondOriginTakesOverAtOnceAfterACleanStop: an origin stopped with SIGTERM releases its
// leases before it exits, so the other origin holds every partition well within the TTL.
func TestSecondOriginTakesOverAtOnceAfterACleanStop(t *testing.T) {
	a := newChaosOrigin(t, "")
	b := &chaosOrigin{addr: freeAddr(t), nats: a.nats}
	for _, kv := range a.env {
		switch {
		case strings.HasPrefix(kv, "ORIGIN_ADDR="):
			kv = "ORIGIN_ADDR=" + b.addr
		case strings.HasPrefix(kv, "SEGEDGE_DATA_DIR="):
			kv = "SEGEDGE_DATA_DIR=" + t.TempDir()
		}
		b.env = append(b.env, kv)
	}
	first := a.start(t)
	second := b.start(t)
	waitPartitions(t, 15*time.Second, []string{a.url(), b.url()}, 4, 4)
	t0 := time.Now()
	if code, took := first.stop(10 * time.Second); code != 0 {
		t.Fatalf("origin exited %d after SIGTERM (%s)", code, took)
	}
	waitPartitions(t, 10*time.Second, []string{b.url()}, 8)
	took := time.Since(t0)
	t.Logf("the remaining origin holds all 8 partitions %s after SIGTERM to the other (default TTL 10s)", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("takeover after a clean stop took %s: the leases were not released", took)
	}
	second.stop(10 * time.Second)
}
