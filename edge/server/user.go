package server

import (
	"bufio"
	"encoding/json"
	"strconv"
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
	// Count the events cheaply before decoding, for the rate limit.
	n := 1
	if evs, _, err := event.Decode(body, string(ctx.Request.Header.ContentType()), lim, time.Now()); err == nil {
		n = max(1, len(evs))
	}
	if !e.beacons.allow(user, n) {
		e.ingest.Load().Reject("rate_limited", n)
		ctx.Response.Header.Set("Retry-After", "1")
		ctx.SetStatusCode(fasthttp.StatusTooManyRequests)
		writeJSONBody(ctx, ingest.Result{Error: "too many events from this visitor; slow down"})
		return
	}
	code, res := e.ingest.Load().Handle(spanContext(ctx), body, string(ctx.Request.Header.ContentType()), lim, time.Now())
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

func (e *edge) answer(ent *replica.Entry) ([]byte, uint64) {
	a := segmentsAnswer{Segments: e.replica.MemberNames(ent, make([]string, 0, 8)), Ruleset: e.rulesetVersion()}
	if ent != nil {
		a.Version = ent.Version
		if ent.AsOf > 0 {
			a.AsOf = time.Unix(int64(ent.AsOf), 0).UTC().Format(time.RFC3339)
		}
	}
	b, _ := json.Marshal(a)
	return b, a.Version
}

// getSegments is GET /user/segments for the cookie's user, answered from the local replica.
func (e *edge) getSegments(ctx *fasthttp.RequestCtx) {
	v := e.identify(ctx)
	var ent *replica.Entry
	if !v.new {
		ent = e.replica.Lookup(ctx, string(v.id))
	}
	body, version := e.answer(ent)
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
func (e *edge) streamSegments(ctx *fasthttp.RequestCtx) {
	v := e.identify(ctx)
	user := string(v.id)
	sub, err := e.push.Subscribe(user)
	if err != nil {
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.Response.Header.Set("Retry-After", "5")
		ctx.SetBodyString("too many open streams\n")
		return
	}
	var ent *replica.Entry
	if !v.new {
		ent = e.replica.Lookup(ctx, user)
	}
	first, version := e.answer(ent)
	last, _ := strconv.ParseUint(string(ctx.Request.Header.Peek("Last-Event-ID")), 10, 64)
	h := &ctx.Response.Header
	h.SetContentType("text/event-stream")
	h.Set("Cache-Control", "private, no-store")
	h.Set("X-Accel-Buffering", "no")
	heartbeat := e.cfg.StreamHeartbeat
	done := e.done
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer sub.Close()
		write := func(id uint64, data []byte) bool {
			w.WriteString("id: ")
			w.WriteString(strconv.FormatUint(id, 10))
			w.WriteString("\nevent: segments\ndata: ")
			w.Write(data)
			w.WriteString("\n\n")
			return w.Flush() == nil
		}
		w.WriteString("retry: 2000\n\n")
		if last == 0 || version > last {
			if !write(version, first) {
				return
			}
		} else if w.Flush() != nil {
			return
		}
		t := time.NewTicker(heartbeat)
		defer t.Stop()
		for {
			select {
			case m := <-sub.C():
				if m.ID != 0 && m.ID <= last {
					continue
				}
				last = m.ID
				if !write(m.ID, m.Data) {
					return
				}
			case <-t.C:
				w.WriteString(": heartbeat\n\n")
				if w.Flush() != nil {
					return
				}
			case <-done:
				return
			}
		}
	})
}

// onReplicaChange pushes a user's new state to their open streams.
func (e *edge) onReplicaChange(user string, _, ent *replica.Entry) {
	if e.push.Connections() == 0 {
		return
	}
	body, version := e.answer(ent)
	e.push.Publish(user, push.Message{ID: version, Event: "segments", Data: body})
}
