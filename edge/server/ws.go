package server

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"

	"github.com/segedge/segedge/edge/push"
	"github.com/segedge/segedge/edge/replica"
)

// GET /user/segments/ws is /user/segments/stream over WebSocket, for clients that prefer it.
// Each text message is exactly the JSON an SSE "segments" event carries; its "version" and
// "ruleset" make the SSE event id "version.ruleset". A client resumes with
// ?last_event_id=version.ruleset (or a Last-Event-ID header) and then gets the current state only
// when it is newer, or of another ruleset. Heartbeats are WebSocket pings every
// SEGEDGE_STREAM_HEARTBEAT; a client that answers no ping (browsers answer by themselves) for two
// intervals is dropped. The connection limits are the hub's, shared with SSE.

// wsUpgrader keeps per-connection memory small: a 256-byte read buffer (clients send nothing
// but control frames) and a write buffer borrowed from a pool only while a message is written.
// CheckOrigin is left nil: only same-origin pages (or clients without Origin) may upgrade, so
// another site cannot open a stream with the visitor's cookie.
var wsUpgrader = websocket.FastHTTPUpgrader{
	ReadBufferSize:  256,
	WriteBufferSize: 2048,
	WriteBufferPool: &sync.Pool{},
}

const (
	wsWriteWait = 10 * time.Second // a write (message, ping, close) that takes longer ends the connection
	wsReadLimit = 512              // bytes of one client message; anything bigger closes the connection
)

// streamSegmentsWS is GET /user/segments/ws.
func (e *edge) streamSegmentsWS(ctx *fasthttp.RequestCtx) {
	canonicalWSHeaders(&ctx.Request.Header)
	if !websocket.FastHTTPIsWebSocketUpgrade(ctx) {
		ctx.Response.Header.Set("Upgrade", "websocket")
		ctx.SetStatusCode(fasthttp.StatusUpgradeRequired)
		ctx.SetBodyString("a WebSocket upgrade is required\n")
		return
	}
	v := e.identify(ctx)
	user := string(v.id)
	// Once the upgrade is answered there is no status code left to refuse with, so the limits
	// are checked first; the subscription after the upgrade is the authority (a race lost there
	// closes with 1013 "try again later").
	if err := e.push.Check(user); err != nil {
		tooManyStreams(ctx)
		return
	}
	if !v.new {
		e.replica.Lookup(ctx, user) // a replica miss is fetched from the origin now, not after the upgrade
	}
	pos := lastEventID(ctx)
	err := wsUpgrader.Upgrade(ctx, func(c *websocket.Conn) { e.serveWS(c, user, !v.new, pos) })
	if err != nil {
		e.log.Debug("websocket upgrade refused", "err", err) // the upgrader answered the client
	}
}

// wsHeaders are the request headers the upgrader reads, spelled as it reads them.
var wsHeaders = []string{"Connection", "Upgrade", "Sec-Websocket-Version", "Sec-Websocket-Key", "Sec-Websocket-Extensions", "Sec-Websocket-Protocol", "Origin"}

// canonicalWSHeaders copies the headers the upgrader needs to the exact names it peeks: the
// server keeps header names as sent (DisableHeaderNamesNormalizing), and clients spell them
// differently (browsers "Sec-WebSocket-Key", Go "Sec-Websocket-Key", HTTP/2 hops lower case).
func canonicalWSHeaders(h *fasthttp.RequestHeader) {
	var fix [][2]string
	for k, v := range h.All() {
		for _, name := range wsHeaders {
			if len(k) == len(name) && string(k) != name && strings.EqualFold(string(k), name) {
				fix = append(fix, [2]string{name, string(v)})
			}
		}
	}
	for _, kv := range fix {
		h.Set(kv[0], kv[1])
	}
}

// peekFold returns the value of the request header name in any spelling of its case.
func peekFold(h *fasthttp.RequestHeader, name string) []byte {
	if v := h.Peek(name); len(v) > 0 {
		return v
	}
	for k, v := range h.All() {
		if len(k) == len(name) && strings.EqualFold(string(k), name) {
			return v
		}
	}
	return nil
}

func tooManyStreams(ctx *fasthttp.RequestCtx) {
	ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
	ctx.Response.Header.Set("Retry-After", "5")
	ctx.SetBodyString("too many open streams\n")
}

// serveWS runs one upgraded connection until the client leaves, stops answering pings, or the
// edge shuts down.
func (e *edge) serveWS(c *websocket.Conn, user string, known bool, pos streamPos) {
	defer c.Close()
	sub, err := e.push.Subscribe(user)
	if err != nil {
		closeWS(c, websocket.CloseTryAgainLater, "too many open streams")
		return
	}
	defer sub.Close()
	// Subscribed first, then read: a change in between is in sub.C() as well, never lost.
	var ent *replica.Entry
	if known {
		ent, _ = e.replica.Get(user)
	}
	first, version, rs := e.answer(ent)

	heartbeat := e.cfg.StreamHeartbeat
	readWait := 2*heartbeat + wsWriteWait
	c.SetReadLimit(wsReadLimit)
	_ = c.SetReadDeadline(time.Now().Add(readWait))
	c.SetPongHandler(func(string) error { return c.SetReadDeadline(time.Now().Add(readWait)) })
	gone := make(chan struct{})
	go func() { // the reader: handles pings, pongs and the close; discards anything else
		defer close(gone)
		for {
			if _, _, err := c.NextReader(); err != nil {
				return
			}
		}
	}()

	write := func(data []byte) bool {
		_ = c.SetWriteDeadline(time.Now().Add(wsWriteWait))
		return c.WriteMessage(websocket.TextMessage, data) == nil
	}
	if sendFirst(&pos, version, rs) && !write(first) {
		return
	}
	t := time.NewTicker(heartbeat)
	defer t.Stop()
	for {
		select {
		case m := <-sub.C():
			if !newer(m, &pos) {
				continue
			}
			if !write(m.Data) {
				return
			}
		case <-t.C:
			if c.WriteControl(websocket.PingMessage, nil, time.Now().Add(wsWriteWait)) != nil {
				return
			}
		case <-gone:
			return
		case <-e.done:
			closeWS(c, websocket.CloseGoingAway, "edge shutting down")
			return
		}
	}
}

func closeWS(c *websocket.Conn, code int, reason string) {
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
}

// streamPos is what a stream's client has: the user's version and the edge's ruleset version of
// the last state it was sent. The event id is "version.ruleset"; a bare "version" (rulesetKnown
// false) is accepted too.
type streamPos struct {
	version, ruleset uint64
	rulesetKnown     bool
}

// id appends the event id of a state of version v made with ruleset rs.
func appendID(b []byte, v, rs uint64) []byte {
	b = strconv.AppendUint(b, v, 10)
	b = append(b, '.')
	return strconv.AppendUint(b, rs, 10)
}

// parseID parses an event id ("version.ruleset" or "version"); the zero position when absent or
// malformed (the client then gets the current state).
func parseID(b []byte) streamPos {
	v, r, dot := strings.Cut(string(b), ".")
	version, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return streamPos{}
	}
	if !dot {
		return streamPos{version: version}
	}
	rs, err := strconv.ParseUint(r, 10, 64)
	if err != nil {
		return streamPos{version: version}
	}
	return streamPos{version: version, ruleset: rs, rulesetKnown: true}
}

// sendFirst says whether a stream opened by a client at pos starts with the current state
// (version v, ruleset rs): when the client has nothing, an older version, or the state of
// another ruleset. It moves pos to the state sent.
func sendFirst(pos *streamPos, v, rs uint64) bool {
	if pos.version == 0 || v > pos.version || (pos.rulesetKnown && rs != pos.ruleset) {
		*pos = streamPos{version: v, ruleset: rs, rulesetKnown: true}
		return true
	}
	return false
}

// newer says whether m is to be sent to a stream at pos, and moves pos to it: a newer version of
// the user, the same version under another ruleset, or a user without any state yet (version 0).
func newer(m push.Message, pos *streamPos) bool {
	if m.ID != 0 && (m.ID < pos.version || (m.ID == pos.version && pos.rulesetKnown && m.Ruleset == pos.ruleset)) {
		return false
	}
	*pos = streamPos{version: m.ID, ruleset: m.Ruleset, rulesetKnown: true}
	return true
}

// lastEventID is where a reconnecting client is: the Last-Event-ID header (EventSource sends
// it by itself) or the last_event_id query argument (for clients that cannot set headers, such
// as a browser's WebSocket).
func lastEventID(ctx *fasthttp.RequestCtx) streamPos {
	b := peekFold(&ctx.Request.Header, "Last-Event-ID")
	if len(b) == 0 {
		b = ctx.QueryArgs().Peek("last_event_id")
	}
	return parseID(b)
}
