package server

import (
	"encoding/json"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ingest"
	"github.com/segedge/segedge/edge/identity"
	"github.com/segedge/segedge/edge/push"
	"github.com/segedge/segedge/edge/replica"
)

// visitor is who a request comes from.
type visitor struct {
	id  []byte // the cookie's user id (valid only during the request)
	new bool   // no valid cookie came with the request: a cookie was just issued
}

// identify reads and verifies the segedge_uid cookie. Without a valid one (absent, forged,
// tampered), a new id is issued and the Set-Cookie header added to the response: a forged
// cookie is replaced, never trusted.
func (e *edge) identify(ctx *fasthttp.RequestCtx) visitor {
	if id, ok := e.trusted.user(ctx); ok {
		return visitor{id: id}
	}
	if id, ok := e.signer.Verify(ctx.Request.Header.Cookie(identity.CookieName)); ok {
		return visitor{id: id}
	}
	id, value := e.signer.Issue()
	opts := e.cookieOpts
	opts.Secure = opts.Secure || ctx.IsTLS()
	var buf [160]byte
	ctx.Response.Header.AddBytesV("Set-Cookie", identity.AppendSetCookie(buf[:0], []byte(value), opts))
	return visitor{id: []byte(id), new: true}
}

// beaconLimiter hands out one token bucket per user, forgotten a minute after last use.
type beaconLimiter struct {
	perSecond float64
	burst     int
	users     *otter.Cache[string, *rate.Limiter]
}

func newBeaconLimiter(perSecond float64, burst int) *beaconLimiter {
	c := otter.Must(&otter.Options[string, *rate.Limiter]{
		MaximumSize:      200_000,
		ExpiryCalculator: otter.ExpiryAccessing[string, *rate.Limiter](time.Minute),
	})
	return &beaconLimiter{perSecond: perSecond, burst: burst, users: c}
}

func (b *beaconLimiter) allow(user string, n int) bool {
	l, _ := b.users.ComputeIfAbsent(user, func() (*rate.Limiter, bool) {
		return rate.NewLimiter(rate.Limit(b.perSecond), b.burst), false
	})
	return l.AllowN(time.Now(), n)
}

// postEvents is the browser beacon, POST /v1/events: the events' user is the cookie's, never
// the body's, so a visitor can only send events about themself.
func (e *edge) postEvents(ctx *fasthttp.RequestCtx) {
	v := e.identify(ctx)
	user := string(v.id)
	body := ctx.PostBody()
	lim := e.limits
	lim.FixedUserID = user
	ctx.SetContentType("application/json")
	// Decode once: the number of events is the rate limit's cost, the events are what is stored.
	now := time.Now()
	evs, fieldErrs, err := event.Decode(body, string(ctx.Request.Header.ContentType()), lim, now)
	n := 1
	if err == nil {
		n = max(1, len(evs))
	}
	if !e.beacons.allow(user, n) {
		e.ingest.Load().Reject("rate_limited", n)
		ctx.Response.Header.Set("Retry-After", "1")
		ctx.SetStatusCode(fasthttp.StatusTooManyRequests)
		writeJSONBody(ctx, ingest.Result{Error: "too many events from this visitor; slow down"})
		return
	}
	code, res := e.ingest.Load().HandleDecoded(spanContext(ctx), evs, fieldErrs, err, now)
	ctx.SetStatusCode(code)
	writeJSONBody(ctx, res)
}

func writeJSONBody(ctx *fasthttp.RequestCtx, v any) {
	b, _ := json.Marshal(v)
	ctx.SetBody(append(b, '\n'))
}

// segmentsAnswer is the JSON of GET /user/segments and of each stream message.
type segmentsAnswer struct {
	Segments []string `json:"segments"`
	Ruleset  uint64   `json:"ruleset"`
	Version  uint64   `json:"version"`
	AsOf     string   `json:"as_of,omitempty"`
}

func (e *edge) answer(ent *replica.Entry) ([]byte, uint64, uint64) {
	a := segmentsAnswer{Segments: e.replica.MemberNames(ent, make([]string, 0, 8)), Ruleset: e.rulesetVersion()}
	if ent != nil {
		a.Version = ent.Version
		if ent.AsOf > 0 {
			a.AsOf = time.Unix(int64(ent.AsOf), 0).UTC().Format(time.RFC3339)
		}
	}
	b, _ := json.Marshal(a)
	return b, a.Version, a.Ruleset
}

// getSegments is GET /user/segments for the cookie's user, answered from the local replica.
func (e *edge) getSegments(ctx *fasthttp.RequestCtx) {
	v := e.identify(ctx)
	var ent *replica.Entry
	if !v.new {
		ent = e.replica.Lookup(ctx, string(v.id))
	}
	body, version, _ := e.answer(ent)
	etag := `"` + strconv.FormatUint(version, 10) + "-" + strconv.FormatUint(e.rulesetVersion(), 10) + `"`
	h := &ctx.Response.Header
	h.Set("Cache-Control", "private, max-age=5")
	h.Set("ETag", etag)
	h.Set("Vary", "Cookie")
	if string(ctx.Request.Header.Peek("If-None-Match")) == etag {
		ctx.SetStatusCode(fasthttp.StatusNotModified)
		return
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// streamSegments is GET /user/segments/stream: Server-Sent Events with the user's segments now
// (unless Last-Event-ID says the client already has this version) and at every change.
//
// A stream holds a socket for hours, so it is kept cheap: the connection is hijacked from
// fasthttp once the request is read, and one goroutine writes the chunked response straight to
// the socket with a buffer borrowed only while a message is written. fasthttp's per-connection
// read and write buffers, its request context and its stream-writer pipe and goroutine are all
// given back (that is what KeepHijackedConns in server.go is for). The client's departure is
// noticed when a heartbeat cannot be written.
func (e *edge) streamSegments(ctx *fasthttp.RequestCtx) {
	v := e.identify(ctx)
	user := string(v.id)
	if err := e.push.Check(user); err != nil {
		tooManyStreams(ctx)
		return
	}
	known := !v.new
	if known {
		e.replica.Lookup(ctx, user) // a replica miss is fetched from the origin now, not after the hijack
	}
	pos := lastEventID(ctx)
	h := &ctx.Response.Header
	h.SetContentType("text/event-stream")
	h.Set("Cache-Control", "private, no-store")
	h.Set("X-Accel-Buffering", "no")
	if ctx.IsHead() {
		return
	}
	h.SetContentLength(-1) // chunked
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		if u, ok := c.(interface{ UnsafeConn() net.Conn }); ok {
			c = u.UnsafeConn() // the socket itself, so fasthttp's buffered reader can go
		}
		// Subscribed first, then read: a change in between is in the subscription as well.
		sub, err := e.push.Subscribe(user) // the authority on the limits (Check above may have raced)
		if err != nil {
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = c.Write([]byte("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: text/plain\r\nContent-Length: 22\r\nConnection: close\r\n\r\ntoo many open streams\n"))
			c.Close()
			return
		}
		var ent *replica.Entry
		if known {
			ent, _ = e.replica.Get(user)
		}
		first, version, rs := e.answer(ent)
		s := &sseConn{c: c, pos: pos}
		head := append([]byte(nil), ctx.Response.Header.Header()...) // ctx is recycled when this returns
		go e.runSSE(s, sub, head, first, version, rs)
	})
}

// sseWriteWait bounds one write to a stream: a client that does not read for that long is dropped.
const sseWriteWait = 10 * time.Second

// sseBufs lends the buffers messages are framed in, so an idle stream holds none.
var sseBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

type sseConn struct {
	c   net.Conn
	pos streamPos // the state last sent (or that the client said it has)
}

// send writes, as one HTTP chunk, pre (the response head, the first time) and then either the
// event (id version.rs, data) or, when data is nil, the comment text.
func (s *sseConn) send(pre []byte, version, rs uint64, data []byte, text string) bool {
	bp := sseBufs.Get().(*[]byte)
	defer sseBufs.Put(bp)
	b := append((*bp)[:0], pre...)
	var body [64]byte
	p := body[:0]
	if data != nil {
		p = append(p, "id: "...)
		p = appendID(p, version, rs)
		p = append(p, "\nevent: segments\ndata: "...)
	} else {
		p = append(p, text...)
	}
	n := len(p)
	if data != nil {
		n += len(data) + 2
	}
	b = strconv.AppendInt(b, int64(n), 16)
	b = append(b, "\r\n"...)
	b = append(b, p...)
	if data != nil {
		b = append(b, data...)
		b = append(b, "\n\n"...)
	}
	b = append(b, "\r\n"...)
	*bp = b
	_ = s.c.SetWriteDeadline(time.Now().Add(sseWriteWait))
	_, err := s.c.Write(b)
	return err == nil
}

func (e *edge) runSSE(s *sseConn, sub *push.Sub, head, first []byte, version, rs uint64) {
	defer s.c.Close()
	defer sub.Close()
	if !s.send(head, 0, 0, nil, "retry: 2000\n\n") {
		return
	}
	if sendFirst(&s.pos, version, rs) && !s.send(nil, version, rs, first, "") {
		return
	}
	t := time.NewTicker(e.cfg.StreamHeartbeat)
	defer t.Stop()
	for {
		select {
		case m := <-sub.C():
			if !newer(m, &s.pos) {
				continue
			}
			if !s.send(nil, m.ID, m.Ruleset, m.Data, "") {
				return
			}
		case <-t.C:
			if !s.send(nil, 0, 0, nil, ": heartbeat\n\n") {
				return
			}
		case <-e.done:
			_ = s.c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = s.c.Write([]byte("0\r\n\r\n")) // the end of the chunked body: the client reconnects
			return
		}
	}
}

// onReplicaChange pushes a user's new state to their open streams.
func (e *edge) onReplicaChange(user string, _, ent *replica.Entry) {
	if e.push.Connections() == 0 {
		return
	}
	body, version, rs := e.answer(ent)
	e.push.Publish(user, push.Message{ID: version, Ruleset: rs, Event: "segments", Data: body})
}

// onRulesetChange pushes every open stream its user's state under the new ruleset: the same
// segments may now mean other slot variants, so clients refresh their slots.
func (e *edge) onRulesetChange() {
	if e.push.Connections() == 0 {
		return
	}
	e.push.Broadcast(func(user string) (push.Message, bool) {
		ent, _ := e.replica.Get(user)
		body, version, rs := e.answer(ent)
		return push.Message{ID: version, Ruleset: rs, Event: "segments", Data: body}, true
	})
}
