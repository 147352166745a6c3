package trigger

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/testenv"
)

var testSecret = []byte("test-secret")

// receiver is a webhook endpoint on 127.0.0.1 that answers with status(call number) and
// records every call.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	calls  []call
	status func(n int) int
}

type call struct {
	id, contentType, signature string
	body                       []byte
	status                     int
}

func newReceiver(t *testing.T, status func(n int) int) *receiver {
	r := &receiver{status: status}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		c := call{req.Header.Get(DeliveryHeader), req.Header.Get("Content-Type"), req.Header.Get(SignatureHeader), body, r.status(len(r.calls) + 1)}
		r.calls = append(r.calls, c)
		r.mu.Unlock()
		w.WriteHeader(c.status)
		_, _ = io.WriteString(w, http.StatusText(c.status))
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) got() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]call(nil), r.calls...)
}

func always(code int) func(int) int { return func(int) int { return code } }

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startDispatcher runs a dispatcher until the returned stop is called (or the test ends).
func startDispatcher(t *testing.T, n *testenv.NATS, cfg DispatcherConfig) (*Dispatcher, func()) {
	t.Helper()
	cfg.JS, cfg.Topology = n.JS, n.Topology
	if cfg.Secret == nil {
		cfg.Secret = testSecret
	}
	if cfg.BackoffBase == 0 {
		cfg.BackoffBase, cfg.BackoffMax = 10*time.Millisecond, 40*time.Millisecond
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	d, err := NewDispatcher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return d, stop
}

func fire(t *testing.T, f *Firer, user string, version uint64, segment string) {
	t.Helper()
	d := &delta.Delta{UserID: user, Version: version, Ruleset: 1, Members: []string{segment}, Entered: []string{segment}}
	if err := f.Fire(context.Background(), d); err != nil {
		t.Fatal(err)
	}
}

// deadLetters reads TRIGGERS_DLQ.
func deadLetters(t *testing.T, n *testenv.NATS) []*nats.Msg {
	t.Helper()
	ctx := context.Background()
	s, err := n.JS.Stream(ctx, dlqStreamName(n.Topology.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*nats.Msg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
	}
	return out
}

func counter(d *Dispatcher, result string) float64 {
	return testutil.ToFloat64(d.deliveries.WithLabelValues(result))
}

// pendingOnConsumer is what the durable consumer still holds: not yet delivered plus unacked.
func pendingOnConsumer(t *testing.T, n *testenv.NATS) uint64 {
	t.Helper()
	c, err := n.JS.Consumer(context.Background(), streamName(n.Topology.Prefix), "webhooks")
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.NumPending + uint64(info.NumAckPending)
}

func TestDeliverySignedCloudEvent(t *testing.T) {
	n := testenv.StartNATS(t)
	rcv := newReceiver(t, always(http.StatusNoContent))
	f := newFirer(t, n, nil, Trigger{Name: "vip", On: Enter, Segment: "high_engagement", Webhook: rcv.URL + "/hook"})
	reg := prometheus.NewRegistry()
	d, _ := startDispatcher(t, n, DispatcherConfig{AllowHosts: []string{"127.0.0.1"}, Registerer: reg})
	fire(t, f, "u1", 3, "high_engagement")

	eventually(t, "one delivery", func() bool { return len(rcv.got()) == 1 })
	eventually(t, "the ack", func() bool { return pendingOnConsumer(t, n) == 0 })
	c := rcv.got()[0]
	if c.id != "vip/u1/3" || c.contentType != ContentType {
		t.Errorf("delivery id %q, content type %q", c.id, c.contentType)
	}
	if err := Verify(testSecret, c.signature, c.body, time.Minute); err != nil {
		t.Errorf("signature %q does not verify: %v", c.signature, err)
	}
	tampered := []byte(strings.Replace(string(c.body), `"u1"`, `"u2"`, -1))
	if err := Verify(testSecret, c.signature, tampered, time.Minute); !errors.Is(err, ErrSignatureMismatch) {
		t.Errorf("tampered body: %v, want ErrSignatureMismatch", err)
	}
	e, err := DecodeEvent(c.body)
	if err != nil || e.ID != "vip/u1/3" || e.Data.Trigger != "vip" || e.Subject != "u1" {
		t.Errorf("delivered event %+v, %v", e, err)
	}
	if counter(d, ResultOK) != 1 || counter(d, ResultRetry) != 0 {
		t.Errorf("ok=%v retry=%v", counter(d, ResultOK), counter(d, ResultRetry))
	}
	if n, err := testutil.GatherAndCount(reg, "segedge_origin_webhook_duration_seconds"); err != nil || n != 1 {
		t.Errorf("duration histogram: %d series, %v", n, err)
	}
}

// A receiver failing three times and then succeeding gets exactly one successful delivery,
// after three retries.
func TestRetriesUntilSuccess(t *testing.T) {
	n := testenv.StartNATS(t)
	rcv := newReceiver(t, func(call int) int {
		if call <= 3 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	f := newFirer(t, n, nil, Trigger{Name: "vip", On: Enter, Segment: "s", Webhook: rcv.URL})
	d, _ := startDispatcher(t, n, DispatcherConfig{AllowHosts: []string{"127.0.0.1"}})
	fire(t, f, "u1", 1, "s")

	eventually(t, "a successful delivery", func() bool { return counter(d, ResultOK) == 1 })
	eventually(t, "the ack", func() bool { return pendingOnConsumer(t, n) == 0 })
	time.Sleep(200 * time.Millisecond) // several backoffs: nothing more may arrive
	calls := rcv.got()
	if len(calls) != 4 {
		t.Fatalf("receiver saw %d calls, want 3 failures and 1 success", len(calls))
	}
	for i, c := range calls {
		if c.id != "vip/u1/1" {
			t.Errorf("call %d delivered %q", i, c.id)
		}
	}
	if r := counter(d, ResultRetry); r != 3 {
		t.Errorf("retry counter = %v, want 3", r)
	}
	if dl := deadLetters(t, n); len(dl) != 0 {
		t.Errorf("%d dead letters after a success", len(dl))
	}
}

// A receiver that always fails ends in TRIGGERS_DLQ after MaxAttempts, with the last error.
func TestAlwaysFailingEndsInDeadLetters(t *testing.T) {
	n := testenv.StartNATS(t)
	rcv := newReceiver(t, always(http.StatusServiceUnavailable))
	f := newFirer(t, n, nil, Trigger{Name: "vip", On: Enter, Segment: "s", Webhook: rcv.URL})
	d, _ := startDispatcher(t, n, DispatcherConfig{AllowHosts: []string{"127.0.0.1"}, MaxAttempts: 4})
	fire(t, f, "u1", 1, "s")

	eventually(t, "a dead letter", func() bool { return len(deadLetters(t, n)) == 1 })
	eventually(t, "the firing terminated", func() bool { return pendingOnConsumer(t, n) == 0 })
	time.Sleep(200 * time.Millisecond)
	if got := len(rcv.got()); got != 4 {
		t.Errorf("receiver saw %d calls, want 4 (MaxAttempts)", got)
	}
	m := deadLetters(t, n)[0]
	if m.Subject != dlqSubject(n.Topology.Prefix, "vip") {
		t.Errorf("dead letter on %q", m.Subject)
	}
	if e := m.Header.Get(HeaderError); !strings.Contains(e, "503") {
		t.Errorf("dead letter error %q, want the 503", e)
	}
	if a := m.Header.Get(HeaderAttempts); a != "4" {
		t.Errorf("dead letter attempts %q, want 4", a)
	}
	if ev, err := DecodeEvent(m.Data); err != nil || ev.ID != "vip/u1/1" {
		t.Errorf("dead letter body: %+v %v", ev, err)
	}
	if counter(d, ResultDeadLetter) != 1 || counter(d, ResultRetry) != 3 || counter(d, ResultOK) != 0 {
		t.Errorf("dead_letter=%v retry=%v ok=%v", counter(d, ResultDeadLetter), counter(d, ResultRetry), counter(d, ResultOK))
	}
}

// A webhook on 127.0.0.1 is refused by a dispatcher without an allowlist: no call is made and
// the firing is dead-lettered at once with the reason.
func TestLoopbackWithoutAllowlistIsRefused(t *testing.T) {
	n := testenv.StartNATS(t)
	rcv := newReceiver(t, always(http.StatusOK))
	// The firer's allowlist let the trigger in; the dispatcher's has nothing.
	f := newFirer(t, n, nil, Trigger{Name: "local", On: Enter, Segment: "s", Webhook: rcv.URL})
	d, _ := startDispatcher(t, n, DispatcherConfig{})
	fire(t, f, "u1", 1, "s")

	eventually(t, "a dead letter", func() bool { return len(deadLetters(t, n)) == 1 })
	eventually(t, "the firing terminated", func() bool { return pendingOnConsumer(t, n) == 0 })
	if got := len(rcv.got()); got != 0 {
		t.Errorf("refused target got %d calls", got)
	}
	m := deadLetters(t, n)[0]
	if e := m.Header.Get(HeaderError); !strings.Contains(e, "refused") || !strings.Contains(e, "127.0.0.1") {
		t.Errorf("dead letter error %q, want the refusal", e)
	}
	if a := m.Header.Get(HeaderAttempts); a != "1" {
		t.Errorf("attempts %q, want 1 (no retries for a refused target)", a)
	}
	if counter(d, ResultRefused) != 1 || counter(d, ResultRetry) != 0 {
		t.Errorf("refused=%v retry=%v", counter(d, ResultRefused), counter(d, ResultRetry))
	}
}

// A redirect is not followed: it counts as a failed delivery.
func TestRedirectIsNotFollowed(t *testing.T) {
	n := testenv.StartNATS(t)
	target := newReceiver(t, always(http.StatusOK))
	redirector := httptest.NewServer(http.RedirectHandler(target.URL, http.StatusFound))
	defer redirector.Close()
	f := newFirer(t, n, nil, Trigger{Name: "r", On: Enter, Segment: "s", Webhook: redirector.URL})
	startDispatcher(t, n, DispatcherConfig{AllowHosts: []string{"127.0.0.1"}, MaxAttempts: 2})
	fire(t, f, "u1", 1, "s")
	eventually(t, "a dead letter", func() bool { return len(deadLetters(t, n)) == 1 })
	if got := len(target.got()); got != 0 {
		t.Errorf("redirect followed: target got %d calls", got)
	}
	if e := deadLetters(t, n)[0].Header.Get(HeaderError); !strings.Contains(e, "302") {
		t.Errorf("dead letter error %q, want the 302", e)
	}
}

// A receiver slower than Timeout is a failed attempt, not a stuck dispatcher.
func TestSlowReceiverTimesOut(t *testing.T) {
	n := testenv.StartNATS(t)
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(release)
	f := newFirer(t, n, nil, Trigger{Name: "slow", On: Enter, Segment: "s", Webhook: slow.URL})
	startDispatcher(t, n, DispatcherConfig{AllowHosts: []string{"127.0.0.1"}, MaxAttempts: 1, Timeout: 200 * time.Millisecond})
	fire(t, f, "u1", 1, "s")
	eventually(t, "a dead letter", func() bool { return len(deadLetters(t, n)) == 1 })
	if e := deadLetters(t, n)[0].Header.Get(HeaderError); !strings.Contains(strings.ToLower(e), "timeout") && !strings.Contains(e, "deadline") {
		t.Errorf("dead letter error %q, want a timeout", e)
	}
}

// Firings made while no dispatcher runs are delivered by the next one; nothing is delivered
// twice across the restart.
func TestDispatcherSurvivesRestart(t *testing.T) {
	n := testenv.StartNATS(t)
	rcv := newReceiver(t, always(http.StatusOK))
	f := newFirer(t, n, nil, Trigger{Name: "vip", On: Enter, Segment: "s", Webhook: rcv.URL})

	_, stop := startDispatcher(t, n, DispatcherConfig{AllowHosts: []string{"127.0.0.1"}})
	fire(t, f, "u1", 1, "s")
	eventually(t, "the first delivery", func() bool { return len(rcv.got()) == 1 })
	eventually(t, "the ack", func() bool { return pendingOnConsumer(t, n) == 0 })
	stop()

	fire(t, f, "u2", 1, "s")
	fire(t, f, "u3", 1, "s")
	time.Sleep(100 * time.Millisecond)
	if got := len(rcv.got()); got != 1 {
		t.Fatalf("delivered %d with no dispatcher running", got)
	}
	if p := pendingOnConsumer(t, n); p != 2 {
		t.Fatalf("consumer holds %d firings, want 2", p)
	}

	startDispatcher(t, n, DispatcherConfig{AllowHosts: []string{"127.0.0.1"}})
	eventually(t, "the pending deliveries", func() bool { return len(rcv.got()) == 3 })
	eventually(t, "the acks", func() bool { return pendingOnConsumer(t, n) == 0 })
	time.Sleep(100 * time.Millisecond)
	seen := map[string]int{}
	for _, c := range rcv.got() {
		seen[c.id]++
	}
	if len(seen) != 3 || seen["vip/u1/1"] != 1 || seen["vip/u2/1"] != 1 || seen["vip/u3/1"] != 1 {
		t.Fatalf("deliveries by id: %v", seen)
	}
}

func TestBackoff(t *testing.T) {
	d, err := NewDispatcher(DispatcherConfig{JS: nil, Secret: testSecret})
	if err == nil || d != nil {
		t.Fatal("NewDispatcher without JS accepted")
	}
	d = &Dispatcher{cfg: DispatcherConfig{BackoffBase: time.Second, BackoffMax: 5 * time.Minute}}
	for _, tc := range []struct {
		attempt int
		full    time.Duration
	}{{1, time.Second}, {2, 2 * time.Second}, {4, 8 * time.Second}, {9, 256 * time.Second}, {10, 5 * time.Minute}, {100, 5 * time.Minute}, {0, time.Second}} {
		for range 50 {
			if got := d.backoff(tc.attempt); got < tc.full/2 || got > tc.full {
				t.Fatalf("backoff(%d) = %s, want in [%s, %s]", tc.attempt, got, tc.full/2, tc.full)
			}
		}
	}
}

func TestNewDispatcherNeedsASecret(t *testing.T) {
	n := testenv.StartNATS(t)
	if _, err := NewDispatcher(DispatcherConfig{JS: n.JS}); err == nil {
		t.Fatal("NewDispatcher without a secret accepted")
	}
}
