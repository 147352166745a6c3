package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// The segment streams, SSE (/user/segments/stream) and WebSocket (/user/segments/ws), driven by
// plain Go clients against the real origin and edge: the same messages, resume by last id,
// heartbeats, shared connection limits, and no user ever sees another user's changes.

// streamMsg is what a client read: a state (data) or a heartbeat.
type streamMsg struct {
	heartbeat bool
	id        string   // "version.ruleset"
	Segments  []string `json:"segments"`
	Ruleset   uint64   `json:"ruleset"`
	Version   uint64   `json:"version"`
}

// streamConn is one open stream of either protocol.
type streamConn struct {
	msgs  chan streamMsg
	close func()
	err   error // why msgs closed, once it is
}

type streamKind string

const (
	sseKind streamKind = "sse"
	wsKind  streamKind = "ws"
)

// openSegStream opens a stream of kind for the visitor with cookie, resuming after id last ("": a
// fresh stream). It returns the HTTP status when the edge refused the stream (conn nil).
func openSegStream(t *testing.T, kind streamKind, edgeURL, cookie, last string) (*streamConn, int) {
	t.Helper()
	sc := &streamConn{msgs: make(chan streamMsg, 64)}
	switch kind {
	case sseKind:
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", edgeURL+"/user/segments/stream", nil)
		req.Header.Set("Cookie", "segedge_uid="+cookie)
		if last != "" {
			req.Header.Set("Last-Event-ID", last)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatalf("open SSE: %v", err)
		}
		if res.StatusCode != 200 {
			res.Body.Close()
			cancel()
			return nil, res.StatusCode
		}
		if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
			t.Fatalf("SSE content type %q", ct)
		}
		sc.close = func() { cancel(); res.Body.Close() }
		go func() {
			defer close(sc.msgs)
			r := bufio.NewReader(res.Body)
			var id, event, data string
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					sc.err = err
					return
				}
				line = strings.TrimRight(line, "\n")
				switch {
				case strings.HasPrefix(line, ": heartbeat"):
					sc.msgs <- streamMsg{heartbeat: true}
				case strings.HasPrefix(line, "id: "):
					id = line[4:]
				case strings.HasPrefix(line, "event: "):
					event = line[7:]
				case strings.HasPrefix(line, "data: "):
					data = line[6:]
				case line == "" && data != "":
					m := streamMsg{id: id}
					if event != "segments" || json.Unmarshal([]byte(data), &m) != nil {
						sc.err = fmt.Errorf("bad SSE event %q %q", event, data)
						return
					}
					sc.msgs <- m
					event, data = "", ""
				}
			}
		}()
	case wsKind:
		u := "ws" + strings.TrimPrefix(edgeURL, "http") + "/user/segments/ws"
		if last != "" {
			u += "?last_event_id=" + last
		}
		c, res, err := websocket.DefaultDialer.Dial(u, http.Header{"Cookie": {"segedge_uid=" + cookie}})
		if err != nil {
			if res != nil {
				return nil, res.StatusCode
			}
			t.Fatalf("open WebSocket: %v", err)
		}
		c.SetPingHandler(func(string) error {
			sc.msgs <- streamMsg{heartbeat: true}
			return c.WriteControl(websocket.PongMessage, nil, time.Now().Add(time.Second))
		})
		sc.close = func() { c.Close() }
		go func() {
			defer close(sc.msgs)
			for {
				typ, b, err := c.ReadMessage()
				if err != nil {
					sc.err = err
					return
				}
				var m streamMsg
				if typ != websocket.TextMessage || json.Unmarshal(b, &m) != nil {
					sc.err = fmt.Errorf("bad WebSocket message %d %q", typ, b)
					return
				}
				m.id = fmt.Sprintf("%d.%d", m.Version, m.Ruleset) // the id of the same SSE event
				sc.msgs <- m
			}
		}()
	}
	t.Cleanup(sc.close)
	return sc, 200
}

// mustOpenSegStream is openSegStream for a stream that must be accepted.
func mustOpenSegStream(t *testing.T, kind streamKind, edgeURL, cookie, last string) *streamConn {
	t.Helper()
	s, code := openSegStream(t, kind, edgeURL, cookie, last)
	if s == nil {
		t.Fatalf("%s stream refused: %d", kind, code)
	}
	return s
}

// next returns the next state, skipping heartbeats, or fails after timeout.
func (sc *streamConn) next(t *testing.T, timeout time.Duration) streamMsg {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-sc.msgs:
			if !ok {
				t.Fatalf("stream ended: %v", sc.err)
			}
			if !m.heartbeat {
				return m
			}
		case <-deadline:
			t.Fatalf("no message within %s", timeout)
		}
	}
}

// quiet asserts that the stream sends at least n heartbeats and no state in between.
func (sc *streamConn) quiet(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for beats := 0; beats < n; {
		select {
		case m, ok := <-sc.msgs:
			if !ok {
				t.Fatalf("stream ended: %v", sc.err)
			}
			if !m.heartbeat {
				t.Fatalf("unexpected state %+v (want only heartbeats)", m)
			}
			beats++
		case <-deadline:
			t.Fatalf("%d heartbeats within %s, want %d", beats, timeout, n)
		}
	}
}

// beacon posts events for the visitor through the edge.
func streamBeacon(t *testing.T, edgeURL, cookie, body string) {
	t.Helper()
	req, _ := http.NewRequest("POST", edgeURL+"/v1/events", strings.NewReader(body))
	req.Header.Set("Cookie", "segedge_uid="+cookie)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 202 {
		t.Fatalf("beacon: %d", res.StatusCode)
	}
}

func hasSegment(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestSegmentStreamsResumeAndIsolation(t *testing.T) {
	sys := startSystem(t, services{}, siteUpstream(t).URL, "SEGEDGE_STREAM_HEARTBEAT=100ms")
	putRules(t, sys, "../scripts/demo/rules.yaml")
	streamWaitRuleset(t, sys, 1)
	for i, kind := range []streamKind{sseKind, wsKind} {
		t.Run(string(kind), func(t *testing.T) {
			resA, _ := get(t, sys.edgeURL+"/", "")
			resB, _ := get(t, sys.edgeURL+"/", "")
			a, b := cookieOf(resA), cookieOf(resB)
			sa := mustOpenSegStream(t, kind, sys.edgeURL, a, "")
			sb := mustOpenSegStream(t, kind, sys.edgeURL, b, "")
			// A fresh stream starts with the current state: nothing known yet.
			for _, s := range []*streamConn{sa, sb} {
				if m := s.next(t, 5*time.Second); m.Version != 0 || len(m.Segments) != 0 {
					t.Fatalf("first message %+v, want version 0 without segments", m)
				}
			}

			// A change of A reaches A's stream, with its version as the id.
			streamBeacon(t, sys.edgeURL, a, fmt.Sprintf(`[{"event_id":"r%d-1","type":"add_to_cart"}]`, i))
			m := sa.next(t, 10*time.Second)
			if m.id != "1.1" || m.Version != 1 || !hasSegment(m.Segments, "cart_abandoner") {
				t.Fatalf("after add_to_cart A got %+v, want version 1 (id 1.1) in cart_abandoner", m)
			}

			// Resume: with the newest id nothing is re-sent; with an older one the current state is.
			sa.close()
			for _, id := range []string{"1.1", "1"} { // the id, or just the version
				upToDate := mustOpenSegStream(t, kind, sys.edgeURL, a, id)
				upToDate.quiet(t, 3, 5*time.Second)
				upToDate.close()
			}
			// A change made while A has no stream open arrives on reconnect.
			streamBeacon(t, sys.edgeURL, a, fmt.Sprintf(`[{"event_id":"r%d-2","type":"purchase_completed"}]`, i))
			streamWaitVersion(t, sys, a, 2, 1)
			resumed := mustOpenSegStream(t, kind, sys.edgeURL, a, "1.1")
			if m := resumed.next(t, 5*time.Second); m.id != "2.1" || !hasSegment(m.Segments, "buyer") || hasSegment(m.Segments, "cart_abandoner") {
				t.Fatalf("resumed after 1.1: %+v, want version 2 (buyer, no longer cart_abandoner)", m)
			}
			resumed.quiet(t, 2, 5*time.Second) // and only once

			// B was open all along and never got any of A's states.
			sb.quiet(t, 3, 5*time.Second)
		})
	}
}

// streamWaitRuleset waits until both the origin and the edge evaluate ruleset version rs.
func streamWaitRuleset(t *testing.T, sys *system, rs uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for counter(sys.originURL, "segedge_origin_ruleset_version") < float64(rs) {
		if time.Now().After(deadline) {
			t.Fatalf("the origin never activated ruleset %d", rs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	streamWaitVersion(t, sys, "", 0, rs)
}

// streamWaitVersion waits until the edge has the visitor at version v or later and ruleset rs or later.
func streamWaitVersion(t *testing.T, sys *system, cookie string, v, rs uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, body := get(t, sys.edgeURL+"/user/segments", cookie)
		var ans streamMsg
		if json.Unmarshal([]byte(body), &ans) == nil && ans.Version >= v && ans.Ruleset >= rs {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("edge never had version %d and ruleset %d: %s", v, rs, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSegmentStreamLimitsAreSharedBySSEAndWebSocket(t *testing.T) {
	sys := startSystem(t, services{}, testUpstream(t).URL,
		"SEGEDGE_STREAM_HEARTBEAT=100ms", "SEGEDGE_STREAM_MAX_PER_USER=1", "SEGEDGE_STREAM_MAX=2")
	cookie := func() string { res, _ := get(t, sys.edgeURL+"/page", ""); return cookieOf(res) }
	a, b, c := cookie(), cookie(), cookie()

	sa := mustOpenSegStream(t, sseKind, sys.edgeURL, a, "")
	sa.next(t, 5*time.Second)
	sb := mustOpenSegStream(t, wsKind, sys.edgeURL, b, "")
	sb.next(t, 5*time.Second)
	for _, tc := range []struct {
		name   string
		kind   streamKind
		cookie string
	}{
		{"per user: A's WebSocket while A's SSE is open", wsKind, a},
		{"per user: B's SSE while B's WebSocket is open", sseKind, b},
		{"total: C's SSE", sseKind, c},
		{"total: C's WebSocket", wsKind, c},
	} {
		if s, code := openSegStream(t, tc.kind, sys.edgeURL, tc.cookie, ""); s != nil || code != 503 {
			t.Errorf("%s: status %d, want 503", tc.name, code)
		}
	}
	// Closing a stream frees its place (the edge notices at the next heartbeat at the latest).
	sa.close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, code := openSegStream(t, wsKind, sys.edgeURL, c, "")
		if s != nil {
			s.next(t, 5*time.Second)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("C's WebSocket still refused (%d) after A's stream closed", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// B's WebSocket kept its heartbeats (pings) all along.
	sb.quiet(t, 3, 5*time.Second)
}

func TestSegmentWebSocketRefusesOtherSitesAndPlainGET(t *testing.T) {
	sys := startSystem(t, services{}, testUpstream(t).URL)
	res, _ := get(t, sys.edgeURL+"/page", "")
	c := cookieOf(res)
	u := "ws" + strings.TrimPrefix(sys.edgeURL, "http") + "/user/segments/ws"
	for _, tc := range []struct {
		name   string
		origin string
		want   int
	}{
		{"another site's page", "https://evil.example", 403},
		{"the edge's own page", sys.edgeURL, 101},
		{"no Origin (not a browser)", "", 101},
	} {
		h := http.Header{"Cookie": {"segedge_uid=" + c}}
		if tc.origin != "" {
			h.Set("Origin", tc.origin)
		}
		conn, res, err := websocket.DefaultDialer.Dial(u, h)
		if res == nil || res.StatusCode != tc.want {
			t.Errorf("%s: %v %v, want %d", tc.name, res, err, tc.want)
		}
		if conn != nil {
			conn.Close()
		}
	}
	if res, _ := get(t, sys.edgeURL+"/user/segments/ws", c); res.StatusCode != 426 {
		t.Errorf("plain GET: %d, want 426 Upgrade Required", res.StatusCode)
	}
}

// Open streams do not hold up a shutdown: on SIGTERM the edge ends the SSE body cleanly (the
// terminating chunk, so the browser reconnects elsewhere) and closes the WebSocket with 1001.
func TestSegmentStreamsEndOnEdgeShutdown(t *testing.T) {
	sys := startSystem(t, services{}, testUpstream(t).URL)
	cookie := func() string { res, _ := get(t, sys.edgeURL+"/page", ""); return cookieOf(res) }
	sse := mustOpenSegStream(t, sseKind, sys.edgeURL, cookie(), "")
	ws := mustOpenSegStream(t, wsKind, sys.edgeURL, cookie(), "")
	sse.next(t, 5*time.Second)
	ws.next(t, 5*time.Second)
	code, took := sys.edge.stop(5 * time.Second)
	if code != 0 || took > 3*time.Second {
		t.Fatalf("edge exited %d after %s with open streams, want 0 promptly", code, took)
	}
	for _, tc := range []struct {
		name  string
		s     *streamConn
		clean func(error) bool
	}{
		{"SSE", sse, func(err error) bool { return err == io.EOF }},
		{"WebSocket", ws, func(err error) bool { return websocket.IsCloseError(err, websocket.CloseGoingAway) }},
	} {
		select {
		case _, ok := <-tc.s.msgs:
			for ok {
				_, ok = <-tc.s.msgs
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s stream still open after the edge stopped", tc.name)
		}
		if !tc.clean(tc.s.err) {
			t.Errorf("%s stream ended with %v, want a clean end", tc.name, tc.s.err)
		}
	}
}

// A new ruleset can change what the same segments show, so every open stream gets its user's
// state again under the new ruleset, and a client that resumes with the old ruleset's id gets it.
func TestSegmentStreamsFollowRulesetChanges(t *testing.T) {
	// Closed streams free their place at the next heartbeat; 20 places are enough for them all.
	sys := startSystem(t, services{}, siteUpstream(t).URL, "SEGEDGE_STREAM_HEARTBEAT=100ms", "SEGEDGE_STREAM_MAX_PER_USER=20")
	putRules(t, sys, "../scripts/demo/rules.yaml")
	streamWaitRuleset(t, sys, 1)
	res, _ := get(t, sys.edgeURL+"/", "")
	a := cookieOf(res)
	streamBeacon(t, sys.edgeURL, a, `[{"event_id":"rs-1","type":"add_to_cart"}]`)
	streamWaitVersion(t, sys, a, 1, 1)

	open := map[streamKind]*streamConn{}
	for _, kind := range []streamKind{sseKind, wsKind} {
		open[kind] = mustOpenSegStream(t, kind, sys.edgeURL, a, "")
		if m := open[kind].next(t, 5*time.Second); m.id != "1.1" {
			t.Fatalf("%s first state %+v, want id 1.1", kind, m)
		}
	}
	src, err := os.ReadFile("../scripts/demo/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	v2 := strings.Replace(string(src), "Finish your order", "Finish your order today", 1)
	putRulesText(t, sys, v2)
	for kind, s := range open {
		if m := s.next(t, 10*time.Second); m.id != "1.2" || m.Ruleset != 2 || !hasSegment(m.Segments, "cart_abandoner") {
			t.Fatalf("%s after ruleset 2: %+v, want the same state under ruleset 2 (id 1.2)", kind, m)
		}
		s.quiet(t, 2, 5*time.Second) // once
	}
	for _, kind := range []streamKind{sseKind, wsKind} {
		for _, tc := range []struct {
			last string
			want string // "" : nothing is sent
		}{
			{"1.1", "1.2"}, // seen under the old ruleset: sent again
			{"1.2", ""},
			{"1", ""}, // a bare version says nothing about the ruleset
		} {
			s := mustOpenSegStream(t, kind, sys.edgeURL, a, tc.last)
			if tc.want == "" {
				s.quiet(t, 2, 5*time.Second)
			} else if m := s.next(t, 5*time.Second); m.id != tc.want {
				t.Fatalf("%s resumed at %s: %+v, want id %s", kind, tc.last, m, tc.want)
			}
			s.close()
		}
	}
}
