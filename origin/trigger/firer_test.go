package trigger

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/testenv"
)

const hook = "https://hooks.example.com/"

func newFirer(t *testing.T, n *testenv.NATS, reg prometheus.Registerer, ts ...Trigger) *Firer {
	t.Helper()
	f, err := NewFirer(context.Background(), FirerConfig{JS: n.JS, Topology: n.Topology, Registerer: reg, AllowHosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetTriggers(ts); err != nil {
		t.Fatal(err)
	}
	return f
}

type stored struct {
	subject string
	id      string
	webhook string
	event   *Event
}

// firings reads everything on TRIGGERS, in order.
func firings(t *testing.T, n *testenv.NATS) []stored {
	t.Helper()
	ctx := context.Background()
	s, err := n.JS.Stream(ctx, streamName(n.Topology.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []stored
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("get firing %d: %v", seq, err)
		}
		e, err := DecodeEvent(m.Data)
		if err != nil {
			t.Fatalf("firing %d: %v", seq, err)
		}
		out = append(out, stored{m.Subject, m.Header.Get(jetstream.MsgIDHeader), m.Header.Get(HeaderWebhook), e})
	}
	return out
}

func ids(fs []stored) string {
	var s []string
	for _, f := range fs {
		s = append(s, f.id)
	}
	return strings.Join(s, " ")
}

func TestFireEnterAndExit(t *testing.T) {
	n := testenv.StartNATS(t)
	f := newFirer(t, n, nil,
		Trigger{Name: "vip_in", On: Enter, Segment: "high_engagement", Webhook: hook + "in"},
		Trigger{Name: "vip_out", On: Exit, Segment: "high_engagement", Webhook: hook + "out"},
		Trigger{Name: "cart", On: Enter, Segment: "cart_abandoner", Webhook: hook + "cart"},
	)
	deltas := []*delta.Delta{
		{UserID: "u1", Version: 1, Ruleset: 7, Cause: delta.CauseEvent, Members: []string{"high_engagement"}, Entered: []string{"high_engagement"}},
		{UserID: "u1", Version: 2, Ruleset: 7, Cause: delta.CauseEvent, Members: []string{"high_engagement", "other"}, Entered: []string{"other"}},
		{UserID: "u1", Version: 3, Ruleset: 7, Cause: delta.CauseExpiry, Members: []string{}, Exited: []string{"high_engagement", "other"}},
		{UserID: "u2", Version: 1, Ruleset: 7, Cause: delta.CauseEvent, Members: []string{"cart_abandoner", "high_engagement"}, Entered: []string{"cart_abandoner", "high_engagement"}},
		// Erasure fires nothing, although the user left the segments.
		{UserID: "u2", Version: 2, Ruleset: 7, Cause: delta.CauseErase, Erased: true, Exited: []string{"cart_abandoner", "high_engagement"}},
	}
	for _, d := range deltas {
		if err := f.Fire(context.Background(), d); err != nil {
			t.Fatalf("fire %s/%d: %v", d.UserID, d.Version, err)
		}
	}
	got := firings(t, n)
	if want := "vip_in/u1/1 vip_out/u1/3 cart/u2/1 vip_in/u2/1"; ids(got) != want {
		t.Fatalf("firings = %q, want %q", ids(got), want)
	}
	in, out := got[0], got[1]
	if in.subject != n.Topology.TriggerSubject("vip_in") || in.webhook != hook+"in" {
		t.Errorf("enter firing on %q to %q", in.subject, in.webhook)
	}
	e := in.event
	if e.SpecVersion != "1.0" || e.ID != "vip_in/u1/1" || e.Source != Source || e.Type != TypeEnter ||
		e.Subject != "u1" || e.DataContentType != "application/json" || e.Time.IsZero() {
		t.Errorf("enter event envelope = %+v", e)
	}
	if d := e.Data; d.Trigger != "vip_in" || d.Segment != "high_engagement" || d.UserID != "u1" || d.Version != 1 || d.Ruleset != 7 ||
		strings.Join(d.Members, ",") != "high_engagement" {
		t.Errorf("enter event data = %+v", d)
	}
	if out.event.Type != TypeExit || out.event.Data.Segment != "high_engagement" || out.event.Data.Members == nil {
		t.Errorf("exit event = %+v", out.event)
	}
}

// The engine calls Fire again when an event is redelivered after a crash; the same delta
// version must not fire twice, and the metric counts the firing once.
func TestRedeliveredDeltaFiresOnce(t *testing.T) {
	n := testenv.StartNATS(t)
	reg := prometheus.NewRegistry()
	f := newFirer(t, n, reg, Trigger{Name: "vip", On: Enter, Segment: "high_engagement", Webhook: hook})
	d := &delta.Delta{UserID: "u1", Version: 5, Members: []string{"high_engagement"}, Entered: []string{"high_engagement"}, AcceptedAt: time.Now().UnixMilli()}
	for range 3 {
		if err := f.Fire(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
	if got := ids(firings(t, n)); got != "vip/u1/5" {
		t.Fatalf("firings = %q, want one", got)
	}
	if c := testutil.ToFloat64(f.fired.WithLabelValues("vip")); c != 1 {
		t.Fatalf("segedge_origin_triggers_fired_total{trigger=vip} = %v, want 1", c)
	}
	if n, err := testutil.GatherAndCount(reg, "segedge_origin_triggers_fired_total"); err != nil || n != 1 {
		t.Fatalf("registered series = %d, %v", n, err)
	}
}

// A threshold trigger (score("engagement") > 80) is compiled into a hidden segment. The engine
// reports a delta with that segment in Entered only when the score crosses upward, so the
// trigger fires once per crossing: 70→85 fires, 85→90 (still above, no membership change)
// does not, 90→60 is an exit, 60→95 fires again.
func TestSetTriggersRejectsBadSetsAndKeepsTheOld(t *testing.T) {
	n := testenv.StartNATS(t)
	good := Trigger{Name: "vip", On: Enter, Segment: "high_engagement", Webhook: hook}
	f := newFirer(t, n, nil, good)
	bad := map[string][]Trigger{
		"name with a dot":          {{Name: "a.b", On: Enter, Segment: "s", Webhook: hook}},
		"wildcard name":            {{Name: "*", On: Enter, Segment: "s", Webhook: hook}},
		"no kind":                  {{Name: "a", Segment: "s", Webhook: hook}},
		"no segment":               {{Name: "a", On: Exit, Webhook: hook}},
		"metadata webhook":         {{Name: "a", On: Enter, Segment: "s", Webhook: "http://169.254.169.254/"}},
		"not http":                 {{Name: "a", On: Enter, Segment: "s", Webhook: "gopher://hooks.example.com/"}},
		"private webhook":          {{Name: "a", On: Enter, Segment: "s", Webhook: "http://10.0.0.8/"}},
		"duplicate name":           {good, good},
		"one bad among good ones:": {good, {Name: "b", On: Enter, Segment: "s", Webhook: "http://[::1]/"}},
	}
	for name, ts := range bad {
		if err := f.SetTriggers(ts); err == nil {
			t.Errorf("%s: SetTriggers accepted %+v", name, ts)
		}
	}
	if got := f.Triggers(); len(got) != 1 || got[0] != good {
		t.Fatalf("after rejected sets, triggers = %+v", got)
	}
	// Loopback is fine when allowlisted (FirerConfig.AllowHosts has 127.0.0.1).
	if err := f.SetTriggers([]Trigger{{Name: "local", On: Enter, Segment: "s", Webhook: "http://127.0.0.1:9/x"}}); err != nil {
		t.Fatalf("allowlisted webhook: %v", err)
	}
	// An empty set disables every trigger.
	if err := f.SetTriggers(nil); err != nil {
		t.Fatal(err)
	}
	if err := f.Fire(context.Background(), &delta.Delta{UserID: "u", Version: 1, Entered: []string{"s", "high_engagement"}}); err != nil {
		t.Fatal(err)
	}
	if got := firings(t, n); len(got) != 0 {
		t.Fatalf("firings with no triggers: %q", ids(got))
	}
}

func TestTriggersStreamsConfig(t *testing.T) {
	n := testenv.StartNATS(t)
	newFirer(t, n, nil)
	for name, subject := range map[string]string{
		streamName(n.Topology.Prefix):    n.Topology.TriggerSubject("*"),
		dlqStreamName(n.Topology.Prefix): dlqSubject(n.Topology.Prefix, "*"),
	} {
		s, err := n.JS.Stream(context.Background(), name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		c := s.CachedInfo().Config
		if len(c.Subjects) != 1 || c.Subjects[0] != subject || c.MaxAge != 7*24*time.Hour || c.Storage != jetstream.FileStorage {
			t.Errorf("stream %s config: subjects %v, max age %s, storage %v", name, c.Subjects, c.MaxAge, c.Storage)
		}
	}
}

func TestDecodeEventRejectsIncomplete(t *testing.T) {
	for _, body := range []string{`not json`, `{}`, `{"specversion":"1.0"}`, `{"specversion":"1.0","id":"x","type":"other","data":{"trigger":"t"}}`, `{"specversion":"1.0","id":"x","type":"dev.segedge.trigger.enter","data":{}}`} {
		if _, err := DecodeEvent([]byte(body)); err == nil {
			t.Errorf("DecodeEvent(%s) accepted it", body)
		}
	}
	ok, _ := json.Marshal(Event{SpecVersion: "1.0", ID: "t/u/1", Type: TypeExit, Data: EventData{Trigger: "t"}})
	if _, err := DecodeEvent(ok); err != nil {
		t.Errorf("DecodeEvent(%s): %v", ok, err)
	}
}

// SetTriggers swaps the set while Fire runs; under -race this guards the atomic swap, and every
// firing must come from one whole set: the trigger named for the version's set.
func TestSetTriggersWhileFiring(t *testing.T) {
	n := testenv.StartNATS(t)
	f := newFirer(t, n, nil, Trigger{Name: "a", On: Enter, Segment: "s", Webhook: hook})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			name := []string{"a", "b"}[i%2]
			if err := f.SetTriggers([]Trigger{{Name: name, On: Enter, Segment: "s", Webhook: hook}}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for v := uint64(1); v <= 50; v++ {
		if err := f.Fire(context.Background(), &delta.Delta{UserID: "u", Version: v, Entered: []string{"s"}}); err != nil {
			t.Fatal(err)
		}
	}
	<-done
	if got := firings(t, n); len(got) != 50 {
		t.Fatalf("%d firings for 50 deltas with one trigger at a time", len(got))
	}
}
