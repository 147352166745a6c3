package proxy

import (
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/segedge/segedge/edge/httpcache"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// benchPage is a 45 KB HTML page, the size DESIGN.md measures with.
var benchPage = "<html><body>" + strings.Repeat("<p>segedge benchmark paragraph</p>", 1300) + "</body></html>"

func benchProxy(b *testing.B) *Proxy {
	b.Helper()
	clk := newClock()
	up := newBenchUpstream(b, clk)
	c, err := httpcache.New(httpcache.Config{Now: clk.Now}, nil)
	if err != nil {
		b.Fatal(err)
	}
	p, err := New(Config{Upstream: up, Cache: c}, nil, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	return p
}

func newBenchUpstream(b *testing.B, clk *clock) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(fixed(clk, 200, benchPage, "Cache-Control", "max-age=3600", "Content-Type", "text/html", "ETag", `"p1"`))}
	go srv.Serve(ln) //nolint:errcheck
	b.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// BenchmarkCacheHitHandler is the proxy's own cost for a cache hit: Handle on a RequestCtx, no
// sockets.
func BenchmarkCacheHitHandler(b *testing.B) {
	p := benchProxy(b)
	var ctx fasthttp.RequestCtx
	var req fasthttp.Request
	req.SetRequestURI("/page?id=1")
	req.Header.SetHost("shop.example")
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}, nil)
	p.Handle(&ctx)
	if got := string(ctx.Response.Header.Peek(CacheHeader)); got != "MISS" {
		b.Fatalf("first request: %q %d %s", got, ctx.Response.StatusCode(), ctx.Response.Body())
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchPage)))
	for b.Loop() {
		ctx.Response.Reset()
		p.Handle(&ctx)
	}
	if got := string(ctx.Response.Header.Peek(CacheHeader)); got != "HIT" || len(ctx.Response.Body()) != len(benchPage) {
		b.Fatalf("last request: %q, %d bytes", got, len(ctx.Response.Body()))
	}
}

// BenchmarkCacheHitInMemory is a cache hit through a real fasthttp server and client over an
// in-memory listener: HTTP parsing and writing on both sides included.
func BenchmarkCacheHitInMemory(b *testing.B) {
	p := benchProxy(b)
	ln := fasthttputil.NewInmemoryListener()
	srv := &fasthttp.Server{Handler: p.Handle, DisableHeaderNamesNormalizing: true, NoDefaultServerHeader: true, NoDefaultContentType: true, NoDefaultDate: true}
	go srv.Serve(ln) //nolint:errcheck
	b.Cleanup(func() { _ = srv.Shutdown() })
	cl := &fasthttp.HostClient{Addr: "shop.example", Dial: func(string) (net.Conn, error) { return ln.Dial() }}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	req.SetRequestURI("http://shop.example/page?id=1")
	if err := cl.Do(req, resp); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchPage)))
	for b.Loop() {
		if err := cl.Do(req, resp); err != nil {
			b.Fatal(err)
		}
	}
	if got := string(resp.Header.Peek(CacheHeader)); got != "HIT" || len(resp.Body()) != len(benchPage) {
		b.Fatalf("last request: %q, %d bytes", got, len(resp.Body()))
	}
}

// BenchmarkPassInMemory is an uncached request (POST) through the proxy to a real upstream on
// loopback, for comparison with the cache-hit numbers.
func BenchmarkPassInMemory(b *testing.B) {
	p := benchProxy(b)
	ln := fasthttputil.NewInmemoryListener()
	srv := &fasthttp.Server{Handler: p.Handle, DisableHeaderNamesNormalizing: true, NoDefaultServerHeader: true, NoDefaultContentType: true}
	go srv.Serve(ln) //nolint:errcheck
	b.Cleanup(func() { _ = srv.Shutdown() })
	cl := &fasthttp.HostClient{Addr: "shop.example", Dial: func(string) (net.Conn, error) { return ln.Dial() }}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	req.SetRequestURI("http://shop.example/page?id=1")
	req.Header.SetMethod(fasthttp.MethodPost)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchPage)))
	for b.Loop() {
		if err := cl.Do(req, resp); err != nil {
			b.Fatal(err)
		}
	}
	if len(resp.Body()) != len(benchPage) {
		b.Fatalf("%d bytes", len(resp.Body()))
	}
}
