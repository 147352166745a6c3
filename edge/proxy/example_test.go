package proxy_test

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segedge/segedge/edge/httpcache"
	"github.com/segedge/segedge/edge/proxy"
	"github.com/valyala/fasthttp"
)

// A caching edge: the cache, the proxy in front of the site, a fasthttp server, and a purge.
func ExampleNew() {
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=300")
		w.Header().Set("Surrogate-Key", "home")
		io.WriteString(w, "<h1>hello</h1>")
	}))
	defer site.Close()

	reg := prometheus.NewRegistry()
	cache, err := httpcache.New(httpcache.Config{MaxBytes: 512 << 20}, reg)
	if err != nil {
		panic(err)
	}
	px, err := proxy.New(proxy.Config{
		Upstream: site.URL,
		Cache:    cache,
		// The edge parses a page once, when it is stored...
		OnCacheFill: func(e *httpcache.Entry) { e.Compiled = len(e.Body) },
		// ...and writes it per request from what it parsed.
		Render: func(ctx *fasthttp.RequestCtx, e *httpcache.Entry) bool {
			fmt.Fprintf(ctx, "%d bytes, personalized", e.Compiled)
			return true
		},
	}, reg, slog.Default())
	if err != nil {
		panic(err)
	}
	defer px.Close()

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &fasthttp.Server{Handler: px.Handle, NoDefaultServerHeader: true, NoDefaultContentType: true}
	go srv.Serve(ln)
	defer srv.Shutdown()

	get := func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.Header.Get(proxy.CacheHeader), string(body))
	}
	get()
	get()
	cache.PurgeTag("home") // what the edge does with a purge from seg.invalidate
	get()
	// Output:
	// MISS 14 bytes, personalized
	// HIT 14 bytes, personalized
	// MISS 14 bytes, personalized
}
