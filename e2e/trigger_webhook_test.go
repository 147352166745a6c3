package e2e

// Trigger webhooks through the real origin process: a rules file's enter and threshold triggers
// fire after events, the Dispatcher POSTs signed CloudEvents to a receiver in this test, and a
// receiver that keeps failing gets its retries and then a dead letter, all visible on /metrics.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segedge/segedge/origin/trigger"
)

const webhookSecret = "e2e-webhook-secret-0123456789"

// hookReceiver records what the origin POSTs: verified events on /ok (a bad signature is a 401
// and counted), and every attempt on /fail, which always answers 503.
type hookReceiver struct {
	srv *httptest.Server

	mu       sync.Mutex
	ok       []*trigger.Event
	okIDs    []string // X-Segedge-Delivery headers
	badSig   int
	failures int
}

func newHookReceiver(t *testing.T) *hookReceiver {
	h := &hookReceiver{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /ok", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		defer h.mu.Unlock()
		if err := trigger.Verify([]byte(webhookSecret), r.Header.Get("X-Segedge-Signature"), body, 5*time.Minute); err != nil {
			h.badSig++
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		e, err := trigger.DecodeEvent(body)
		if err != nil || r.Header.Get("Content-Type") != trigger.ContentType {
			http.Error(w, fmt.Sprintf("bad event (%s): %v", r.Header.Get("Content-Type"), err), http.StatusBadRequest)
			return
		}
		h.ok = append(h.ok, e)
		h.okIDs = append(h.okIDs, r.Header.Get("X-Segedge-Delivery"))
	})
	mux.HandleFunc("POST /fail", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.failures++
		h.mu.Unlock()
		http.Error(w, "receiver down", http.StatusServiceUnavailable)
	})
	h.srv = httptest.NewServer(mux)
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hookReceiver) state() (ok []*trigger.Event, ids []string, badSig, failures int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ok), slices.Clone(h.okIDs), h.badSig, h.failures
}

func TestTriggerWebhooksSignedRetriedAndDeadLettered(t *testing.T) {
	recv := newHookReceiver(t)
	o := newChaosOrigin(t, "")
	o.env = append(o.env,
		"SEGEDGE_WEBHOOK_SECRET="+webhookSecret,
		"SEGEDGE_WEBHOOK_ALLOW=127.0.0.1",
		"SEGEDGE_WEBHOOK_ATTEMPTS=3",
		"SEGEDGE_WEBHOOK_BACKOFF=100ms",
	)
	o.start(t)

	rulesSrc := fmt.Sprintf(`
segments:
  - name: cart_abandoner
    rule: count("add_to_cart", "30m") > 0
scores:
  engagement: {half_life: 7d, weights: {page_view: 1, add_to_cart: 5}}
triggers:
  - name: cart_ok
    on: enter("cart_abandoner")
    webhook: %[1]s/ok
  - name: engaged_ok
    on: score("engagement") > 10.0
    webhook: %[1]s/ok
  - name: cart_fail
    on: enter("cart_abandoner")
    webhook: %[1]s/fail
`, recv.srv.URL)
	pushRuleset(t, o.url(), chaosAdminToken, rulesSrc)
	waitSegmentListed(t, o.url(), chaosAdminToken, "cart_abandoner")

	user := o.nats.Topology.Prefix + "hook-user"
	post := func(i int, typ string) {
		t.Helper()
		body, _ := json.Marshal([]map[string]string{{"event_id": fmt.Sprint("hook-", i), "user_id": user, "type": typ}})
		req, _ := http.NewRequest("POST", o.url()+"/v1/events", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+chaosWriteKey)
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 202 {
			t.Fatalf("POST /v1/events: %d", res.StatusCode)
		}
	}
	// Engagement 1, 6 (enters cart_abandoner), 11 (crosses 10), 16 and 17 (stays above): one
	// enter and one crossing, whatever the number of events after them.
	for i, typ := range []string{"page_view", "add_to_cart", "add_to_cart", "add_to_cart", "page_view"} {
		post(i, typ)
	}

	var ok []*trigger.Event
	var ids []string
	var badSig, failures int
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, ids, badSig, failures = recv.state()
		dead := counter(o.url(), `segedge_origin_webhook_deliveries_total{result="dead_letter"}`)
		if len(ok) >= 2 && dead >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20s: %d verified deliveries %v, %d attempts on the failing receiver, %v dead letters", len(ok), ids, failures, dead)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // anything more that was going to arrive
	ok, ids, badSig, failures = recv.state()

	if badSig != 0 {
		t.Errorf("%d deliveries with a bad signature", badSig)
	}
	if len(ok) != 2 {
		t.Fatalf("verified deliveries %v, want exactly cart_ok and engaged_ok once each", ids)
	}
	slices.SortFunc(ok, func(a, b *trigger.Event) int { return strings.Compare(a.Data.Trigger, b.Data.Trigger) })
	cart, engaged := ok[0], ok[1]
	if cart.Data.Trigger != "cart_ok" || cart.Type != trigger.TypeEnter || cart.Data.Segment != "cart_abandoner" ||
		cart.Subject != user || cart.Data.Version < 1 || cart.ID != fmt.Sprintf("cart_ok/%s/%d", user, cart.Data.Version) {
		t.Errorf("enter firing = %+v", cart)
	}
	if engaged.Data.Trigger != "engaged_ok" || engaged.Type != trigger.TypeThreshold || engaged.Data.Condition != `score("engagement") > 10.0` ||
		engaged.Data.UserID != user || engaged.Data.Version <= cart.Data.Version || engaged.ID != fmt.Sprintf("engaged_ok/%s/%d", user, engaged.Data.Version) {
		t.Errorf("threshold firing = %+v", engaged)
	}
	if !slices.Contains(ids, cart.ID) || !slices.Contains(ids, engaged.ID) {
		t.Errorf("X-Segedge-Delivery headers %v, want the firing ids", ids)
	}
	if failures != 3 {
		t.Errorf("failing receiver got %d attempts, want SEGEDGE_WEBHOOK_ATTEMPTS=3", failures)
	}

	// The dead letter keeps the firing and says why.
	ctx := context.Background()
	dlq, err := o.nats.JS.Stream(ctx, strings.ToUpper(o.nats.Topology.Prefix)+"TRIGGERS_DLQ")
	if err != nil {
		t.Fatal(err)
	}
	info, err := dlq.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("TRIGGERS_DLQ holds %d messages, want 1", info.State.Msgs)
	}
	m, err := dlq.GetMsg(ctx, info.State.FirstSeq)
	if err != nil {
		t.Fatal(err)
	}
	e, err := trigger.DecodeEvent(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if e.Data.Trigger != "cart_fail" || m.Header.Get(trigger.HeaderAttempts) != "3" || !strings.Contains(m.Header.Get(trigger.HeaderError), "503") {
		t.Errorf("dead letter %s: %+v, headers %v", m.Subject, e, m.Header)
	}

	// And the operator sees all of it on /metrics.
	for name, want := range map[string]float64{
		`segedge_origin_webhook_deliveries_total{result="ok"}`:          2,
		`segedge_origin_webhook_deliveries_total{result="retry"}`:       2,
		`segedge_origin_webhook_deliveries_total{result="dead_letter"}`: 1,
		`segedge_origin_triggers_fired_total{trigger="cart_ok"}`:        1,
		`segedge_origin_triggers_fired_total{trigger="engaged_ok"}`:     1,
		`segedge_origin_triggers_fired_total{trigger="cart_fail"}`:      1,
	} {
		if got := counter(o.url(), name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}
