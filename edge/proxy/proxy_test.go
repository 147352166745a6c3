package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segedge/segedge/edge/httpcache"
	"github.com/valyala/fasthttp"
)

// serveProxy runs p on a real fasthttp server on 127.0.0.1:0 and returns its base URL.
func serveProxy(t testing.TB, p *Proxy) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{
		Handler:                       p.Handle,
		DisableHeaderNamesNormalizing: true,
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		NoDefaultDate:                 true,
		StreamRequestBody:             true,
		MaxRequestBodySize:            64 << 20,
	}
	go srv.Serve(ln) //nolint:errcheck // ends with Shutdown
	t.Cleanup(func() { _ = srv.Shutdown(); p.Close() })
	return "http://" + ln.Addr().String()
}

// newProxy builds a proxy in front of upstream with a fresh registry.
func newProxy(t testing.TB, cfg Config) (*Proxy, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	p, err := New(cfg, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p, reg
}

// rawRequest sends req verbatim over TCP and returns the raw response (headers and body), read
// until the server closes the connection (req should say Connection: close).
func rawRequest(t *testing.T, base, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var client = &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 10 * time.Second}

func TestHeadersAndBodyPassedByteForByte(t *testing.T) {
	body := make([]byte, 70_000)
	for i := range body {
		body[i] = byte(i * 7)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Set-Cookie"] = []string{"a=1; Path=/", "b=2; HttpOnly", "c=3"}
		h["X-Multi"] = []string{"one", "two"}
		h.Set("Content-Type", "application/octet-stream")
		h.Set("ETag", `"v1"`)
		h.Set("Date", "Mon, 02 Jan 2006 15:04:05 GMT")
		w.WriteHeader(http.StatusCreated)
		w.Write(body)
	}))
	defer up.Close()
	p, _ := newProxy(t, Config{Upstream: up.URL})
	base := serveProxy(t, p)

	resp, err := client.Get(base + "/x")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Errorf("status %d, want 201", resp.StatusCode)
	}
	if !bytes.Equal(got, body) {
		t.Errorf("body differs: %d bytes, want %d", len(got), len(body))
	}
	if c := resp.Header["Set-Cookie"]; len(c) != 3 || c[0] != "a=1; Path=/" || c[1] != "b=2; HttpOnly" || c[2] != "c=3" {
		t.Errorf("Set-Cookie = %q", c)
	}
	if v := resp.Header["X-Multi"]; len(v) != 2 || v[0] != "one" || v[1] != "two" {
		t.Errorf("X-Multi = %q", v)
	}
	if d, err := http.ParseTime(resp.Header.Get("Date")); err != nil || time.Since(d) > time.Minute {
		t.Errorf("Date = %q, want the edge's own (as nginx sends)", resp.Header.Get("Date"))
	}
	if v := resp.Header.Get("ETag"); v != `"v1"` {
		t.Errorf("ETag = %q", v)
	}
}

func TestHopByHopHeadersStrippedBothWays(t *testing.T) {
	seen := make(chan http.Header, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		h := w.Header()
		h.Set("Connection", "X-Resp-Hop")
		h.Set("X-Resp-Hop", "secret")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Authenticate", "Basic")
		h.Set("Upgrade", "h2c")
		h.Set("X-End-To-End", "kept")
		w.Write([]byte("ok"))
	}))
	defer up.Close()
	p, _ := newProxy(t, Config{Upstream: up.URL})
	base := serveProxy(t, p)

	raw := rawRequest(t, base, "GET /h HTTP/1.1\r\nHost: shop.example\r\n"+
		"Connection: close, X-Req-Hop\r\nX-Req-Hop: 1\r\nKeep-Alive: 300\r\nProxy-Authorization: Basic Zm9v\r\n"+
		"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: websocket\r\nX-Kept: yes\r\n\r\n")
	got := <-seen
	for _, h := range []string{"X-Req-Hop", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "Te", "Trailer", "Upgrade"} {
		if v, ok := got[h]; ok {
			t.Errorf("upstream got hop-by-hop request header %s: %q", h, v)
		}
	}
	if got.Get("X-Kept") != "yes" {
		t.Errorf("end-to-end request header X-Kept lost: %v", got)
	}
	head, _, _ := strings.Cut(raw, "\r\n\r\n")
	lower := strings.ToLower(head)
	for _, h := range []string{"x-resp-hop", "keep-alive", "proxy-authenticate", "upgrade"} {
		if strings.Contains(lower, "\n"+h+":") {
			t.Errorf("client got hop-by-hop response header %s:\n%s", h, head)
		}
	}
	if !strings.Contains(head, "X-End-To-End: kept") {
		t.Errorf("end-to-end response header lost:\n%s", head)
	}
}

func TestForwardedHeaders(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		reqHeaders map[string]string
		wantXFF    string
		wantHost   string
		wantVia    string
	}{
		{name: "first hop sets X-Forwarded-For to the client", wantXFF: "127.0.0.1", wantHost: "shop.example"},
		{name: "X-Forwarded-For is appended to", reqHeaders: map[string]string{"X-Forwarded-For": "203.0.113.9"},
			wantXFF: "203.0.113.9, 127.0.0.1", wantHost: "shop.example"},
		{name: "RewriteHost sends the upstream's host", cfg: Config{RewriteHost: true}, wantXFF: "127.0.0.1", wantHost: "UPSTREAM"},
		{name: "Via is added when configured", cfg: Config{Via: "segedge"}, wantXFF: "127.0.0.1", wantHost: "shop.example", wantVia: "1.1 segedge"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := make(chan *http.Request, 1)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen <- r }))
			defer up.Close()
			cfg := tt.cfg
			cfg.Upstream = up.URL
			p, _ := newProxy(t, cfg)
			base := serveProxy(t, p)
			req, _ := http.NewRequest("GET", base+"/", nil)
			req.Host = "shop.example"
			for k, v := range tt.reqHeaders {
				req.Header.Set(k, v)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			r := <-seen
			if got := r.Header.Get("X-Forwarded-For"); got != tt.wantXFF {
				t.Errorf("X-Forwarded-For = %q, want %q", got, tt.wantXFF)
			}
			want := tt.wantHost
			if want == "UPSTREAM" {
				want = strings.TrimPrefix(up.URL, "http://")
			}
			if r.Host != want {
				t.Errorf("Host = %q, want %q", r.Host, want)
			}
			if got := r.Header.Get("X-Forwarded-Host"); got != "shop.example" {
				t.Errorf("X-Forwarded-Host = %q, want the client's Host", got)
			}
			if got := r.Header.Get("X-Forwarded-Proto"); got != "http" {
				t.Errorf("X-Forwarded-Proto = %q", got)
			}
			if got := r.Header.Get("Via"); got != tt.wantVia {
				t.Errorf("Via to upstream = %q, want %q", got, tt.wantVia)
			}
			if got := resp.Header.Get("Via"); got != tt.wantVia {
				t.Errorf("Via to client = %q, want %q", got, tt.wantVia)
			}
		})
	}
}

func TestUpstreamsChosenByHost(t *testing.T) {
	mk := func(name string) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) }))
	}
	a, b := mk("default"), mk("blog")
	defer a.Close()
	defer b.Close()
	p, _ := newProxy(t, Config{Upstream: a.URL, Upstreams: map[string]string{"Blog.Example": b.URL}})
	base := serveProxy(t, p)
	for host, want := range map[string]string{"shop.example": "default", "blog.example:8080": "blog", "BLOG.example": "blog"} {
		req, _ := http.NewRequest("GET", base+"/", nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(got) != want {
			t.Errorf("Host %s went to %q, want %q", host, got, want)
		}
	}
}

func TestUpstreamDownIs502AndTimeoutIs504(t *testing.T) {
	// A port nobody listens on: bind one and close it.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String()
	ln.Close()
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()

	tests := []struct {
		name       string
		upstream   string
		wantStatus int
		wantReason string
	}{
		{"refused connection", dead, 502, "connect"},
		{"no answer within ReadTimeout", slow.URL, 504, "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, reg := newProxy(t, Config{Upstream: tt.upstream, ReadTimeout: 200 * time.Millisecond})
			base := serveProxy(t, p)
			resp, err := client.Get(base + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			if len(body) == 0 || len(body) > 100 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
				t.Errorf("want a short plain body, got %q (%s)", body, resp.Header.Get("Content-Type"))
			}
			if n := testutil.ToFloat64(p.m.errors.WithLabelValues(tt.wantReason)); n != 1 {
				t.Errorf("segedge_edge_upstream_errors_total{reason=%q} = %v, want 1", tt.wantReason, n)
			}
			if n, _ := testutil.GatherAndCount(reg, "segedge_edge_upstream_request_duration_seconds"); n != 1 {
				t.Errorf("duration histogram series = %d, want 1", n)
			}
		})
	}
}

func TestLargeBodyIsStreamed(t *testing.T) {
	tests := []struct {
		name          string
		cached        bool
		contentLength bool
		cacheControl  string
		maxGrowth     int64
	}{
		{name: "plain proxy", contentLength: true, maxGrowth: 8 << 20},
		{name: "caching proxy, cacheable but over the size limit", cached: true, contentLength: true, cacheControl: "max-age=60", maxGrowth: 8 << 20},
		{name: "caching proxy, not cacheable", cached: true, contentLength: true, maxGrowth: 8 << 20},
		// Chunked and cacheable: up to MaxCacheableBodySize (1 MiB here) is read before the
		// proxy knows it is too large, then the rest streams.
		{name: "caching proxy, chunked, cacheable", cached: true, cacheControl: "max-age=60", maxGrowth: 10 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			streamBig(t, tt.cached, tt.contentLength, tt.cacheControl, tt.maxGrowth)
		})
	}
}

func streamBig(t *testing.T, cached, contentLength bool, cacheControl string, maxGrowth int64) {
	const size = 20 << 20
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		if contentLength {
			w.Header().Set("Content-Length", fmt.Sprint(size))
		}
		if cacheControl != "" {
			w.Header().Set("Cache-Control", cacheControl)
		}
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer up.Close()
	cfg := Config{Upstream: up.URL}
	if cached {
		c, err := httpcache.New(httpcache.Config{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Cache, cfg.MaxCacheableBodySize = c, 1<<20
	}
	p, _ := newProxy(t, cfg)
	base := serveProxy(t, p)

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	resp, err := client.Get(base + "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// Read slowly at first, so a buffering proxy would have to hold the whole body meanwhile.
	h := sha256.New()
	peak := before.HeapInuse
	var n int64
	buf := make([]byte, 32<<10)
	for {
		k, err := resp.Body.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if n%(2<<20) < int64(k) {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if n != size {
		t.Fatalf("got %d bytes, want %d", n, size)
	}
	want := sha256.New()
	for sent := 0; sent < size; sent += len(chunk) {
		want.Write(chunk)
	}
	if !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
		t.Error("body differs")
	}
	if grew := int64(peak) - int64(before.HeapInuse); grew > maxGrowth {
		t.Errorf("heap grew by %d MiB while proxying a 20 MiB body: not streamed", grew>>20)
	}
}

func TestHeadRequest(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "12345")
		w.Header().Set("X-Method", r.Method)
	}))
	defer up.Close()
	p, _ := newProxy(t, Config{Upstream: up.URL})
	base := serveProxy(t, p)
	raw := rawRequest(t, base, "HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	head, rest, _ := strings.Cut(raw, "\r\n\r\n")
	if !strings.Contains(head, "X-Method: HEAD") {
		t.Errorf("upstream did not get a HEAD:\n%s", head)
	}
	if !strings.Contains(head, "Content-Length: 12345") {
		t.Errorf("HEAD response lost the upstream's Content-Length:\n%s", head)
	}
	if rest != "" {
		t.Errorf("HEAD response has a body: %q", rest)
	}
}

func TestPostBodyAndQueryPassedExactly(t *testing.T) {
	type seen struct {
		method, uri, ctype string
		body               []byte
	}
	ch := make(chan seen, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		ch <- seen{r.Method, r.RequestURI, r.Header.Get("Content-Type"), b}
		w.Write(b)
	}))
	defer up.Close()
	p, _ := newProxy(t, Config{Upstream: up.URL})
	base := serveProxy(t, p)

	body := bytes.Repeat([]byte("k=v&x=%2F\x00\xff"), 50_000) // 700 KB, binary
	uris := []string{
		"/search?q=a+b&q=%2Fc&empty=&flag&z=%E2%9C%93",
		"/a//b/../c?x=1;y=2",
		"/p%2Fq?a=b%20c+d",
	}
	for _, uri := range uris {
		t.Run(uri, func(t *testing.T) {
			req, _ := http.NewRequest("POST", base+"/", bytes.NewReader(body))
			req.URL.Opaque = strings.SplitN(uri, "?", 2)[0]
			req.URL.RawQuery = strings.TrimPrefix(uri[len(req.URL.Opaque):], "?")
			req.Header.Set("Content-Type", "application/x-thing")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			echo, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			s := <-ch
			if s.method != "POST" || s.ctype != "application/x-thing" {
				t.Errorf("upstream got %s %s", s.method, s.ctype)
			}
			if s.uri != uri {
				t.Errorf("upstream request URI %q, want %q", s.uri, uri)
			}
			if !bytes.Equal(s.body, body) || !bytes.Equal(echo, body) {
				t.Errorf("body changed on the way: upstream got %d bytes, client got %d, sent %d", len(s.body), len(echo), len(body))
			}
		})
	}
}

func TestChunkedUpstreamResponse(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		for i := range 5 {
			fmt.Fprintf(w, "<p>part %d</p>", i)
			w.(http.Flusher).Flush()
		}
	}))
	defer up.Close()
	p, _ := newProxy(t, Config{Upstream: up.URL})
	base := serveProxy(t, p)
	raw := rawRequest(t, base, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	if want := "<p>part 0</p><p>part 1</p><p>part 2</p><p>part 3</p><p>part 4</p>"; string(got) != want {
		t.Errorf("body %q, want %q", got, want)
	}
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("want a chunked response to the client (length unknown), got %v", resp.TransferEncoding)
	}
}

func TestRequestBodyLimit(t *testing.T) {
	hit := make(chan struct{}, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hit <- struct{}{} }))
	defer up.Close()
	p, _ := newProxy(t, Config{Upstream: up.URL, MaxRequestBodySize: 1000})
	base := serveProxy(t, p)
	resp, err := client.Post(base+"/", "text/plain", bytes.NewReader(make([]byte, 1001)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("status %d, want 413", resp.StatusCode)
	}
	select {
	case <-hit:
		t.Error("an oversized request reached the upstream")
	default:
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Upstream: "ftp://x"},
		{Upstream: "http://"},
		{Upstream: "http://x/path"},
		{Upstream: "http://x", Upstreams: map[string]string{"a": "::bad"}},
	} {
		if _, err := New(cfg, nil, nil); err == nil {
			t.Errorf("New(%+v) accepted a bad config", cfg)
		}
	}
}

func TestReadTimeoutIsBetweenReadsNotForTheWholeBody(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "8")
		for range 8 { // 1.2s in all, twice the timeout, but never 600ms without a byte
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
			time.Sleep(150 * time.Millisecond)
		}
	}))
	defer up.Close()
	p, _ := newProxy(t, Config{Upstream: up.URL, ReadTimeout: 600 * time.Millisecond})
	base := serveProxy(t, p)
	resp, err := client.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "xxxxxxxx" {
		t.Errorf("slow but steady body: %q, %v", b, err)
	}
}
