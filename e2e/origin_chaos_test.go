package e2e

// Chaos tests of the origin: real processes against the real Redis and NATS (CI's NATS_URL and
// REDIS_URL). They guard the promise of the design: an event answered 202 is applied to its
// user's profile exactly once, whatever happens to the origin process or to Redis meanwhile.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/ingest"
	"github.com/segedge/segedge/core/testenv"
)

const (
	chaosAdminToken = "chaos-admin"
	chaosWriteKey   = "chaos-write"
)

// chaosOrigin is how to start (and restart) one origin against the external services.
type chaosOrigin struct {
	addr string
	env  []string
	nats *testenv.NATS
}

// newChaosOrigin checks that external NATS and Redis are configured (skipping, or failing under
// SEGEDGE_REQUIRE_SERVICES=1, when not) and returns origin settings under fresh prefixes, which
// testenv deletes at cleanup. redisURL overrides REDIS_URL (to route Redis through a proxy).
func newChaosOrigin(t *testing.T, redisURL string) *chaosOrigin {
	t.Helper()
	natsURL, envRedis := os.Getenv("NATS_URL"), os.Getenv("REDIS_URL")
	if natsURL == "" || envRedis == "" {
		if testenv.RequireServices() {
			t.Fatal("NATS_URL and REDIS_URL are required (SEGEDGE_REQUIRE_SERVICES=1)")
		}
		t.Skip("NATS_URL and REDIS_URL not set; the origin chaos tests need the real services")
	}
	n := testenv.StartNATS(t)
	r := testenv.StartRedis(t)
	if redisURL == "" {
		redisURL = envRedis
	}
	o := &chaosOrigin{addr: freeAddr(t), nats: n}
	o.env = []string{
		"ORIGIN_ADDR=" + o.addr,
		"SEGEDGE_DATA_DIR=" + t.TempDir(),
		"NATS_URL=" + natsURL,
		"REDIS_URL=" + redisURL,
		"SEGEDGE_NATS_PREFIX=" + n.Topology.Prefix,
		"SEGEDGE_REDIS_PREFIX=" + r.Prefix,
		"SEGEDGE_PARTITIONS=" + fmt.Sprint(bus.DefaultPartitions),
		"SEGEDGE_ADMIN_TOKEN=" + chaosAdminToken,
		"SEGEDGE_WRITE_KEY=" + chaosWriteKey,
	}
	return o
}

func (o *chaosOrigin) url() string { return "http://" + o.addr }

// start runs a new origin process and waits until it is ready.
func (o *chaosOrigin) start(t *testing.T) *proc {
	t.Helper()
	p := start(t, "origin", o.env...)
	waitStatus(t, p, o.url()+"/readyz", 200, 20*time.Second)
	return p
}

// chaosEvent is one event as the test sends it.
type chaosEvent struct {
	ID     string `json:"event_id"`
	UserID string `json:"user_id"`
	Type   string `json:"type"`
	TS     string `json:"ts"`
}

// chaosBatches returns n events with unique ids over users u00…, cut into batches. Every
// retryEvery-th batch is sent three times (right after itself and again at the end), as a client
// that lost the answer retries the whole request.
func chaosBatches(prefix string, n, users, batch, retryEvery int) (batches [][]chaosEvent, userIDs []string) {
	rng := rand.New(rand.NewPCG(1, 2))
	for u := range users {
		userIDs = append(userIDs, fmt.Sprintf("%su%02d", prefix, u))
	}
	types := []string{"page_view", "page_view", "page_view", "add_to_cart", "purchase_completed"}
	var cur []chaosEvent
	for i := range n {
		cur = append(cur, chaosEvent{
			ID:     fmt.Sprintf("%se%05d", prefix, i),
			UserID: userIDs[rng.IntN(users)],
			Type:   types[rng.IntN(len(types))],
		})
		if len(cur) == batch || i == n-1 {
			batches = append(batches, cur)
			cur = nil
		}
	}
	var out, late [][]chaosEvent
	for i, b := range batches {
		out = append(out, b)
		if retryEvery > 0 && i%retryEvery == retryEvery-1 {
			out = append(out, slices.Clone(b))   // re-sent right away
			late = append(late, slices.Clone(b)) // and once more at the end
		}
	}
	return append(out, late...), userIDs
}

// chaosSender posts batches to the origin and keeps the ledger the test checks against: per
// user, the event ids the origin accepted (answered 202 for and did not list as rejected).
// A batch that was not wholly accepted (connection error, non-202, partial rejection) is retried
// until it is, so events sent while the origin is down are sent again after it is back.
type chaosSender struct {
	url    string
	client *http.Client

	mu       sync.Mutex
	accepted map[string]map[string]bool // user → event id → accepted
	nAcc     atomic.Int64               // distinct accepted events
	posts    atomic.Int64
	failures []string // attempts that were not a clean 202, "hh:mm:ss.mmm reason"
}

func newChaosSender(originURL string) *chaosSender {
	return &chaosSender{
		url:      originURL,
		client:   &http.Client{Timeout: 10 * time.Second},
		accepted: map[string]map[string]bool{},
	}
}

// post sends one batch once and records what was accepted; nil means every event was.
func (s *chaosSender) post(ctx context.Context, b []chaosEvent) error {
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for i := range b {
		b[i].TS = now
	}
	body, err := json.Marshal(b)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", s.url+"/v1/events", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+chaosWriteKey)
	req.Header.Set("Content-Type", "application/json")
	s.posts.Add(1)
	res, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("post: %w", err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusAccepted {
		return fmt.Errorf("status %d: %s", res.StatusCode, strings.TrimSpace(string(raw)))
	}
	var ans ingest.Result
	if err := json.Unmarshal(raw, &ans); err != nil {
		return fmt.Errorf("202 with unreadable answer %q: %w", raw, err)
	}
	rejected := map[int]string{}
	for _, fe := range ans.Rejected {
		rejected[fe.Index] = fe.Reason
	}
	s.mu.Lock()
	for i, ev := range b {
		if _, bad := rejected[i]; bad {
			continue
		}
		ids := s.accepted[ev.UserID]
		if ids == nil {
			ids = map[string]bool{}
			s.accepted[ev.UserID] = ids
		}
		if !ids[ev.ID] {
			ids[ev.ID] = true
			s.nAcc.Add(1)
		}
	}
	s.mu.Unlock()
	if len(rejected) > 0 {
		return fmt.Errorf("202 with %d of %d events rejected: %v", len(rejected), len(b), ans.Rejected[0].Reason)
	}
	return nil
}

func (s *chaosSender) fail(err error) {
	s.mu.Lock()
	s.failures = append(s.failures, time.Now().Format("15:04:05.000")+" "+err.Error())
	s.mu.Unlock()
}

// Failures returns the attempts that were not a clean 202, in order.
func (s *chaosSender) Failures() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.failures...)
}

// run sends the batches at about rate events/s from workers goroutines, each batch retried every
// 100ms until it is wholly accepted. It returns when every batch was accepted, or ctx is done.
func (s *chaosSender) run(ctx context.Context, batches [][]chaosEvent, rate, workers int) error {
	work := make(chan []chaosEvent)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for b := range work {
				for {
					err := s.post(ctx, b)
					if err == nil {
						break
					}
					if ctx.Err() != nil {
						return
					}
					s.fail(err)
					select {
					case <-ctx.Done():
						return
					case <-time.After(100 * time.Millisecond):
					}
				}
			}
		})
	}
	t0, sent := time.Now(), 0
	for _, b := range batches {
		// Pace by events: batch k starts no earlier than (events before it)/rate after t0.
		if d := time.Until(t0.Add(time.Duration(sent) * time.Second / time.Duration(rate))); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
		sent += len(b)
		select {
		case work <- b:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	return ctx.Err()
}

// Expected returns, per user, how many distinct events the origin accepted.
func (s *chaosSender) Expected() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int64, len(s.accepted))
	for u, ids := range s.accepted {
		out[u] = int64(len(ids))
	}
	return out
}

// profileVersion reads a user's profile version through the admin API; 0 when there is no
// profile yet.
func profileVersion(ctx context.Context, originURL, user string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", originURL+"/v1/users/"+url.PathEscape(user), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+chaosAdminToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	switch res.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return 0, nil
	default:
		return 0, fmt.Errorf("GET user %s: %d %s", user, res.StatusCode, strings.TrimSpace(string(raw)))
	}
	var ans struct {
		Profile struct {
			Version int64 `json:"version"`
		} `json:"profile"`
	}
	if err := json.Unmarshal(raw, &ans); err != nil {
		return 0, fmt.Errorf("GET user %s: %w", user, err)
	}
	return ans.Profile.Version, nil
}

// backlog returns how many events of EVENTS the origin's consumers have not yet acknowledged
// (waiting plus delivered-but-unacknowledged), over all partitions.
func backlog(ctx context.Context, n *testenv.NATS, partitions int) (uint64, error) {
	var total uint64
	for p := range partitions {
		c, err := n.JS.Consumer(ctx, n.Topology.EventsStream(), fmt.Sprintf("origin-p%d", p))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return 0, fmt.Errorf("consumer origin-p%d not created yet", p)
		}
		if err != nil {
			return 0, err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return 0, err
		}
		total += info.NumPending + uint64(info.NumAckPending)
	}
	return total, nil
}

// waitExactlyOnce waits until the origin has acknowledged every stored event and each user's
// profile version equals the number of distinct events accepted for them. A version above that
// fails at once: an event was counted twice.
func waitExactlyOnce(t *testing.T, o *chaosOrigin, users []string, want map[string]int64, timeout time.Duration) {
	t.Helper()
	var total int64
	for _, n := range want {
		total += n
	}
	t0 := time.Now()
	deadline := t0.Add(timeout)
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pending, berr := backlog(ctx, o.nats, bus.DefaultPartitions)
		var behind []string
		var applied int64
		for _, u := range users {
			got, err := profileVersion(ctx, o.url(), u)
			if err != nil {
				behind = append(behind, err.Error())
				continue
			}
			applied += got
			if got > want[u] {
				cancel()
				t.Fatalf("user %s: profile version %d > %d distinct accepted events: an event was applied twice", u, got, want[u])
			}
			if got < want[u] {
				behind = append(behind, fmt.Sprintf("%s %d/%d", u, got, want[u]))
			}
		}
		cancel()
		if berr == nil && pending == 0 && len(behind) == 0 {
			t.Logf("exactly once: %d events over %d users applied, backlog drained, %s after the last send",
				total, len(users), time.Since(t0).Round(time.Millisecond))
			return
		}
		last = fmt.Sprintf("backlog %d (err %v), applied %d/%d, behind: %s", pending, berr, applied, total, strings.Join(firstN(behind, 8), ", "))
		if time.Now().After(deadline) {
			t.Fatalf("not converged within %s: %s", timeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// counter reads an unlabelled counter from the origin's /metrics; -1 when absent.
func counter(originURL, name string) float64 {
	code, body := status(originURL + "/metrics")
	if code != 200 {
		return -1
	}
	for line := range strings.Lines(body) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	return -1
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("…%d more", len(s)-n))
	}
	return s
}

// TestOriginKilledMidStreamLosesAndDoublesNothing kills the origin with SIGKILL while events
// flow and the engine is applying them, starts a new one with the same settings, and checks
// that every accepted event ends up applied exactly once.
func TestOriginKilledMidStreamLosesAndDoublesNothing(t *testing.T) {
	o := newChaosOrigin(t, "")
	first := o.start(t)
	putChaosRules(t, o)

	const events, users = 3000, 50
	batches, userIDs := chaosBatches("k", events, users, 20, 7)
	s := newChaosSender(o.url())
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.run(ctx, batches, 600, 4) }()

	// Kill once a third of the events are in, while requests are in flight.
	for s.nAcc.Load() < events/3 {
		select {
		case err := <-done:
			t.Fatalf("sender ended before the kill: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	atKill := s.nAcc.Load()
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-first.done
	t.Logf("SIGKILL after %d accepted events", atKill)
	time.Sleep(300 * time.Millisecond) // requests meanwhile fail and will be re-sent
	second := o.start(t)
	t.Logf("second origin ready")

	if err := <-done; err != nil {
		t.Fatalf("sender: %v (accepted %d of %d)", err, s.nAcc.Load(), events)
	}
	if got := s.nAcc.Load(); got != events {
		t.Fatalf("accepted %d distinct events, want all %d", got, events)
	}
	fails := s.Failures()
	if len(fails) == 0 {
		t.Errorf("no request failed around the kill: the kill did not happen mid-stream")
	}
	t.Logf("%d posts, %d failed attempts (re-sent), e.g. %s", s.posts.Load(), len(fails), strings.Join(firstN(fails, 2), "; "))

	// Events the killed process had pulled but not acknowledged come back once the second origin
	// has taken the partitions and recreated their consumers from the ack floor; allow a margin
	// for a loaded machine.
	waitExactlyOnce(t, o, userIDs, s.Expected(), 30*time.Second)
	checkDeltaVersions(t, o, userIDs)
	// Redelivered events the killed process had already applied show up as duplicates here.
	t.Logf("second origin: %.0f events applied, %.0f redelivered events recognised as already applied",
		counter(o.url(), "segedge_origin_events_applied_total"), counter(o.url(), "segedge_origin_events_duplicate_total"))
	if code, took := second.stop(10 * time.Second); code != 0 {
		t.Errorf("second origin exited %d after SIGTERM (%s)", code, took)
	}
}

// tcpProxy forwards connections to a target; cut closes the listener and every connection (the
// network to Redis is gone), restore listens again on the same address.
type tcpProxy struct {
	t      *testing.T
	addr   string
	target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{t: t, addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	p.serve(ln)
	t.Cleanup(func() { p.cut(); p.wg.Wait() })
	return p
}

func (p *tcpProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.ln != ln { // cut meanwhile
				p.mu.Unlock()
				c.Close()
				up.Close()
				return
			}
			p.conns[c], p.conns[up] = struct{}{}, struct{}{}
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				io.Copy(dst, src)
				dst.Close()
				src.Close()
				p.mu.Lock()
				delete(p.conns, dst)
				delete(p.conns, src)
				p.mu.Unlock()
			}
			p.wg.Go(func() { pipe(up, c) })
			p.wg.Go(func() { pipe(c, up) })
		}
	})
}

// cut closes the listener and every open connection.
func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// restore listens on the proxy's address again.
func (p *tcpProxy) restore() {
	p.t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port was ours a moment ago; retry briefly if the kernel still holds it
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.serve(ln)
}

// TestOriginRidesOutRedisOutage cuts the origin's connection to Redis for a few seconds while
// events flow: ingest keeps answering 202 (events live in JetStream first), /readyz says the
// store is down, and once Redis is back the backlog drains with every event applied exactly once.
func TestOriginRidesOutRedisOutage(t *testing.T) {
	envRedis := os.Getenv("REDIS_URL")
	ru, err := url.Parse(envRedis)
	if envRedis != "" && err != nil {
		t.Fatalf("REDIS_URL %q: %v", envRedis, err)
	}
	var proxied string
	var proxy *tcpProxy
	if envRedis != "" && err == nil {
		proxy = newTCPProxy(t, ru.Host)
		ru.Host = proxy.addr
		proxied = ru.String()
	}
	o := newChaosOrigin(t, proxied)
	origin := o.start(t)
	putChaosRules(t, o)

	const events, users = 3000, 50
	batches, userIDs := chaosBatches("r", events, users, 20, 7)
	s := newChaosSender(o.url())
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.run(ctx, batches, 500, 4) }()

	for s.nAcc.Load() < events/4 {
		select {
		case err := <-done:
			t.Fatalf("sender ended before the cut: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	beforeCut := s.nAcc.Load()
	proxy.cut()
	cutAt := time.Now()
	t.Logf("Redis cut after %d accepted events", beforeCut)

	// While Redis is away: /readyz must name the store, and ingest must go on.
	var readyz string
	for time.Since(cutAt) < 3*time.Second {
		code, body := status(o.url() + "/readyz")
		if code == 503 && strings.Contains(body, "store") {
			readyz = strings.TrimSpace(body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	duringCut := s.nAcc.Load() - beforeCut
	proxy.restore()
	t.Logf("Redis restored after %s; %d events accepted during the cut", time.Since(cutAt).Round(time.Millisecond), duringCut)
	if readyz == "" {
		t.Errorf("/readyz never answered 503 naming the store while Redis was cut")
	} else {
		t.Logf("/readyz during the cut: %q", readyz)
	}
	if duringCut < 500 {
		t.Errorf("only %d events accepted in the 3s of the cut: ingest must not depend on Redis", duringCut)
	}
	waitStatus(t, origin, o.url()+"/readyz", 200, 10*time.Second)

	if err := <-done; err != nil {
		t.Fatalf("sender: %v (accepted %d of %d)", err, s.nAcc.Load(), events)
	}
	if fails := s.Failures(); len(fails) > 0 {
		t.Errorf("%d ingest attempts were not a clean 202 (Redis must not matter to ingest): %s",
			len(fails), strings.Join(firstN(fails, 3), "; "))
	}
	if got := s.nAcc.Load(); got != events {
		t.Fatalf("accepted %d distinct events, want all %d", got, events)
	}
	waitExactlyOnce(t, o, userIDs, s.Expected(), 30*time.Second)
	checkDeltaVersions(t, o, userIDs)
	t.Logf("origin: %.0f events applied, %.0f redelivered events recognised as already applied, %.0f failed profile updates retried",
		counter(o.url(), "segedge_origin_events_applied_total"), counter(o.url(), "segedge_origin_events_duplicate_total"),
		counter(o.url(), "segedge_origin_profile_update_failures_total"))
	if code, took := origin.stop(10 * time.Second); code != 0 {
		t.Errorf("origin exited %d after SIGTERM (%s)", code, took)
	}
}

// chaosRules is a ruleset for the chaos tests: the delta of every event carries the feature the
// rule reads, so every event publishes a delta and the DELTAS stream records the order in which
// the origin handled each user's events.
const chaosRules = `segments:
  - name: carted
    rule: count("add_to_cart", "30m") > 0
`

// putChaosRules uploads chaosRules and waits until the origin evaluates with it.
func putChaosRules(t *testing.T, o *chaosOrigin) {
	t.Helper()
	pushRuleset(t, o.url(), chaosAdminToken, chaosRules)
	waitSegmentListed(t, o.url(), chaosAdminToken, "carted")
}

// checkDeltaVersions reads the whole DELTAS stream and checks that each user's deltas carry
// versions 1, 2, 3 … in stream order: none skipped, none repeated, none going back, whatever
// crashed or failed meanwhile (a republished version is dropped by JetStream as a duplicate).
func checkDeltaVersions(t *testing.T, o *chaosOrigin, users []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := o.nats.JS.OrderedConsumer(ctx, o.nats.Topology.DeltasStream(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total := info.NumPending
	last := map[string]uint64{}
	var n, deltas uint64
	for n < total {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			n++
			ds, err := delta.DecodeBatch(m.Data()) // a message holds a batch's deltas in order
			if err != nil {
				t.Fatalf("DELTAS message %d: %v", n, err)
			}
			for _, d := range ds {
				deltas++
				if d.Version != last[d.UserID]+1 {
					t.Fatalf("user %s: delta version %d after %d (message %d): out of order, repeated or skipped", d.UserID, d.Version, last[d.UserID], n)
				}
				last[d.UserID] = d.Version
			}
		}
		if err := batch.Error(); err != nil && got == 0 {
			t.Fatalf("read DELTAS after %d of %d: %v", n, total, err)
		}
	}
	for _, u := range users {
		if last[u] == 0 {
			t.Errorf("user %s: no delta", u)
		}
	}
	t.Logf("DELTAS: %d deltas in %d messages, every user's versions 1…n in order with no gap or repeat", deltas, n)
}
