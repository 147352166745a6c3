package e2e

// Chaos test of the edge's segment replica: real origin and edge processes against the real NATS
// and Redis (CI's NATS_URL and REDIS_URL). The promise: a replica that loses NATS, or a process
// that is killed and started again, catches up from DELTAS and ends with exactly the origin's
// version of every user: no delta lost.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// userState is a user's segment memberships and their version, as the origin's admin API
// (GET /v1/users/{id}) or the edge's replica (GET /user/segments through the trusted user
// header) tells them.
type userState struct {
	Version  int64    `json:"version"`
	Segments []string `json:"segments"`
}

func (s userState) String() string { return fmt.Sprintf("v%d %v", s.Version, s.Segments) }

func readUserState(ctx context.Context, url string, hdr ...string) (userState, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return userState{}, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := rawClient.Do(req)
	if err != nil {
		return userState{}, err
	}
	defer res.Body.Close()
	var st userState
	switch res.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return st, nil
	default:
		return st, fmt.Errorf("GET %s: %d", url, res.StatusCode)
	}
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("GET %s: %w", url, err)
	}
	slices.Sort(st.Segments)
	return st, nil
}

// waitEdgeMatchesOrigin waits until, for every user, the edge's replica holds the origin's
// profile version.
func waitEdgeMatchesOrigin(t *testing.T, originURL, edgeURL string, users []string, timeout time.Duration) {
	t.Helper()
	t0 := time.Now()
	var last string
	for {
		var behind []string
		for _, u := range users {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			want, err := readUserState(ctx, originURL+"/v1/users/"+url.PathEscape(u), "Authorization", "Bearer "+chaosAdminToken)
			if err != nil {
				cancel()
				behind = append(behind, err.Error())
				continue
			}
			got, err := readUserState(ctx, edgeURL+"/user/segments", "X-User-Id", u)
			cancel()
			switch {
			case err != nil:
				behind = append(behind, err.Error())
			case got.Version > want.Version:
				t.Fatalf("user %s: edge has %s, origin only %s", u, got, want)
			case got.Version < want.Version:
				behind = append(behind, fmt.Sprintf("%s %s/%s", u, got, want))
			case !slices.Equal(got.Segments, want.Segments):
				t.Fatalf("user %s: edge and origin agree on version %d but not on segments: %v vs %v", u, got.Version, got.Segments, want.Segments)
			}
		}
		if len(behind) == 0 {
			t.Logf("edge replica equals the origin for %d users, %s after the last event", len(users), time.Since(t0).Round(time.Millisecond))
			return
		}
		last = strings.Join(firstN(behind, 8), ", ")
		if time.Since(t0) > timeout {
			t.Fatalf("edge replica did not catch up within %s: %s", timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestEdgeReplicaRidesOutNATSOutageAndRestart cuts the edge's connection to NATS while events
// flow, then kills the edge with SIGKILL and starts it again, and checks that its replica ends
// with exactly the origin's version of every user. The edge has no origin token, so a replica
// miss cannot be papered over by asking the origin: what it knows came through DELTAS.
func TestEdgeReplicaRidesOutNATSOutageAndRestart(t *testing.T) {
	o := newChaosOrigin(t, "")
	o.start(t)
	// Segments over the events the sender sends, so every event changes what edges know.
	pushRuleset(t, o.url(), chaosAdminToken, `segments:
  - name: browser
    rule: count("page_view", "1h") >= 3
  - name: shopper
    rule: count("add_to_cart", "1h") > 0 && count("purchase_completed", "1h") == 0
  - name: buyer
    rule: count("purchase_completed", "1h") > 0
`)
	natsURL := strings.TrimPrefix(o.nats.URL, "nats://")
	cut := newTCPProxy(t, natsURL)
	edgeAddr, opsAddr := freeAddr(t), freeAddr(t)
	edgeEnv := []string{"EDGE_ADDR=" + edgeAddr, "EDGE_OPS_ADDR=" + opsAddr, "UPSTREAM_URL=" + testUpstream(t).URL,
		"NATS_URL=nats://" + cut.addr, "SEGEDGE_NATS_PREFIX=" + o.nats.Topology.Prefix,
		"SEGEDGE_USER_HEADER=X-User-Id", "SEGEDGE_TRUSTED_NETWORKS=127.0.0.0/8",
		"SEGEDGE_COOKIE_KEY=test-cookie-key-0123456789abcdef0123456789"}
	edge := start(t, "edge", edgeEnv...)
	edgeURL := "http://" + edgeAddr
	waitStatus(t, edge, "http://"+opsAddr+"/readyz", 200, 20*time.Second)
	waitRuleset(t, edgeURL+"/", "1")
	time.Sleep(200 * time.Millisecond) // the origin's engine loads it too

	const events, users = 2000, 40
	batches, userIDs := chaosBatches("r", events, users, 10, 0)
	s := newChaosSender(o.url())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.run(ctx, batches, 400, 4) }()

	waitAccepted := func(n int64) {
		for s.nAcc.Load() < n {
			select {
			case err := <-done:
				t.Fatalf("sender ended early: %v", err)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	// A NATS outage for the edge alone: its connection is cut for 2 s while deltas keep coming.
	waitAccepted(events / 4)
	cut.cut()
	t.Logf("edge cut off from NATS after %d accepted events", s.nAcc.Load())
	time.Sleep(2 * time.Second)
	cut.restore()
	t.Logf("edge's NATS restored after %d accepted events", s.nAcc.Load())

	// The edge process killed and started again mid-stream.
	waitAccepted(events * 2 / 3)
	if err := edge.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-edge.done
	t.Logf("edge SIGKILLed after %d accepted events", s.nAcc.Load())
	edge = start(t, "edge", edgeEnv...)
	waitStatus(t, edge, "http://"+opsAddr+"/readyz", 200, 20*time.Second)

	if err := <-done; err != nil {
		t.Fatalf("sender: %v", err)
	}
	waitExactlyOnce(t, o, userIDs, s.Expected(), 45*time.Second)
	waitEdgeMatchesOrigin(t, o.url(), edgeURL, userIDs, 30*time.Second)
}
