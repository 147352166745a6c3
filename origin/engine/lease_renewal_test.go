package engine

import (
	"context"
	"testing"
	"time"
)

// TestARenewalStoredAfterItsTimeoutKeepsTheLease: a renewal whose reply came too late (its
// context timed out) may still have been stored, so the key names this origin at a revision the
// lease loop never saw. The next renewal's revision check then fails although nobody else holds
// the partition; the holder must see the key is still its own and keep renewing, not drop the
// partition and leave it without a worker until its own key expires.
func TestARenewalStoredAfterItsTimeoutKeepsTheLease(t *testing.T) {
	s := newShared(t)
	P := s.n.Topology.Partitions
	a := s.start(t, "origin-a")
	waitReady(t, a.eng)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := s.n.JS.KeyValue(ctx, s.n.Topology.LeaseBucket())
	if err != nil {
		t.Fatal(err)
	}
	// What a renewal stored after its caller gave up looks like: the same value, a new revision.
	if _, err := kv.Put(ctx, leaseKey(0), []byte("origin-a")); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(testLeaseTTL + testLeaseTTL/2); time.Now().Before(end); {
		if got := a.eng.Held(); len(got) != P {
			t.Fatalf("origin a holds %v after one of its renewals was stored late, want all %d partitions", got, P)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := a.changes("lost"); got != 0 {
		t.Errorf("origin a lost %v leases, want none: every key still named it", got)
	}
}
