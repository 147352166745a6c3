package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/delta"
)

// Time-based exit, once for real: the controllable-clock tests (origin/engine) guard the logic;
// this one guards the real chain — the due time in Redis, the origin polling it, the exit delta
// on DELTAS — against the bound of one second after the due time.
//
// The shortest window the rules accept is a minute (rules.MinWindow), so the event carries a ts
// in the past, chosen so its bucket leaves the window a few seconds after it is sent. Windows up
// to 10m count in 10-second buckets (core/profile's BucketSize), and an event leaves
// count(type, W) when its bucket's end is W old: due = bucket end + W.
const (
	expiryWindow = time.Minute
	expiryBucket = 10 * time.Second
	// expiryLead is the least time from sending the event to its due time: room to see the user
	// enter first. The due time lands 5 to 15 s after sending.
	expiryLead = 5 * time.Second
	// expiryBound is the promise: the exit delta published within 1 s of the due time.
	expiryBound = time.Second
)

// expiryPlan returns an event time ts and when its window count drops: the first bucket end plus
// window at least lead after now. ts lies mid-bucket, so the due time does not hinge on rounding.
func expiryPlan(now time.Time, window, bucket, lead time.Duration) (ts, due time.Time) {
	b := bucket.Milliseconds()
	earliest := now.Add(lead).UnixMilli()
	dueMs := (earliest + b - 1) / b * b // bucket ends are multiples of the bucket size; window is too
	due = time.UnixMilli(dueMs)
	return due.Add(-window - bucket/2), due
}

// seenDelta is one delta read from DELTAS with when the stream stored its message (the moment it
// was published, on the NATS server's clock, which is this machine's) and when the test read it.
type seenDelta struct {
	delta.Delta
	stored, received time.Time
}

// watchDeltas reads the system's DELTAS stream from its start with an ordered consumer and passes
// every delta on, in stream order.
func watchDeltas(t *testing.T, sys *system) <-chan seenDelta {
	t.Helper()
	js := systemJS(t, sys)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream := bus.Topology{Prefix: sys.natsPrefix}.DeltasStream()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("consume %s: %v", stream, err)
	}
	out := make(chan seenDelta, 64)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		received := time.Now()
		md, err := m.Metadata()
		if err != nil {
			t.Errorf("DELTAS message metadata: %v", err)
			return
		}
		ds, err := delta.DecodeBatch(m.Data())
		if err != nil {
			t.Errorf("DELTAS message %d: %v", md.Sequence.Stream, err)
			return
		}
		for _, d := range ds {
			select {
			case out <- seenDelta{Delta: d, stored: md.Timestamp, received: received}:
			default:
				t.Errorf("DELTAS reader full; delta of %s v%d dropped", d.UserID, d.Version)
			}
		}
	})
	if err != nil {
		t.Fatalf("consume %s: %v", stream, err)
	}
	t.Cleanup(cc.Stop)
	return out
}

// nextDelta returns the first delta of user that match accepts, failing the test at deadline.
func nextDelta(t *testing.T, deltas <-chan seenDelta, user string, deadline time.Time, what string, match func(delta.Delta) bool) seenDelta {
	t.Helper()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		select {
		case d := <-deltas:
			if d.UserID == user && match(d.Delta) {
				return d
			}
		case <-timer.C:
			t.Fatalf("no delta %s for %s by %s", what, user, deadline.Format(time.RFC3339Nano))
		}
	}
}

// postEvent sends one event to the origin with the write key.
func postEvent(t *testing.T, sys *system, body string) {
	t.Helper()
	req, _ := http.NewRequest("POST", sys.originURL+"/v1/events", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer write-secret")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /v1/events: %d, want 202", res.StatusCode)
	}
}

// waitUserIn waits until GET /v1/users/{id}/segments says whether user is in segment as want
// (the membership record is written just after the delta is published), failing at deadline.
func waitUserIn(t *testing.T, sys *system, user, segment string, want bool, deadline time.Time) {
	t.Helper()
	for {
		code, body := call(t, "GET", sys.originURL+"/v1/users/"+user+"/segments", "admin-secret", "")
		var got struct {
			Segments []string `json:"segments"`
		}
		if code == 200 && json.Unmarshal([]byte(body), &got) == nil && slices.Contains(got.Segments, segment) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /v1/users/%s/segments: %d %s, want in %s: %v", user, code, body, segment, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A user in count("add_to_cart", "1m") > 0 leaves the segment when the event's bucket leaves
// the window, with no new event: the origin publishes the exit delta no earlier than the due
// time and within a second of it, with real Redis (the schedule) and NATS.
func TestAUserLeavesAWindowedSegmentWithinASecondOfTheDueTime(t *testing.T) {
	sys := startSystem(t, services{external: true}, siteUpstream(t).URL)
	putRulesText(t, sys, "segments:\n  - name: carted\n    rule: count(\"add_to_cart\", \"1m\") > 0\n")
	waitSegmentListed(t, sys.originURL, "admin-secret", "carted")
	deltas := watchDeltas(t, sys)

	user := "expiry-user-" + sys.natsPrefix
	ts, due := expiryPlan(time.Now(), expiryWindow, expiryBucket, expiryLead)
	postEvent(t, sys, fmt.Sprintf(`[{"event_id":"exp-1","user_id":%q,"type":"add_to_cart","ts":%d}]`, user, ts.UnixMilli()))

	in := func(seg string, ss []string) bool { return slices.Contains(ss, seg) }
	enter := nextDelta(t, deltas, user, due, "entering carted", func(d delta.Delta) bool { return in("carted", d.Entered) })
	if !enter.stored.Before(due) {
		t.Fatalf("entered carted at %s, not before the due time %s: too late to watch the exit", enter.stored.Format(time.RFC3339Nano), due.Format(time.RFC3339Nano))
	}
	waitUserIn(t, sys, user, "carted", true, due)

	exit := nextDelta(t, deltas, user, due.Add(10*time.Second), "exiting carted", func(d delta.Delta) bool { return in("carted", d.Exited) })
	lateness := exit.stored.Sub(due)
	t.Logf("event ts %s, due %s; entered %s before due; exit stored %v after due (read %v after); the delta's due differs from ours by %v",
		ts.Format("15:04:05.000"), due.Format("15:04:05.000"), due.Sub(enter.stored).Round(time.Millisecond),
		lateness, exit.received.Sub(due), time.UnixMilli(exit.Due).Sub(due))
	if d := time.UnixMilli(exit.Due).Sub(due); d != 0 {
		t.Errorf("the exit delta says it was due %v from the due time we computed: the origin's expiry lateness would be off by that", d)
	}
	if exit.Cause != delta.CauseExpiry || in("carted", exit.Members) {
		t.Fatalf("exit delta = %+v, want cause expiry without carted", exit.Delta)
	}
	if lateness < 0 {
		t.Fatalf("exit published %v before the due time %s: the window dropped the event early", -lateness, due.Format(time.RFC3339Nano))
	}
	if lateness > expiryBound {
		t.Fatalf("exit published %v after the due time, want within %v", lateness, expiryBound)
	}
	waitUserIn(t, sys, user, "carted", false, time.Now().Add(2*time.Second))
	checkLatenessMetric(t, sys)
}

// checkLatenessMetric reads the origin's own account: one expiry observed, within the bound. It
// counts from when the origin's poll found the user due, so it leaves out the poll's delay.
func checkLatenessMetric(t *testing.T, sys *system) {
	t.Helper()
	const name = "segedge_origin_expiry_lateness_seconds"
	deadline := time.Now().Add(2 * time.Second) // observed just after the publish was acked
	for counter(sys.originURL, name+"_count") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%s_count never reached 1", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	n, sum := counter(sys.originURL, name+"_count"), counter(sys.originURL, name+"_sum")
	within := counter(sys.originURL, fmt.Sprintf(`%s_bucket{le="%g"}`, name, expiryBound.Seconds()))
	t.Logf("origin's %s: %g observed, sum %.4fs", name, n, sum)
	if within != n {
		t.Fatalf("origin's %s: %g of %g expiries within %v", name, within, n, expiryBound)
	}
}
