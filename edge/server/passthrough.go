package server

import (
	"fmt"
	"net/url"
	"time"

	"github.com/valyala/fasthttp"
)

// passthrough is the edge's plain reverse proxy until the caching proxy (edge/proxy) is wired
// in: it forwards every request to the upstream with hop-by-hop headers removed and
// X-Forwarded-* set, and relays the answer unchanged.
type passthrough struct {
	client *fasthttp.HostClient
	host   string
}

func newPassthrough(upstream string, timeout time.Duration) (*passthrough, error) {
	u, err := url.Parse(upstream)
	if err != nil {
		return nil, err
	}
	addr := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			addr += ":443"
		} else {
			addr += ":80"
		}
	}
	return &passthrough{host: u.Host, client: &fasthttp.HostClient{
		Addr:                          addr,
		IsTLS:                         u.Scheme == "https",
		ReadTimeout:                   timeout,
		WriteTimeout:                  timeout,
		MaxIdleConnDuration:           30 * time.Second,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		NoDefaultUserAgentHeader:      true,
	}}, nil
}

var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade"}

func (p *passthrough) Handle(ctx *fasthttp.RequestCtx) {
	req := &ctx.Request
	for _, h := range hopByHop {
		req.Header.Del(h)
	}
	if prior := req.Header.Peek("X-Forwarded-For"); len(prior) > 0 {
		req.Header.Set("X-Forwarded-For", string(prior)+", "+ctx.RemoteIP().String())
	} else {
		req.Header.Set("X-Forwarded-For", ctx.RemoteIP().String())
	}
	req.Header.Set("X-Forwarded-Host", string(req.Host()))
	if ctx.IsTLS() {
		req.Header.Set("X-Forwarded-Proto", "https")
	} else {
		req.Header.Set("X-Forwarded-Proto", "http")
	}
	if err := p.client.Do(req, &ctx.Response); err != nil {
		ctx.Response.Reset()
		code := fasthttp.StatusBadGateway
		if err == fasthttp.ErrTimeout {
			code = fasthttp.StatusGatewayTimeout
		}
		ctx.SetStatusCode(code)
		ctx.SetContentType("text/plain; charset=utf-8")
		fmt.Fprintf(ctx, "upstream unavailable\n")
		return
	}
	for _, h := range hopByHop {
		ctx.Response.Header.Del(h)
	}
}

func (p *passthrough) Close() {}
