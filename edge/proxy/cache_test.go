package proxy

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segedge/segedge/edge/httpcache"
	"github.com/valyala/fasthttp"
)

// clock is a settable test clock.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) Now() time.Time                  { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration)         { c.ns.Add(int64(d)) }
func (c *clock) HTTPDate(d time.Duration) string { return c.Now().Add(d).UTC().Format(http.TimeFormat) }

// origin is a counting upstream whose answer the test sets.
type origin struct {
	srv   *httptest.Server
	hits  atomic.Int64
	mu    sync.Mutex
	reply func(w http.ResponseWriter, r *http.Request)
	last  *http.Request
}

func newOrigin(t *testing.T, reply func(w http.ResponseWriter, r *http.Request)) *origin {
	o := &origin{reply: reply}
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.hits.Add(1)
		o.mu.Lock()
		o.last = r
		f := o.reply
		o.mu.Unlock()
		f(w, r)
	}))
	t.Cleanup(o.srv.Close)
	return o
}

func (o *origin) set(reply func(w http.ResponseWriter, r *http.Request)) {
	o.mu.Lock()
	o.reply = reply
	o.mu.Unlock()
}

func (o *origin) lastRequest() *http.Request {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.last
}

// fixed answers with status, headers and body; Date comes from the test clock.
func fixed(clk *clock, status int, body string, headers ...string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", clk.HTTPDate(0))
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Add(headers[i], headers[i+1])
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

type cachingProxy struct {
	base  string
	cache *httpcache.Cache
	reg   *prometheus.Registry
	clk   *clock
}

func newCachingProxy(t *testing.T, o *origin, clk *clock, cfg Config) *cachingProxy {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := httpcache.New(httpcache.Config{MaxBytes: 64 << 20, Now: clk.Now}, reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Upstream = o.srv.URL
	cfg.Cache = c
	p, err := New(cfg, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &cachingProxy{base: serveProxy(t, p), cache: c, reg: reg, clk: clk}
}

type answer struct {
	status int
	cache  string
	age    string
	body   string
	header http.Header
}

func (cp *cachingProxy) do(t *testing.T, method, path string, headers ...string) answer {
	t.Helper()
	req, _ := http.NewRequest(method, cp.base+path, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header.Get(CacheHeader), resp.Header.Get("Age"), string(b), resp.Header}
}

func (cp *cachingProxy) get(t *testing.T, path string, headers ...string) answer {
	t.Helper()
	return cp.do(t, "GET", path, headers...)
}

// step is one request in a scenario: advance the clock, optionally change the upstream, send,
// and check how the cache answered and how many requests the upstream has seen in total.
type step struct {
	advance  time.Duration
	reply    func(*clock) func(http.ResponseWriter, *http.Request)
	method   string
	headers  []string
	want     string // Segedge-Cache
	wantBody string
	wantCode int
	hits     int64 // upstream requests so far
	wantAge  string
}

func runSteps(t *testing.T, first func(*clock) func(http.ResponseWriter, *http.Request), steps []step) {
	t.Helper()
	clk := newClock()
	o := newOrigin(t, first(clk))
	cp := newCachingProxy(t, o, clk, Config{})
	for i, s := range steps {
		clk.Advance(s.advance)
		if s.reply != nil {
			o.set(s.reply(clk))
		}
		m := s.method
		if m == "" {
			m = "GET"
		}
		a := cp.do(t, m, "/page", s.headers...)
		if a.cache != s.want {
			t.Errorf("step %d: Segedge-Cache %q, want %q", i, a.cache, s.want)
		}
		if s.wantBody != "" && a.body != s.wantBody {
			t.Errorf("step %d: body %q, want %q", i, a.body, s.wantBody)
		}
		if code := max(s.wantCode, 200); s.wantCode != 0 && a.status != code || s.wantCode == 0 && a.status != 200 {
			t.Errorf("step %d: status %d, want %d", i, a.status, max(s.wantCode, 200))
		}
		if s.wantAge != "" && a.age != s.wantAge {
			t.Errorf("step %d: Age %q, want %q", i, a.age, s.wantAge)
		}
		// A background refresh may still be running: wait for it before counting.
		waitFor(t, func() bool { return o.hits.Load() == s.hits })
		if got := o.hits.Load(); got != s.hits {
			t.Errorf("step %d: upstream saw %d requests, want %d", i, got, s.hits)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if cond() {
			return
		}
	}
}

func reply(status int, body string, headers ...string) func(*clock) func(http.ResponseWriter, *http.Request) {
	return func(clk *clock) func(http.ResponseWriter, *http.Request) { return fixed(clk, status, body, headers...) }
}

func TestMaxAge(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "max-age=60"), []step{
		{want: "MISS", wantBody: "v1", hits: 1, wantAge: "0"},
		{advance: 30 * time.Second, want: "HIT", wantBody: "v1", hits: 1, wantAge: "30"},
		{advance: 31 * time.Second, reply: reply(200, "v2", "Cache-Control", "max-age=60"), want: "MISS", wantBody: "v2", hits: 2},
	})
}

func TestSMaxAgeWinsForASharedCache(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "max-age=5, s-maxage=100"), []step{
		{want: "MISS", hits: 1},
		{advance: 50 * time.Second, want: "HIT", hits: 1},
		{advance: 51 * time.Second, want: "MISS", hits: 2},
	})
}

func TestNoStoreIsNotStored(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "no-store, max-age=60"), []step{
		{want: "PASS", wantBody: "v1", hits: 1},
		{want: "PASS", wantBody: "v1", hits: 2},
	})
}

func TestPrivateIsNotStored(t *testing.T) {
	runSteps(t, reply(200, "mine", "Cache-Control", "private, max-age=60"), []step{
		{want: "PASS", hits: 1},
		{want: "PASS", hits: 2},
	})
}

func TestNoCacheIsStoredButAlwaysRevalidated(t *testing.T) {
	notModified := func(clk *clock) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("If-None-Match") != `"a"` {
				fixed(clk, 200, "unexpected", "Cache-Control", "no-cache", "ETag", `"a"`)(w, r)
				return
			}
			fixed(clk, 304, "", "Cache-Control", "no-cache", "ETag", `"a"`)(w, r)
		}
	}
	runSteps(t, reply(200, "v1", "Cache-Control", "no-cache", "ETag", `"a"`), []step{
		{want: "MISS", wantBody: "v1", hits: 1},
		{reply: notModified, want: "REVALIDATED", wantBody: "v1", hits: 2},
		{want: "REVALIDATED", wantBody: "v1", hits: 3},
	})
}

func TestMustRevalidateForbidsServingStale(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "max-age=10, must-revalidate, stale-if-error=600, stale-while-revalidate=600", "ETag", `"a"`), []step{
		{want: "MISS", hits: 1},
		{advance: 20 * time.Second, reply: reply(503, "down"), want: "PASS", wantCode: 503, wantBody: "down", hits: 2},
	})
}

func TestPublicAllowsStoringAuthorizedRequests(t *testing.T) {
	tests := []struct {
		name, cc string
		want     []string
	}{
		{"without public an authorized response is not stored", "max-age=60", []string{"PASS", "PASS"}},
		{"public", "public, max-age=60", []string{"MISS", "HIT"}},
		{"s-maxage", "s-maxage=60", []string{"MISS", "HIT"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			auth := []string{"Authorization", "Bearer x"}
			runSteps(t, reply(200, "v1", "Cache-Control", tt.cc), []step{
				{headers: auth, want: tt.want[0], hits: 1},
				{headers: auth, want: tt.want[1], hits: map[string]int64{"PASS": 2, "HIT": 1}[tt.want[1]]},
			})
		})
	}
}

func TestExpiresAndDate(t *testing.T) {
	expires := func(clk *clock) func(http.ResponseWriter, *http.Request) {
		return fixed(clk, 200, "v1", "Expires", clk.HTTPDate(120*time.Second))
	}
	runSteps(t, expires, []step{
		{want: "MISS", hits: 1},
		{advance: 119 * time.Second, want: "HIT", hits: 1, wantAge: "119"},
		// Expired; the same (now past) Expires again is not worth storing.
		{advance: 2 * time.Second, want: "PASS", hits: 2},
		{advance: DefaultUncacheableTTL, reply: expires, want: "MISS", hits: 3},
		{want: "HIT", hits: 3},
	})
}

func TestAgeIncludesTheUpstreamsAge(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "max-age=100", "Age", "40"), []step{
		{want: "MISS", hits: 1, wantAge: "40"},
		{advance: 10 * time.Second, want: "HIT", hits: 1, wantAge: "50"},
		{advance: 51 * time.Second, want: "MISS", hits: 2},
	})
}

func TestVary(t *testing.T) {
	byLang := func(clk *clock) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			fixed(clk, 200, "lang="+r.Header.Get("Accept-Language"), "Cache-Control", "max-age=60", "Vary", "Accept-Language")(w, r)
		}
	}
	de, en := []string{"Accept-Language", "de"}, []string{"Accept-Language", "en"}
	runSteps(t, byLang, []step{
		{headers: de, want: "MISS", wantBody: "lang=de", hits: 1},
		{headers: en, want: "MISS", wantBody: "lang=en", hits: 2},
		{headers: de, want: "HIT", wantBody: "lang=de", hits: 2},
		{headers: en, want: "HIT", wantBody: "lang=en", hits: 2},
	})
}

func TestVaryStarIsNotStored(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "max-age=60", "Vary", "*"), []step{
		{want: "PASS", hits: 1},
		{want: "PASS", hits: 2},
	})
}

func TestRequestNoCacheGoesToTheUpstream(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "max-age=60"), []step{
		{want: "MISS", hits: 1},
		{headers: []string{"Cache-Control", "no-cache"}, reply: reply(200, "v2", "Cache-Control", "max-age=60"), want: "MISS", wantBody: "v2", hits: 2},
		{want: "HIT", wantBody: "v2", hits: 2},
	})
}

func TestRequestNoStoreBypassesTheCache(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "max-age=60"), []step{
		{headers: []string{"Cache-Control", "no-store"}, want: "PASS", hits: 1},
		{want: "MISS", hits: 2},
		{headers: []string{"Cache-Control", "no-store"}, want: "PASS", hits: 3},
	})
}

func TestOnlyGetAndHeadAreCached(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "max-age=60"), []step{
		{method: "POST", want: "", hits: 1},
		{method: "PUT", want: "", hits: 2},
		{method: "HEAD", want: "PASS", hits: 3},
		{method: "GET", want: "MISS", hits: 4},
		{method: "HEAD", want: "HIT", hits: 4},
		{method: "POST", want: "", hits: 5},
	})
}

func TestETagRevalidationRefreshesTheEntry(t *testing.T) {
	var sawINM atomic.Value
	revalidate := func(clk *clock) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			sawINM.Store(r.Header.Get("If-None-Match"))
			if r.Header.Get("If-None-Match") == `"v1"` {
				fixed(clk, 304, "", "Cache-Control", "max-age=60", "ETag", `"v1"`, "X-Refreshed", "yes")(w, r)
				return
			}
			fixed(clk, 200, "changed", "Cache-Control", "max-age=60", "ETag", `"v2"`)(w, r)
		}
	}
	clk := newClock()
	o := newOrigin(t, fixed(clk, 200, "v1 body", "Cache-Control", "max-age=60", "ETag", `"v1"`, "X-Refreshed", "no"))
	cp := newCachingProxy(t, o, clk, Config{})
	if a := cp.get(t, "/page"); a.cache != "MISS" {
		t.Fatalf("first request %q", a.cache)
	}
	clk.Advance(61 * time.Second)
	o.set(revalidate(clk))
	a := cp.get(t, "/page")
	if a.cache != "REVALIDATED" || a.body != "v1 body" || a.header.Get("X-Refreshed") != "yes" {
		t.Errorf("after 304: %s %q X-Refreshed=%q; want REVALIDATED, the stored body and the 304's headers", a.cache, a.body, a.header.Get("X-Refreshed"))
	}
	if got := sawINM.Load(); got != `"v1"` {
		t.Errorf("upstream got If-None-Match %q", got)
	}
	clk.Advance(30 * time.Second)
	if a := cp.get(t, "/page"); a.cache != "HIT" || a.header.Get("X-Refreshed") != "yes" || a.age != "30" {
		t.Errorf("the 304 did not refresh freshness/headers: %s X-Refreshed=%q Age=%s", a.cache, a.header.Get("X-Refreshed"), a.age)
	}
	if o.hits.Load() != 2 {
		t.Errorf("upstream saw %d requests, want 2", o.hits.Load())
	}
}

func TestLastModifiedRevalidation(t *testing.T) {
	clk := newClock()
	lm := clk.HTTPDate(-time.Hour)
	o := newOrigin(t, fixed(clk, 200, "body", "Cache-Control", "max-age=10", "Last-Modified", lm))
	cp := newCachingProxy(t, o, clk, Config{})
	cp.get(t, "/page")
	clk.Advance(11 * time.Second)
	o.set(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("If-Modified-Since") == lm {
			fixed(clk, 304, "", "Cache-Control", "max-age=10")(w, r)
			return
		}
		fixed(clk, 200, "wrong", "Cache-Control", "max-age=10")(w, r)
	})
	if a := cp.get(t, "/page"); a.cache != "REVALIDATED" || a.body != "body" {
		t.Errorf("got %s %q, want REVALIDATED with the stored body", a.cache, a.body)
	}
}

func TestStaleWhileRevalidate(t *testing.T) {
	var slowRefresh = make(chan struct{})
	refreshing := func(clk *clock) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			<-slowRefresh // every stale request arrives while the one refresh is in flight
			fixed(clk, 200, "v2", "Cache-Control", "max-age=10, stale-while-revalidate=30")(w, r)
		}
	}
	clk := newClock()
	o := newOrigin(t, fixed(clk, 200, "v1", "Cache-Control", "max-age=10, stale-while-revalidate=30"))
	cp := newCachingProxy(t, o, clk, Config{})
	cp.get(t, "/page")
	clk.Advance(15 * time.Second)
	o.set(refreshing(clk))
	for range 5 {
		if a := cp.get(t, "/page"); a.cache != "STALE" || a.body != "v1" {
			t.Errorf("within stale-while-revalidate: %s %q, want STALE v1", a.cache, a.body)
		}
	}
	close(slowRefresh)
	waitFor(t, func() bool { return cp.get(t, "/page").body == "v2" })
	if a := cp.get(t, "/page"); a.cache != "HIT" || a.body != "v2" {
		t.Errorf("after the refresh: %s %q, want HIT v2", a.cache, a.body)
	}
	if n := o.hits.Load(); n != 2 {
		t.Errorf("upstream saw %d requests, want 2 (one fill, ONE background refresh)", n)
	}
	// Past the window, the stale entry is not served.
	clk.Advance(10*time.Second + 31*time.Second)
	o.set(fixed(clk, 200, "v3", "Cache-Control", "max-age=10"))
	if a := cp.get(t, "/page"); a.cache != "MISS" || a.body != "v3" {
		t.Errorf("past stale-while-revalidate: %s %q, want MISS v3", a.cache, a.body)
	}
}

func TestStaleIfError(t *testing.T) {
	cc := "max-age=10, stale-if-error=60"
	runSteps(t, reply(200, "v1", "Cache-Control", cc), []step{
		{want: "MISS", hits: 1},
		{advance: 20 * time.Second, reply: reply(500, "boom"), want: "STALE", wantBody: "v1", hits: 2},
		{reply: reply(503, "busy"), want: "STALE", wantBody: "v1", hits: 3},
		{advance: 60 * time.Second, want: "PASS", wantCode: 503, wantBody: "busy", hits: 4},
	})
}

func TestStaleIfErrorWhenTheUpstreamIsDown(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, fixed(clk, 200, "v1", "Cache-Control", "max-age=10, stale-if-error=60"))
	cp := newCachingProxy(t, o, clk, Config{})
	cp.get(t, "/page")
	o.srv.CloseClientConnections()
	o.srv.Listener.Close()
	clk.Advance(20 * time.Second)
	if a := cp.get(t, "/page"); a.cache != "STALE" || a.body != "v1" {
		t.Errorf("upstream down within stale-if-error: %d %s %q, want STALE v1", a.status, a.cache, a.body)
	}
	clk.Advance(60 * time.Second)
	if a := cp.get(t, "/page"); a.status != 502 {
		t.Errorf("upstream down past stale-if-error: %d %s, want 502", a.status, a.cache)
	}
}

func TestConcurrentMissesAreCoalesced(t *testing.T) {
	clk := newClock()
	release := make(chan struct{})
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		<-release
		fixed(clk, 200, "shared", "Cache-Control", "max-age=60")(w, r)
	})
	cp := newCachingProxy(t, o, clk, Config{})
	const n = 100
	var wg sync.WaitGroup
	results := make(chan answer, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- cp.get(t, "/page")
		}()
	}
	// Let all 100 requests reach the proxy and queue behind the one upstream request.
	waitFor(t, func() bool { return o.hits.Load() > 0 })
	time.Sleep(200 * time.Millisecond)
	close(release)
	wg.Wait()
	close(results)
	count := map[string]int{}
	for a := range results {
		if a.body != "shared" {
			t.Errorf("body %q", a.body)
		}
		count[a.cache]++
	}
	if got := o.hits.Load(); got != 1 {
		t.Errorf("upstream saw %d requests for 100 concurrent misses, want 1", got)
	}
	if count["MISS"] != 1 || count["HIT"] != n-1 {
		t.Errorf("results %v, want 1 MISS and %d HIT", count, n-1)
	}
}

func TestSetCookieResponsesAreNotStored(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "max-age=60", "Set-Cookie", "session=abc"), []step{
		{want: "PASS", hits: 1},
		{want: "PASS", hits: 2},
	})
}

func TestPurges(t *testing.T) {
	tests := []struct {
		name   string
		purge  func(c *httpcache.Cache)
		purged []string
		kept   []string
		kind   string
	}{
		{"exact URL (any host)", func(c *httpcache.Cache) { c.PurgeURL("/blog/a?x=1") }, []string{"/blog/a?x=1"}, []string{"/blog/a", "/blog/b", "/shop"}, "url"},
		{"prefix", func(c *httpcache.Cache) { c.PurgePrefix("/blog/") }, []string{"/blog/a?x=1", "/blog/a", "/blog/b"}, []string{"/shop"}, "prefix"},
		{"Surrogate-Key", func(c *httpcache.Cache) { c.PurgeTag("post-b") }, []string{"/blog/b"}, []string{"/blog/a", "/shop"}, "tag"},
		{"Cache-Tag", func(c *httpcache.Cache) { c.PurgeTag("products") }, []string{"/shop"}, []string{"/blog/a", "/blog/b"}, "tag"},
		{"fragment purges its pages", func(c *httpcache.Cache) {
			c.AddDependency("/shop", "/fragments/hero")
			c.AddDependency("/blog/b", "/shop") // and transitively
			c.PurgeURL("/fragments/hero")
		}, []string{"/fragments/hero", "/shop", "/blog/b"}, []string{"/blog/a"}, "dependency"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
				h := []string{"Cache-Control", "max-age=600"}
				switch {
				case strings.HasPrefix(r.URL.Path, "/blog/b"):
					h = append(h, "Surrogate-Key", "blog post-b")
				case strings.HasPrefix(r.URL.Path, "/blog/"):
					h = append(h, "Surrogate-Key", "blog post-a")
				case r.URL.Path == "/shop":
					h = append(h, "Cache-Tag", "shop, products")
				}
				fixed(clk, 200, r.URL.String(), h...)(w, r)
			})
			cp := newCachingProxy(t, o, clk, Config{})
			all := append(append([]string{}, tt.purged...), tt.kept...)
			for _, p := range all {
				cp.get(t, p)
			}
			tt.purge(cp.cache)
			for _, p := range tt.purged {
				if a := cp.get(t, p); a.cache != "MISS" {
					t.Errorf("%s after purge: %s, want MISS", p, a.cache)
				}
			}
			for _, p := range tt.kept {
				if a := cp.get(t, p); a.cache != "HIT" {
					t.Errorf("%s should have survived the purge: %s", p, a.cache)
				}
			}
			if n := testutil.ToFloat64(counter(t, cp.reg, "segedge_edge_cache_purges_total", "kind", tt.kind)); n < 1 {
				t.Errorf("purges_total{kind=%q} = %v", tt.kind, n)
			}
		})
	}
}

func TestCacheFillAndRenderHooks(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, fixed(clk, 200, "<p>page</p>", "Cache-Control", "max-age=60", "Content-Type", "text/html"))
	var fills atomic.Int64
	cp := newCachingProxy(t, o, clk, Config{
		OnCacheFill: func(e *httpcache.Entry) {
			if e.URI != "/page" && e.URI != "/page?raw=1" {
				t.Errorf("OnCacheFill got URI %q", e.URI)
			}
			fills.Add(1)
			e.Compiled = strings.ToUpper(string(e.Body))
		},
		Render: func(ctx *fasthttp.RequestCtx, e *httpcache.Entry) bool {
			if string(ctx.QueryArgs().Peek("raw")) == "1" {
				return false
			}
			fmt.Fprintf(ctx, "%s for %s", e.Compiled, ctx.Request.Header.Peek("X-User"))
			return true
		},
	})
	for _, user := range []string{"ann", "bob", "cy"} {
		if a := cp.get(t, "/page", "X-User", user); a.body != "<P>PAGE</P> for "+user {
			t.Errorf("rendered %q", a.body)
		}
	}
	if a := cp.get(t, "/page?raw=1"); a.body != "<p>page</p>" {
		t.Errorf("Render returning false must send the stored body, got %q", a.body)
	}
	if fills.Load() != 2 { // "/page" and "/page?raw=1"
		t.Errorf("OnCacheFill ran %d times, want once per stored response (2)", fills.Load())
	}
}

func TestClientConditionalAnsweredFromCache(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "max-age=60", "ETag", `"e1"`), []step{
		{want: "MISS", hits: 1},
		{headers: []string{"If-None-Match", `"e0", W/"e1"`}, want: "HIT", wantCode: 304, hits: 1},
		{headers: []string{"If-None-Match", `"e0"`}, want: "HIT", wantBody: "v1", hits: 1},
	})
}

func TestHeadFromCacheHasNoBody(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, fixed(clk, 200, "0123456789", "Cache-Control", "max-age=60"))
	cp := newCachingProxy(t, o, clk, Config{})
	cp.get(t, "/page")
	raw := rawRequest(t, cp.base, "HEAD /page HTTP/1.1\r\nHost: "+strings.TrimPrefix(cp.base, "http://")+"\r\nConnection: close\r\n\r\n")
	head, rest, _ := strings.Cut(raw, "\r\n\r\n")
	if !strings.Contains(head, "Segedge-Cache: HIT") || !strings.Contains(head, "Content-Length: 10") || rest != "" {
		t.Errorf("HEAD from cache:\n%s\nbody %q", head, rest)
	}
}

func TestLargeResponsesAreStreamedNotStored(t *testing.T) {
	body := strings.Repeat("x", 3000)
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprint("chunked=", chunked), func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "max-age=60")
				if !chunked {
					w.Header().Set("Content-Length", fmt.Sprint(len(body)))
				}
				io.WriteString(w, body[:1000])
				w.(http.Flusher).Flush()
				io.WriteString(w, body[1000:])
			})
			cp := newCachingProxy(t, o, clk, Config{MaxCacheableBodySize: 1024})
			for range 2 {
				if a := cp.get(t, "/big"); a.cache != "PASS" || a.body != body {
					t.Errorf("%s, %d bytes; want PASS and the whole body", a.cache, len(a.body))
				}
			}
			if o.hits.Load() != 2 {
				t.Errorf("upstream saw %d requests, want 2", o.hits.Load())
			}
		})
	}
}

func TestCacheMetrics(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, fixed(clk, 200, strings.Repeat("b", 1000), "Cache-Control", "max-age=60"))
	cp := newCachingProxy(t, o, clk, Config{})
	cp.get(t, "/a")
	cp.get(t, "/a")
	cp.get(t, "/b")
	if v := testutil.ToFloat64(counter(t, cp.reg, "segedge_edge_cache_requests_total", "result", "HIT")); v != 1 {
		t.Errorf("HIT count %v", v)
	}
	if v := testutil.ToFloat64(counter(t, cp.reg, "segedge_edge_cache_requests_total", "result", "MISS")); v != 2 {
		t.Errorf("MISS count %v", v)
	}
	waitFor(t, func() bool { return gauge(t, cp.reg, "segedge_edge_cache_entries") == 2 })
	if v := gauge(t, cp.reg, "segedge_edge_cache_entries"); v != 2 {
		t.Errorf("entries %v, want 2", v)
	}
	if v := gauge(t, cp.reg, "segedge_edge_cache_bytes"); v < 2000 {
		t.Errorf("bytes %v, want at least the two bodies", v)
	}
}

// counter finds one labelled series in reg.
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) prometheus.Collector {
	t.Helper()
	return collectorFunc(func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == label && l.GetValue() == value {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
		return 0
	})
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// collectorFunc turns a value into a one-series gauge collector for testutil.ToFloat64.
func collectorFunc(f func() float64) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "probe", Help: "test probe"}, f)
}

func TestUnsafeMethodInvalidatesTheURI(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "max-age=60"), []step{
		{want: "MISS", hits: 1},
		{want: "HIT", hits: 1},
		{method: "POST", want: "", hits: 2},
		{want: "MISS", hits: 3},
	})
}

func TestRevalidationAnsweredWithAnUnstorableResponseDropsTheEntry(t *testing.T) {
	runSteps(t, reply(200, "v1", "Cache-Control", "max-age=10"), []step{
		{want: "MISS", hits: 1},
		{advance: 11 * time.Second, reply: reply(200, "v2", "Cache-Control", "private"), want: "PASS", wantBody: "v2", hits: 2},
		// Remembered as uncacheable for UncacheableTTL: passed straight on.
		{reply: reply(200, "v3", "Cache-Control", "max-age=10"), want: "PASS", wantBody: "v3", hits: 3},
		{advance: DefaultUncacheableTTL, want: "MISS", wantBody: "v3", hits: 4},
		{want: "HIT", wantBody: "v3", hits: 4},
	})
}

func TestUncacheableURLsAreNotCoalesced(t *testing.T) {
	clk := newClock()
	var inFlight, maxInFlight atomic.Int64
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := maxInFlight.Load()
			if n <= m || maxInFlight.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
		fixed(clk, 200, "dynamic", "Cache-Control", "private")(w, r)
	})
	cp := newCachingProxy(t, o, clk, Config{})
	if a := cp.get(t, "/cart"); a.cache != "PASS" {
		t.Fatalf("first: %s", a.cache)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if a := cp.get(t, "/cart"); a.cache != "PASS" || a.body != "dynamic" {
				t.Errorf("%s %q", a.cache, a.body)
			}
		}()
	}
	wg.Wait()
	if maxInFlight.Load() < 2 {
		t.Errorf("requests for a known-uncacheable URL were queued one by one (max %d in flight)", maxInFlight.Load())
	}
}

func TestCachedRequestsKeepTheQueryExactly(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, fixed(clk, 200, "q", "Cache-Control", "max-age=60"))
	cp := newCachingProxy(t, o, clk, Config{})
	uri := "/s?q=a+b&q=%2Fc&empty=&flag&z=%E2%9C%93"
	cp.get(t, uri)
	if got := o.lastRequest().RequestURI; got != uri {
		t.Errorf("upstream got %q, want %q", got, uri)
	}
	if a := cp.get(t, "/s?q=a+b&q=%2Fc&empty=&flag&z=%e2%9c%93"); a.cache != "MISS" {
		t.Errorf("a differently spelled query is a different key, got %s", a.cache)
	}
}

func TestCachedResponsesCarryADate(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, fixed(clk, 200, "v1", "Cache-Control", "max-age=60"))
	cp := newCachingProxy(t, o, clk, Config{})
	for _, result := range []string{"MISS", "HIT"} {
		a := cp.get(t, "/page")
		if _, err := http.ParseTime(a.header.Get("Date")); a.cache != result || err != nil || len(a.header["Date"]) != 1 {
			t.Errorf("%s: Date %q, want exactly one, the edge's", a.cache, a.header["Date"])
		}
	}
}

func TestCoalescedRequestsGetTheirOwnVaryVariant(t *testing.T) {
	clk := newClock()
	release := make(chan struct{})
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		<-release
		fixed(clk, 200, "lang="+r.Header.Get("Accept-Language"), "Cache-Control", "max-age=60", "Vary", "Accept-Language")(w, r)
	})
	cp := newCachingProxy(t, o, clk, Config{})
	var wg sync.WaitGroup
	for i := range 20 {
		lang := []string{"de", "en"}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if a := cp.get(t, "/page", "Accept-Language", lang); a.body != "lang="+lang {
				t.Errorf("asked for %s, got %q (%s)", lang, a.body, a.cache)
			}
		}()
	}
	waitFor(t, func() bool { return o.hits.Load() > 0 })
	time.Sleep(100 * time.Millisecond)
	close(release)
	wg.Wait()
	for _, lang := range []string{"de", "en"} {
		if a := cp.get(t, "/page", "Accept-Language", lang); a.cache != "HIT" || a.body != "lang="+lang {
			t.Errorf("%s afterwards: %s %q, want a HIT of its own variant", lang, a.cache, a.body)
		}
	}
}

func TestPassedResponsesKeepTheirCookies(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Set-Cookie"] = []string{"a=1", "b=2"}
		fixed(clk, 200, "v1", "Cache-Control", "max-age=60")(w, r)
	})
	cp := newCachingProxy(t, o, clk, Config{})
	a := cp.get(t, "/page")
	if c := a.header["Set-Cookie"]; a.cache != "PASS" || len(c) != 2 || c[0] != "a=1" || c[1] != "b=2" {
		t.Errorf("%s with Set-Cookie %q; want PASS with both cookies", a.cache, c)
	}
}
