package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ingest"
	"github.com/segedge/segedge/core/testenv"
)

type testOrigin struct {
	*origin
	url string
	n   *testenv.NATS
}

func newTestOrigin(t *testing.T) *testOrigin {
	t.Helper()
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, n.JS, n.Topology, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	lim := event.DefaultLimits()
	lim.MaxBodyBytes = 4096
	o := &origin{
		cfg: Config{WriteKey: "wk", AdminToken: "at"}, log: slog.New(slog.DiscardHandler), reg: reg,
		nc: n.Conn, js: n.JS, topo: n.Topology,
		ingest: ingest.NewPublisher(n.JS, n.Topology, "origin", reg), limits: lim,
	}
	mux := http.NewServeMux()
	o.routes(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &testOrigin{origin: o, url: srv.URL, n: n}
}

func (o *testOrigin) post(t *testing.T, auth, contentType, body string) (int, ingest.Result) {
	t.Helper()
	req, _ := http.NewRequest("POST", o.url+"/v1/events", strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var r ingest.Result
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("answer is not JSON: %q", b)
	}
	return res.StatusCode, r
}

func TestIngestAppendsToTheUsersPartitionBefore202(t *testing.T) {
	o := newTestOrigin(t)
	code, res := o.post(t, "Bearer wk", "application/json",
		`[{"event_id":"e1","user_id":"alice","type":"page_view"},{"event_id":"e2","user_id":"bob","type":"add_to_cart","props":{"amount":5}}]`)
	if code != 202 || res.Accepted != 2 || len(res.Rejected) != 0 {
		t.Fatalf("answer %d %+v, want 202 with 2 accepted", code, res)
	}
	ctx := context.Background()
	for _, want := range []struct{ id, user string }{{"e1", "alice"}, {"e2", "bob"}} {
		subj := o.n.Topology.EventSubject(event.Partition(want.user, o.n.Topology.Partitions))
		msg, err := o.n.JS.Stream(ctx, o.n.Topology.EventsStream())
		if err != nil {
			t.Fatal(err)
		}
		m, err := msg.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			t.Fatalf("no message on %s: %v", subj, err)
		}
		if m.Header.Get(jetstream.MsgIDHeader) == "" {
			t.Errorf("message on %s has no Nats-Msg-Id", subj)
		}
		ev, _, err := event.DecodeWire(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if ev.UserID != want.user {
			t.Errorf("on %s: user %q, want %q", subj, ev.UserID, want.user)
		}
	}
	if got := testutil.ToFloat64(o.ingest.AcceptedCounter()); got != 2 {
		t.Errorf("accepted counter = %v, want 2", got)
	}
}

func TestIngestRefusals(t *testing.T) {
	o := newTestOrigin(t)
	tests := []struct {
		name, auth, ctype, body string
		code                    int
		accepted                int
		rejectedField           string
	}{
		{"no token", "", "", `[]`, 401, 0, ""},
		{"wrong token", "Bearer nope", "", `[]`, 403, 0, ""},
		{"one bad event of two", "Bearer wk", "", `[{"event_id":"a","user_id":"u","type":"ok"},{"event_id":"b","user_id":"u","type":"Bad Type"}]`, 202, 1, "type"},
		{"ndjson", "Bearer wk", "application/x-ndjson", "{\"event_id\":\"n1\",\"user_id\":\"u\",\"type\":\"x\"}\n{\"event_id\":\"n2\",\"user_id\":\"u\",\"type\":\"y\"}\n", 202, 2, ""},
		{"malformed", "Bearer wk", "", `[{"event_id":`, 400, 0, ""},
		{"too large", "Bearer wk", "", `[` + strings.Repeat(" ", 5000) + `]`, 413, 0, ""},
		{"all invalid", "Bearer wk", "", `[{"event_id":"a","type":"x"}]`, 400, 0, "user_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, res := o.post(t, tt.auth, tt.ctype, tt.body)
			if code != tt.code || res.Accepted != tt.accepted {
				t.Fatalf("answer %d %+v, want %d with %d accepted", code, res, tt.code, tt.accepted)
			}
			if tt.rejectedField != "" && (len(res.Rejected) != 1 || res.Rejected[0].Field != tt.rejectedField) {
				t.Fatalf("rejected = %+v, want one on field %q", res.Rejected, tt.rejectedField)
			}
			if code >= 400 && res.Error == "" {
				t.Fatalf("a refusal without an error message: %+v", res)
			}
		})
	}
}

func TestIngestWithoutJetStreamAnswers503(t *testing.T) {
	o := newTestOrigin(t)
	if err := o.n.JS.DeleteStream(context.Background(), o.n.Topology.EventsStream()); err != nil {
		t.Fatal(err)
	}
	code, res := o.post(t, "Bearer wk", "", `[{"event_id":"a","user_id":"u","type":"x"}]`)
	if code != 503 || res.Accepted != 0 || len(res.Rejected) != 1 {
		t.Fatalf("answer %d %+v, want 503 with the event listed as not stored", code, res)
	}
}

func TestInvalidateIsStoredForEveryEdge(t *testing.T) {
	o := newTestOrigin(t)
	post := func(auth, body string) int {
		req, _ := http.NewRequest("POST", o.url+"/v1/invalidate", strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if code := post("", `{"urls":["/a"]}`); code != 401 {
		t.Fatalf("no token: %d", code)
	}
	if code := post("Bearer wk", `{"urls":["/a"]}`); code != 403 {
		t.Fatalf("write key is not the admin token: %d", code)
	}
	if code := post("Bearer at", `{"urls":["a"]}`); code != 400 {
		t.Fatalf("bad url: %d", code)
	}
	if code := post("Bearer at", `{"urls":["/shop"],"tags":["product-42"]}`); code != 202 {
		t.Fatalf("good purge: %d", code)
	}
	s, err := o.n.JS.Stream(context.Background(), o.n.Topology.InvalidateStream())
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(context.Background(), o.n.Topology.InvalidateSubject())
	if err != nil || !strings.Contains(string(m.Data), "product-42") {
		t.Fatalf("stored purge = %v, %v", m, err)
	}
}

func TestReadBodyReadsEverythingWhateverTheAnnouncedLength(t *testing.T) {
	body := strings.Repeat("0123456789", 5000)
	for _, tc := range []struct {
		name      string
		announced int64
		buf       []byte
	}{
		{"unknown length", -1, nil},
		{"exact length", int64(len(body)), nil},
		{"announced too short", 100, nil},
		{"announced too long", 1 << 20, nil},
		{"reused buffer with old bytes", int64(len(body)), []byte("stale bytes from a previous request")[:0]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readBody(tc.buf, iotest.HalfReader(strings.NewReader(body)), tc.announced, 1<<16)
			if err != nil || string(got) != body {
				t.Fatalf("read %d bytes, err %v; want the %d-byte body", len(got), err, len(body))
			}
		})
	}
	if _, err := readBody(nil, iotest.ErrReader(errors.New("boom")), 10, 100); err == nil {
		t.Fatal("a read error was not returned")
	}
}
