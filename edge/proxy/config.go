package proxy

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/segedge/segedge/edge/compress"
	"github.com/segedge/segedge/edge/httpcache"
	"github.com/valyala/fasthttp"
)

// Defaults applied by New to zero Config fields. They are the values an operator would pick for
// a site on the same network as the edge: short connects, generous reads for slow pages.
const (
	DefaultConnectTimeout        = 5 * time.Second
	DefaultReadTimeout           = 30 * time.Second
	DefaultWriteTimeout          = 30 * time.Second
	DefaultMaxRequestBodySize    = 4 << 20
	DefaultMaxResponseHeaderSize = 32 << 10
	DefaultMaxConnsPerUpstream   = 1024
	DefaultMaxIdleConnDuration   = 90 * time.Second
	DefaultMaxCacheableBodySize  = 8 << 20
	DefaultUncacheableTTL        = 10 * time.Second
)

// Config says where requests go and how long the proxy waits for them.
type Config struct {
	// Upstream is the site behind the edge, "http://host:port" or "https://host" (no path).
	Upstream string
	// Upstreams sends requests by their Host header (without port) to another site; hosts not
	// listed go to Upstream. Optional.
	Upstreams map[string]string
	// RewriteHost sends the upstream's own host in the Host header. The default passes the Host
	// the client sent, which is what virtual-hosted sites behind a CDN expect.
	RewriteHost bool
	// Via, when set, is added to the Via header both ways as "1.1 <Via>" (RFC 9110 §7.6.3).
	Via string

	// ConnectTimeout bounds dialling the upstream (default DefaultConnectTimeout); exceeding it is a 504.
	ConnectTimeout time.Duration
	// ReadTimeout bounds each wait for data from the upstream, like nginx's proxy_read_timeout:
	// not the whole response, so a large body streamed to a slow client is not cut off (default
	// DefaultReadTimeout). No response headers within it is a 504; a body that stalls that long
	// is cut off.
	ReadTimeout time.Duration
	// WriteTimeout bounds each write of the request to the upstream (default
	// DefaultWriteTimeout), like ReadTimeout: a large upload from a slow client is not cut off
	// while it keeps flowing.
	WriteTimeout time.Duration
	// MaxRequestBodySize rejects requests whose Content-Length is larger with 413 before they reach
	// the upstream (default DefaultMaxRequestBodySize). Chunked request bodies are bounded by the
	// fasthttp.Server's own MaxRequestBodySize, as are request headers by its ReadBufferSize.
	MaxRequestBodySize int
	// MaxResponseHeaderSize bounds the upstream's response headers (default
	// DefaultMaxResponseHeaderSize); larger ones are a 502.
	MaxResponseHeaderSize int
	// MaxConnsPerUpstream bounds open connections to each upstream (default DefaultMaxConnsPerUpstream).
	MaxConnsPerUpstream int
	// MaxIdleConnDuration closes upstream keep-alive connections idle that long (default DefaultMaxIdleConnDuration).
	MaxIdleConnDuration time.Duration

	// Cache, when set, makes the proxy a shared cache for GET and HEAD (RFC 9111): responses on
	// that path carry "Segedge-Cache: HIT|MISS|STALE|PASS|REVALIDATED".
	Cache *httpcache.Cache
	// MaxCacheableBodySize: larger responses are streamed to the client and not stored (default
	// DefaultMaxCacheableBodySize).
	MaxCacheableBodySize int
	// UncacheableTTL is how long the cache remembers that a URL's response could not be stored
	// (private, no-store, Set-Cookie, too large…), sending its requests straight to the upstream
	// instead of queueing them behind one fetch (default DefaultUncacheableTTL, Varnish's
	// hit-for-pass). Answers that depend on the request (its no-store or Authorization) and 5xx
	// are not remembered.
	UncacheableTTL time.Duration
	// OnCacheFill runs once on every entry before it is stored from a full upstream response
	// (not on a 304 refresh, which keeps the body and Compiled), so the edge can parse the page
	// once and keep the result in Entry.Compiled. It must not modify Body or Header.
	OnCacheFill func(*httpcache.Entry)
	// Render, when set, writes the body for a response served from the cache (every result but
	// PASS). The proxy has already set the status, the stored headers, Age and Segedge-Cache on
	// ctx.Response; Render writes the body (e.g. the personalized page) and returns true, or
	// returns false to send the stored body unchanged. With Render set the proxy does not answer
	// the client's own If-None-Match/If-Modified-Since with 304, since the body it sends is not
	// the stored one. HEAD requests never reach Render.
	Render func(ctx *fasthttp.RequestCtx, e *httpcache.Entry) bool
	// OnUpstream, when set, is called before each request to an upstream with that request (it
	// may add headers); the function it returns, if not nil, is called once the response
	// headers arrived or the request failed. The edge traces upstream requests with it.
	OnUpstream func(req *fasthttp.Request) func(resp *fasthttp.Response, err error)
	// Compress, when set, makes the proxy compress what it serves from the cache (gzip or
	// brotli, per Accept-Encoding) and keep the compressed bodies there; the cache then holds
	// identity bodies only (see encoding.go).
	Compress *compress.Cache
	// Now is the proxy's clock for request and response times of cached responses (default:
	// the cache's clock, or time.Now). Tests inject one.
	Now func() time.Time
}

func (c *Config) applyDefaults() {
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.MaxRequestBodySize <= 0 {
		c.MaxRequestBodySize = DefaultMaxRequestBodySize
	}
	if c.MaxResponseHeaderSize <= 0 {
		c.MaxResponseHeaderSize = DefaultMaxResponseHeaderSize
	}
	if c.MaxConnsPerUpstream <= 0 {
		c.MaxConnsPerUpstream = DefaultMaxConnsPerUpstream
	}
	if c.MaxIdleConnDuration <= 0 {
		c.MaxIdleConnDuration = DefaultMaxIdleConnDuration
	}
	if c.UncacheableTTL <= 0 {
		c.UncacheableTTL = DefaultUncacheableTTL
	}
	if c.MaxCacheableBodySize <= 0 {
		c.MaxCacheableBodySize = DefaultMaxCacheableBodySize
	}
	if c.Now == nil && c.Cache != nil {
		c.Now = c.Cache.Now
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// upstream is one site the proxy forwards to.
type upstream struct {
	host   string // as in the URL, sent as Host when RewriteHost is set
	tls    bool
	client *fasthttp.HostClient
}

func newUpstream(raw string, c *Config) (*upstream, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("upstream %q: scheme must be http or https", raw)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("upstream %q: no host", raw)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("upstream %q: only scheme://host[:port] is supported (no path, query or user)", raw)
	}
	addr := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			addr += ":443"
		} else {
			addr += ":80"
		}
	}
	connect := c.ConnectTimeout
	return &upstream{host: u.Host, tls: u.Scheme == "https", client: &fasthttp.HostClient{
		Addr:  addr,
		IsTLS: u.Scheme == "https",
		DialTimeout: func(addr string, _ time.Duration) (net.Conn, error) {
			conn, err := fasthttp.DialTimeout(addr, connect)
			if err != nil {
				return nil, err
			}
			return &idleConn{Conn: conn, readIdle: c.ReadTimeout, writeIdle: c.WriteTimeout}, nil
		},
		// No ReadTimeout or WriteTimeout here: fasthttp's are deadlines for the whole response
		// or request; idleConn applies Config's to each read and write instead.
		MaxConns:                      c.MaxConnsPerUpstream,
		MaxIdleConnDuration:           c.MaxIdleConnDuration,
		ReadBufferSize:                c.MaxResponseHeaderSize,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		NoDefaultUserAgentHeader:      true,
		StreamResponseBody:            true,
	}}, nil
}

func hostOnly(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		h = h[:i]
	}
	return strings.ToLower(h)
}

// idleConn gives every Read and Write its own deadline, idle from now, and ignores the absolute
// deadlines its user sets: the upstream connection times out when it stalls, not when a long
// response or upload is still flowing.
type idleConn struct {
	net.Conn
	readIdle, writeIdle time.Duration
}

func (c *idleConn) Read(p []byte) (int, error) {
	if err := c.Conn.SetReadDeadline(time.Now().Add(c.readIdle)); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *idleConn) Write(p []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.writeIdle)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *idleConn) SetReadDeadline(time.Time) error  { return nil }
func (c *idleConn) SetWriteDeadline(time.Time) error { return nil }
func (c *idleConn) SetDeadline(time.Time) error      { return nil }
