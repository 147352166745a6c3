package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/segedge/segedge/edge/compress"
	"github.com/segedge/segedge/edge/httpcache"
	"github.com/valyala/fasthttp"
)

// CacheHeader names the response header that says how the cache answered.
const CacheHeader = "Segedge-Cache"

// conditionalHeaders are the client's validators and ranges: the cache fetches full responses
// for itself and answers the client's conditionals from what it stored.
var conditionalHeaders = []string{"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range", "Range"}

// handleCached answers a GET or HEAD through the cache.
func (p *Proxy) handleCached(ctx *fasthttp.RequestCtx, up *upstream) {
	c := p.cfg.Cache
	host, uri := string(ctx.Request.Header.Host()), string(ctx.Request.Header.RequestURI())
	rcc := httpcache.ParseCacheControl(string(ctx.Request.Header.Peek("Cache-Control")))
	if rcc.NoStore {
		p.passUncached(ctx, up)
		return
	}
	e, st := c.Lookup(host, uri, p.cacheHeader(ctx))
	// A client's no-cache or max-age=0 asks for an answer validated with the upstream.
	mustAsk := rcc.NoCache || rcc.MaxAge == 0
	now := p.cfg.Now()
	switch {
	case st == httpcache.Fresh && !mustAsk:
		p.serve(ctx, e, httpcache.Hit)
		return
	case st == httpcache.Stale && !mustAsk && e.WithinStaleWhileRevalidate(now):
		req := p.cacheRequest(ctx, up)
		c.Background(httpcache.FlightKey(host, uri), func() (*httpcache.Entry, error) {
			defer fasthttp.ReleaseRequest(req)
			// A refresh that finished between our Lookup and now (its flight ended just before
			// this one began) has stored a fresh entry: nothing to fetch. Without this, a request
			// that saw the stale entry an instant before the refresh stored its answer started a
			// second refresh.
			if again, st := c.Lookup(host, uri, p.cacheHeaderOf(&req.Header)); st == httpcache.Fresh && again != e {
				return again, nil
			}
			f := p.fetch(up, req, host, uri, e)
			if f.resp != nil {
				fasthttp.ReleaseResponse(f.resp)
			}
			return f.entry, f.err
		})
		p.serve(ctx, e, httpcache.StaleResult)
		return
	case st == httpcache.Uncacheable:
		p.passUncached(ctx, up)
		return
	case e == nil && ctx.IsHead():
		// A HEAD cannot fill the cache; it goes to the upstream as it is.
		p.passUncached(ctx, up)
		return
	}

	req := p.cacheRequest(ctx, up)
	defer fasthttp.ReleaseRequest(req)
	var mine fetched
	got, leader, err := c.Fetch(ctx, httpcache.FlightKey(host, uri), p.cacheHeader(ctx), func() (*httpcache.Entry, error) {
		// A fetch that finished between our Lookup and now has stored what we need.
		if again, st := c.Lookup(host, uri, p.cacheHeader(ctx)); st == httpcache.Fresh && !mustAsk && again != e {
			mine = fetched{entry: again, result: httpcache.Hit}
			return again, nil
		}
		mine = p.fetch(up, req, host, uri, e)
		return mine.entry, mine.err
	})
	switch {
	case leader:
		p.finish(ctx, mine)
	case errors.Is(err, httpcache.ErrNotShared):
		// The shared response was not stored, or is another Vary variant: fetch our own
		// (uncoalesced; it is stored if it may be).
		p.finish(ctx, p.fetch(up, req, host, uri, e))
	case err != nil: // the server is shutting down while we waited
		p.fail(ctx, fasthttp.StatusServiceUnavailable, "service unavailable\n")
	default:
		// (now is when we arrived: a response the upstream sent after that answers us even if
		// it must be revalidated on every use, like no-cache.)
		switch later := p.cfg.Now(); {
		case got.Fresh(later) || !got.ResponseTime.Before(now):
			p.serve(ctx, got, httpcache.Hit)
		case got.WithinStaleIfError(later):
			p.serve(ctx, got, httpcache.StaleResult) // the leader's fetch failed
		default:
			// A flight that began before us brought an answer already stale for us.
			p.finish(ctx, p.fetch(up, req, host, uri, got))
		}
	}
}

// finish answers ctx with the outcome of its own upstream fetch.
func (p *Proxy) finish(ctx *fasthttp.RequestCtx, f fetched) {
	switch {
	case f.resp != nil: // not stored: relay the upstream's answer as it comes
		p.relayWithPrefix(ctx, f.resp, f.prefix)
		ctx.Response.Header.Set(CacheHeader, string(httpcache.Pass))
		p.cfg.Cache.Record(httpcache.Pass)
	case f.err != nil:
		p.upstreamFailed(ctx, f.err)
	default:
		p.serve(ctx, f.entry, f.result)
	}
}

// passUncached forwards the request without the cache, marking it PASS.
func (p *Proxy) passUncached(ctx *fasthttp.RequestCtx, up *upstream) {
	p.prepareRequest(ctx, up)
	p.pass(ctx, up)
	p.cfg.Cache.Record(httpcache.Pass)
	ctx.Response.Header.Set(CacheHeader, string(httpcache.Pass))
}

// cacheRequest is the upstream request the cache sends for ctx: a GET, without the client's
// validators and ranges, with hop-by-hop headers removed and X-Forwarded-* set. It is a copy, so
// a background refresh can outlive ctx.
func (p *Proxy) cacheRequest(ctx *fasthttp.RequestCtx, up *upstream) *fasthttp.Request {
	p.prepareRequest(ctx, up)
	req := fasthttp.AcquireRequest()
	ctx.Request.Header.CopyTo(&req.Header)
	req.SetRequestURIBytes(ctx.Request.RequestURI())
	req.URI().SetScheme(string(ctx.Request.URI().Scheme()))
	req.SetHostBytes(ctx.Request.Host())
	req.Header.SetHostBytes(ctx.Request.Host())
	req.Header.SetMethod(fasthttp.MethodGet)
	for _, h := range conditionalHeaders {
		req.Header.Del(h)
	}
	if p.cfg.Compress != nil {
		req.Header.SetBytesV("Accept-Encoding", identityValue) // the cache keeps identity bodies
	}
	return req
}

// fetched is the outcome of one upstream fetch for the cache.
type fetched struct {
	entry  *httpcache.Entry // what to serve (stored, refreshed, or stale on error); nil otherwise
	result httpcache.Result
	// resp is set when the response is not stored: the caller relays it, prefix first (the
	// part of the body already read), and releases it.
	resp   *fasthttp.Response
	prefix []byte
	err    error
}

// fetch sends req (a copy from cacheRequest), revalidating stale if it has validators, and
// stores what may be stored.
func (p *Proxy) fetch(up *upstream, req *fasthttp.Request, host, uri string, stale *httpcache.Entry) fetched {
	c := p.cfg.Cache
	if stale != nil && stale.Revalidatable() {
		if stale.ETag != "" {
			req.Header.Set("If-None-Match", stale.ETag)
		}
		if stale.LastModified != "" {
			req.Header.Set("If-Modified-Since", stale.LastModified)
		}
	}
	reqTime := p.cfg.Now()
	resp := fasthttp.AcquireResponse()
	resp.Header.SetNoDefaultContentType(true)
	err := p.roundTrip(up, req, resp)
	respTime := p.cfg.Now()
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		if stale != nil && stale.WithinStaleIfError(respTime) {
			return fetched{entry: stale, result: httpcache.StaleResult}
		}
		return fetched{err: err}
	}
	status := resp.StatusCode()
	if stale != nil && status == fasthttp.StatusNotModified {
		n := stale.Refreshed(responseFields(resp), reqTime, respTime)
		fasthttp.ReleaseResponse(resp)
		return fetched{entry: c.Store(host, uri, &req.Header, n), result: httpcache.Revalidated}
	}
	if stale != nil && status >= 500 && stale.WithinStaleIfError(respTime) {
		fasthttp.ReleaseResponse(resp)
		return fetched{entry: stale, result: httpcache.StaleResult}
	}
	e := httpcache.NewEntry(status, responseFields(resp), reqTime, respTime)
	if ok, why := httpcache.Storable(&req.Header, e); !ok || resp.Header.ContentLength() > p.cfg.MaxCacheableBodySize {
		p.log.Debug("not stored", "why", why, "status", status)
		c.Delete(stale)
		if why != "request no-store" && why != "authorization" && status < 500 {
			c.RememberUncacheable(host, uri, p.cfg.UncacheableTTL)
		}
		return fetched{resp: resp}
	}
	body, complete, err := readBounded(resp, p.cfg.MaxCacheableBodySize)
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		p.m.errors.WithLabelValues("body").Inc()
		return fetched{err: err}
	}
	if !complete {
		c.RememberUncacheable(host, uri, p.cfg.UncacheableTTL)
		return fetched{resp: resp, prefix: body}
	}
	fasthttp.ReleaseResponse(resp)
	e.Body = body
	e.URI = uri
	if p.cfg.OnCacheFill != nil {
		p.cfg.OnCacheFill(e)
	}
	return fetched{entry: c.Store(host, uri, &req.Header, e), result: httpcache.MissResult}
}

// readBounded reads resp's body if it is at most limit bytes. Otherwise it returns the part
// read, complete=false, and leaves the rest in resp's body stream.
func readBounded(resp *fasthttp.Response, limit int) (body []byte, complete bool, err error) {
	bs := resp.BodyStream()
	if bs == nil {
		b := resp.Body()
		return append([]byte(nil), b...), len(b) <= limit, nil
	}
	var buf bytes.Buffer
	if cl := resp.Header.ContentLength(); cl > 0 {
		buf.Grow(cl)
	}
	n, err := io.Copy(&buf, io.LimitReader(bs, int64(limit)+1))
	if err != nil {
		return nil, false, err
	}
	if n > int64(limit) {
		return buf.Bytes(), false, nil
	}
	if b := buf.Bytes(); cap(b) > len(b)+len(b)/8 {
		// The entry's weight counts len, so do not keep a doubled buffer's slack alive.
		return append([]byte(nil), b...), true, nil
	}
	return buf.Bytes(), true, nil
}

// relayWithPrefix relays an unstored response whose body's first bytes were already read.
func (p *Proxy) relayWithPrefix(ctx *fasthttp.RequestCtx, resp *fasthttp.Response, prefix []byte) {
	if prefix == nil {
		p.relay(ctx, resp)
		return
	}
	p.copyResponseHeader(ctx, resp)
	size := resp.Header.ContentLength()
	var rest io.Reader = bytes.NewReader(nil)
	if bs := resp.BodyStream(); bs != nil {
		rest = bs
	}
	ctx.Response.SetBodyStream(&upstreamBody{r: io.MultiReader(bytes.NewReader(prefix), rest), resp: resp}, size)
}

// responseFields copies resp's end-to-end headers (Content-Length is recomputed when served).
func responseFields(resp *fasthttp.Response) []httpcache.Field {
	stripHopByHop(&resp.Header)
	out := make([]httpcache.Field, 0, 16)
	for k, v := range resp.Header.All() {
		if len(k) == len("Content-Length") && bytes.EqualFold(k, []byte("Content-Length")) {
			continue
		}
		out = append(out, httpcache.Field{Name: string(k), Value: string(v)})
	}
	return out
}

// serve answers from entry e.
func (p *Proxy) serve(ctx *fasthttp.RequestCtx, e *httpcache.Entry, result httpcache.Result) {
	now := p.cfg.Now()
	r := &ctx.Response
	// Reset also makes the server write its own Date (stored Date headers are dropped by
	// fasthttp's Add): the client gets the edge's Date, as with copyResponseHeader.
	r.Reset()
	r.Header.SetNoDefaultContentType(true)
	r.SetStatusCode(e.Status)
	for _, f := range e.Header {
		r.Header.Add(f.Name, f.Value)
	}
	r.Header.Set("Age", e.AgeHeader(now))
	r.Header.Set(CacheHeader, string(result))
	if p.viaHeader != "" {
		r.Header.Add("Via", p.viaHeader)
	}
	p.cfg.Cache.Record(result)
	if ctx.IsHead() {
		r.SkipBody = true
		r.Header.SetContentLength(len(e.Body))
		return
	}
	if p.cfg.Render != nil {
		if p.cfg.Render(ctx, e) {
			return
		}
	} else if e.Status == fasthttp.StatusOK && notModified(&ctx.Request.Header, e) {
		r.SetStatusCode(fasthttp.StatusNotModified)
		r.SkipBody = true
		return
	}
	if enc := p.Coding(ctx, e); enc != compress.Identity {
		SetEncoded(r, enc, p.Compressed(e, 0, enc, func() []byte { return e.Body }))
		return
	}
	r.SetBodyRaw(e.Body) // entries are immutable: no copy
}

// notModified evaluates the client's conditional request against e (RFC 9110 §13.2.2).
func notModified(h *fasthttp.RequestHeader, e *httpcache.Entry) bool {
	if inm := h.Peek("If-None-Match"); len(inm) > 0 {
		if e.ETag == "" {
			return false
		}
		for _, t := range bytes.Split(inm, []byte{','}) {
			t = bytes.TrimSpace(t)
			if string(t) == "*" || weakEqual(string(t), e.ETag) {
				return true
			}
		}
		return false
	}
	if ims := h.Peek("If-Modified-Since"); len(ims) > 0 && e.LastModified != "" {
		since, err1 := http.ParseTime(string(ims))
		lm, err2 := http.ParseTime(e.LastModified)
		return err1 == nil && err2 == nil && !lm.After(since.Add(time.Second-1))
	}
	return false
}

func weakEqual(a, b string) bool {
	trim := func(s string) string {
		if len(s) > 2 && s[:2] == "W/" {
			return s[2:]
		}
		return s
	}
	return trim(a) == trim(b)
}
