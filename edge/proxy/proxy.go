// Package proxy is the edge's reverse proxy: it forwards requests to the site behind the edge
// (RFC 9110 §7.6: hop-by-hop headers removed both ways, X-Forwarded-* set) and relays the answer
// byte for byte, streaming bodies instead of holding them in memory. With a cache configured it
// is also a shared HTTP cache (see cache.go).
package proxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// Proxy forwards requests to the configured upstreams. It is safe for concurrent use.
type Proxy struct {
	cfg       Config
	log       *slog.Logger
	def       *upstream
	byHost    map[string]*upstream
	m         *metrics
	viaHeader string
}

// New checks cfg, fills its defaults and prepares connection pools to the upstreams. Metrics are
// registered on reg (nil: not registered).
func New(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Proxy, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Upstream == "" {
		return nil, errors.New("proxy: no upstream configured")
	}
	cfg.applyDefaults()
	p := &Proxy{cfg: cfg, log: log, byHost: map[string]*upstream{}}
	var err error
	if p.def, err = newUpstream(cfg.Upstream, &p.cfg); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	for host, raw := range cfg.Upstreams {
		u, err := newUpstream(raw, &p.cfg)
		if err != nil {
			return nil, fmt.Errorf("proxy: host %q: %w", host, err)
		}
		p.byHost[hostOnly(host)] = u
	}
	if cfg.Via != "" {
		p.viaHeader = "1.1 " + cfg.Via
	}
	if p.m, err = newMetrics(reg); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	return p, nil
}

// Close closes idle upstream connections. Requests in flight finish.
func (p *Proxy) Close() {
	p.def.client.CloseIdleConnections()
	for _, u := range p.byHost {
		u.client.CloseIdleConnections()
	}
}

func (p *Proxy) upstreamFor(ctx *fasthttp.RequestCtx) *upstream {
	if len(p.byHost) > 0 {
		if u, ok := p.byHost[hostOnly(string(ctx.Request.Header.Host()))]; ok {
			return u
		}
	}
	return p.def
}

// Handle is a fasthttp.RequestHandler that proxies ctx's request to its upstream.
func (p *Proxy) Handle(ctx *fasthttp.RequestCtx) {
	if cl := ctx.Request.Header.ContentLength(); cl > p.cfg.MaxRequestBodySize {
		p.fail(ctx, fasthttp.StatusRequestEntityTooLarge, "request body too large\n")
		return
	}
	up := p.upstreamFor(ctx)
	if p.cfg.Cache != nil && (ctx.IsGet() || ctx.IsHead()) {
		p.handleCached(ctx, up)
		return
	}
	host := string(ctx.Request.Header.Host())
	p.prepareRequest(ctx, up)
	p.pass(ctx, up)
	if c := p.cfg.Cache; c != nil && !ctx.IsOptions() && !ctx.IsTrace() {
		if code := ctx.Response.StatusCode(); code >= 200 && code < 400 {
			c.InvalidateURI(host, string(ctx.Request.Header.RequestURI()))
		}
	}
}

// pass forwards the prepared request and relays the response without the cache.
func (p *Proxy) pass(ctx *fasthttp.RequestCtx, up *upstream) {
	resp := fasthttp.AcquireResponse()
	resp.Header.SetNoDefaultContentType(true)
	if err := p.roundTrip(up, &ctx.Request, resp); err != nil {
		fasthttp.ReleaseResponse(resp)
		p.upstreamFailed(ctx, err)
		return
	}
	p.relay(ctx, resp)
}

// roundTrip sends req and reads the upstream's response headers into resp; the body stays in
// resp.BodyStream() (or resp.Body() when small or absent). It records the upstream metrics.
func (p *Proxy) roundTrip(up *upstream, req *fasthttp.Request, resp *fasthttp.Response) error {
	var done func(*fasthttp.Response, error)
	if p.cfg.OnUpstream != nil {
		done = p.cfg.OnUpstream(req)
	}
	start := time.Now()
	err := up.client.Do(req, resp)
	if done != nil {
		done(resp, err)
	}
	if err != nil {
		p.m.errors.WithLabelValues(errorReason(err)).Inc()
		p.m.duration.WithLabelValues("error").Observe(time.Since(start).Seconds())
		return err
	}
	p.m.duration.WithLabelValues(statusClass(resp.StatusCode())).Observe(time.Since(start).Seconds())
	return nil
}

// relay moves resp (headers, then body as a stream) into ctx.Response and takes ownership of
// resp: it is released once the server has written the body.
func (p *Proxy) relay(ctx *fasthttp.RequestCtx, resp *fasthttp.Response) {
	p.copyResponseHeader(ctx, resp)
	if bs := resp.BodyStream(); bs != nil {
		ctx.Response.SetBodyStream(&upstreamBody{r: bs, resp: resp}, resp.Header.ContentLength())
		return
	}
	if !ctx.Request.Header.IsHead() {
		ctx.Response.SetBody(resp.Body())
	}
	fasthttp.ReleaseResponse(resp)
}

// copyResponseHeader sets ctx.Response's status and end-to-end headers from resp.
//
// Date: fasthttp manages it itself, and a copied header asks the server to write its own; so,
// as nginx does by default, the client gets the edge's Date, never the upstream's. Downstream
// caches lose nothing: Age carries the time spent in this cache.
func (p *Proxy) copyResponseHeader(ctx *fasthttp.RequestCtx, resp *fasthttp.Response) {
	keepClose := ctx.Response.Header.ConnectionClose()
	resp.Header.CopyTo(&ctx.Response.Header)
	stripHopByHop(&ctx.Response.Header)
	// The upstream closing its connection says nothing about ours with the client.
	if !keepClose {
		ctx.Response.Header.ResetConnectionClose()
	}
	if p.viaHeader != "" {
		ctx.Response.Header.Add("Via", p.viaHeader)
	}
}

// prepareRequest turns the client's request into the upstream's, in place.
func (p *Proxy) prepareRequest(ctx *fasthttp.RequestCtx, up *upstream) {
	h := &ctx.Request.Header
	clientHost := string(h.Host())
	stripRequestHopByHop(h)
	// The server has already decided whether to keep the client's connection; the upstream
	// connection is ours to keep alive.
	h.ResetConnectionClose()
	if ip := ctx.RemoteIP().String(); ip != "" {
		if prior := h.Peek("X-Forwarded-For"); len(prior) > 0 {
			h.Set("X-Forwarded-For", string(prior)+", "+ip)
		} else {
			h.Set("X-Forwarded-For", ip)
		}
	}
	h.Set("X-Forwarded-Host", clientHost)
	if ctx.IsTLS() {
		h.Set("X-Forwarded-Proto", "https")
	} else {
		h.Set("X-Forwarded-Proto", "http")
	}
	if p.viaHeader != "" {
		h.Add("Via", p.viaHeader)
	}
	if p.cfg.RewriteHost || clientHost == "" {
		// (An HTTP/1.0 client may send no Host; the upstream gets its own name then.)
		h.SetHost(up.host)
		ctx.Request.URI().SetHost(up.host)
	}
	// HostClient refuses a request whose URI scheme differs from the upstream's; the scheme the
	// client used is carried in X-Forwarded-Proto instead.
	if up.tls {
		ctx.Request.URI().SetScheme("https")
	} else {
		ctx.Request.URI().SetScheme("http")
	}
}

// upstreamFailed answers 502 (down, refused, broken) or 504 (timed out).
func (p *Proxy) upstreamFailed(ctx *fasthttp.RequestCtx, err error) {
	code, body := fasthttp.StatusBadGateway, "bad gateway: upstream unavailable\n"
	if isTimeout(err) {
		code, body = fasthttp.StatusGatewayTimeout, "gateway timeout: upstream did not answer in time\n"
	}
	p.log.Warn("upstream request failed", "request_id", RequestID(ctx), "method", string(ctx.Method()), "status", code, "err", err)
	p.fail(ctx, code, body)
}

func (p *Proxy) fail(ctx *fasthttp.RequestCtx, code int, body string) {
	ctx.Response.Reset()
	ctx.SetStatusCode(code)
	ctx.SetContentType("text/plain; charset=utf-8")
	ctx.Response.Header.Set("Cache-Control", "no-store")
	ctx.SetBodyString(body)
}

// upstreamBody is a response body being streamed from the upstream to the client; closing it
// (the server does, after writing) returns the upstream connection to the pool.
type upstreamBody struct {
	r    io.Reader
	resp *fasthttp.Response
}

func (b *upstreamBody) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *upstreamBody) Close() error {
	if b.resp == nil {
		return nil
	}
	err := b.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(b.resp)
	b.resp = nil
	return err
}

func isTimeout(err error) bool {
	if errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, fasthttp.ErrDialTimeout) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// errorReason is the metric label for an upstream failure: a few fixed values, never an address.
func errorReason(err error) string {
	switch {
	case errors.Is(err, fasthttp.ErrDialTimeout):
		return "connect_timeout"
	case isTimeout(err):
		return "timeout"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return "connect"
	}
	if errors.Is(err, fasthttp.ErrConnectionClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "closed"
	}
	return "protocol"
}

func statusClass(code int) string {
	switch {
	case code < 200:
		return "1xx"
	case code < 300:
		return "2xx"
	case code < 400:
		return "3xx"
	case code < 500:
		return "4xx"
	default:
		return "5xx"
	}
}
