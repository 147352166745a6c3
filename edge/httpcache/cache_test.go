package httpcache

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segedge/segedge/core/purge"
)

// hdr is a request header for tests.
type hdr map[string]string

func (h hdr) Peek(k string) []byte { return []byte(h[k]) }

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func entry(status int, body string, fields ...string) *Entry {
	var h []Field
	for i := 0; i+1 < len(fields); i += 2 {
		h = append(h, Field{fields[i], fields[i+1]})
	}
	e := NewEntry(status, h, t0, t0)
	e.Body = []byte(body)
	return e
}

func newCache(t testing.TB, max uint64, now func() time.Time) *Cache {
	t.Helper()
	c, err := New(Config{MaxBytes: max, Now: now}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStorable(t *testing.T) {
	tests := []struct {
		name string
		req  hdr
		e    *Entry
		want string // "" = storable
	}{
		{"max-age", hdr{}, entry(200, "", "Cache-Control", "max-age=1"), ""},
		{"no explicit freshness", hdr{}, entry(200, ""), "no freshness"},
		{"no freshness but a validator and no-cache", hdr{}, entry(200, "", "Cache-Control", "no-cache", "ETag", `"x"`), ""},
		{"max-age=0 with a validator", hdr{}, entry(200, "", "Cache-Control", "max-age=0", "Last-Modified", "Sun, 01 Mar 2026 11:00:00 GMT"), ""},
		{"max-age=0 without a validator", hdr{}, entry(200, "", "Cache-Control", "max-age=0"), "no freshness"},
		{"partial content", hdr{}, entry(206, "", "Cache-Control", "max-age=60"), "status"},
		{"server error", hdr{}, entry(500, "", "Cache-Control", "max-age=60"), "status"},
		{"404 with freshness", hdr{}, entry(404, "", "Cache-Control", "max-age=60"), ""},
		{"lower-case request no-store", hdr{"cache-control": "no-store"}, entry(200, "", "Cache-Control", "max-age=60"), "request no-store"},
		{"private", hdr{}, entry(200, "", "Cache-Control", "private, max-age=60"), "private"},
		{"vary star", hdr{}, entry(200, "", "Cache-Control", "max-age=60", "Vary", "Accept, *"), "vary *"},
		{"authorization", hdr{"Authorization": "x"}, entry(200, "", "Cache-Control", "max-age=60"), "authorization"},
		{"authorization and must-revalidate", hdr{"Authorization": "x"}, entry(200, "", "Cache-Control", "max-age=60, must-revalidate"), ""},
		{"set-cookie", hdr{}, entry(200, "", "Cache-Control", "max-age=60", "Set-Cookie", "a=b"), "set-cookie"},
		{"invalid Expires is already expired", hdr{}, entry(200, "", "Expires", "0"), "no freshness"},
	}
	for _, tt := range tests {
		ok, why := Storable(tt.req, tt.e)
		if ok != (tt.want == "") || why != tt.want {
			t.Errorf("%s: Storable = %v %q, want %q", tt.name, ok, why, tt.want)
		}
	}
}

func TestFreshnessAndAge(t *testing.T) {
	date := t0.Add(-10 * time.Second).Format("Mon, 02 Jan 2006 15:04:05 GMT")
	// The response was generated 10s before it arrived and says it was 5s old already: the
	// corrected initial age is max(10, 5 + 0) = 10s.
	e := NewEntry(200, []Field{{"Date", date}, {"Age", "5"}, {"Cache-Control", "max-age=30, stale-while-revalidate=10, stale-if-error=100"}}, t0, t0)
	for _, tt := range []struct {
		after           time.Duration
		age             string
		fresh, swr, sie bool
	}{
		{0, "10", true, true, true},
		{19 * time.Second, "29", true, true, true},
		{20 * time.Second, "30", false, true, true},
		{30 * time.Second, "40", false, false, true},
		{120 * time.Second, "130", false, false, false},
	} {
		now := t0.Add(tt.after)
		if got := e.AgeHeader(now); got != tt.age {
			t.Errorf("+%v: Age %s, want %s", tt.after, got, tt.age)
		}
		if e.Fresh(now) != tt.fresh || e.WithinStaleWhileRevalidate(now) != tt.swr || e.WithinStaleIfError(now) != tt.sie {
			t.Errorf("+%v: fresh/swr/sie = %v/%v/%v, want %v/%v/%v", tt.after, e.Fresh(now), e.WithinStaleWhileRevalidate(now), e.WithinStaleIfError(now), tt.fresh, tt.swr, tt.sie)
		}
	}
}

func TestRefreshedKeepsBodyAndTakesNewHeaders(t *testing.T) {
	e := entry(200, "body", "Content-Type", "text/html", "ETag", `"1"`, "Cache-Control", "max-age=1", "X-A", "old", "Surrogate-Key", "a b")
	e.Compiled = "compiled"
	n := e.Refreshed([]Field{{"Cache-Control", "max-age=100"}, {"X-A", "new"}, {"Content-Type", "text/plain"}, {"Cache-Tag", "c"}}, t0.Add(time.Hour), t0.Add(time.Hour))
	if string(n.Body) != "body" || n.Compiled != "compiled" || n.Get("X-A") != "new" || n.Get("Content-Type") != "text/html" || n.ETag != `"1"` {
		t.Errorf("refreshed entry: %+v", n)
	}
	if !n.Fresh(t0.Add(time.Hour + 50*time.Second)) {
		t.Error("the 304's max-age was not applied")
	}
	if strings.Join(n.Tags, ",") != "a,b,c" {
		t.Errorf("tags %v", n.Tags)
	}
	if e.Get("X-A") != "old" {
		t.Error("Refreshed modified the stored entry")
	}
}

func TestVaryVariants(t *testing.T) {
	c := newCache(t, 1<<20, func() time.Time { return t0 })
	for _, lang := range []string{"de", "en"} {
		e := entry(200, lang, "Cache-Control", "max-age=60", "Vary", "accept-language, Accept-Encoding")
		c.Store("h", "/p", hdr{"Accept-Language": lang, "Accept-Encoding": "gzip"}, e)
	}
	for _, tt := range []struct {
		req  hdr
		want string
	}{
		{hdr{"Accept-Language": "de", "Accept-Encoding": "gzip"}, "de"},
		{hdr{"accept-language": "en", "accept-encoding": "gzip"}, "en"},
		{hdr{"Accept-Language": "de"}, ""},
		{hdr{"Accept-Language": "fr", "Accept-Encoding": "gzip"}, ""},
	} {
		e, st := c.Lookup("h", "/p", tt.req)
		got := ""
		if e != nil {
			got = string(e.Body)
		}
		if got != tt.want || (tt.want == "") != (st == Miss) {
			t.Errorf("Lookup(%v) = %q %v, want %q", tt.req, got, st, tt.want)
		}
	}
}

func TestBoundedByBytes(t *testing.T) {
	c := newCache(t, 1<<20, func() time.Time { return t0 })
	body := strings.Repeat("x", 10<<10)
	for i := range 500 { // 5 MB into a 1 MB cache
		c.Store("h", fmt.Sprintf("/p%d", i), hdr{}, entry(200, body, "Cache-Control", "max-age=60", "Surrogate-Key", fmt.Sprint("t", i)))
	}
	c.store.CleanUp()
	if w := c.store.WeightedSize(); w > 1<<20 {
		t.Errorf("weighted size %d exceeds the 1 MiB bound", w)
	}
	if n := c.store.EstimatedSize(); n < 50 || n > 100 {
		t.Errorf("%d entries of 10 KiB kept in 1 MiB", n)
	}
	// Evicted entries leave the indexes (OnDeletion runs asynchronously).
	deadline := time.Now().Add(2 * time.Second)
	for {
		c.mu.Lock()
		tags, uris := len(c.byTag), len(c.byURI)
		c.mu.Unlock()
		n := c.store.EstimatedSize()
		if tags == n && uris == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("indexes hold %d tags and %d URIs for %d entries", tags, uris, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFetchCoalesces(t *testing.T) {
	c := newCache(t, 1<<20, func() time.Time { return t0 })
	var fills atomic.Int64
	release := make(chan struct{})
	var wg sync.WaitGroup
	var leaders atomic.Int64
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, leader, err := c.Fetch(context.Background(), "k", hdr{}, func() (*Entry, error) {
				fills.Add(1)
				<-release
				return c.Store("h", "/p", hdr{}, entry(200, "b", "Cache-Control", "max-age=60")), nil
			})
			if leader {
				leaders.Add(1)
			}
			if err != nil || string(e.Body) != "b" {
				t.Errorf("Fetch: %v %v", e, err)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if fills.Load() != leaders.Load() || fills.Load() > 2 {
		// Late arrivals after the first fill finished may lead a second one; never one per caller.
		t.Errorf("%d fills for 50 callers (%d leaders)", fills.Load(), leaders.Load())
	}
}

func TestFetchFollowersOfAnUnstoredResponseFetchThemselves(t *testing.T) {
	c := newCache(t, 1<<20, func() time.Time { return t0 })
	started := make(chan struct{})
	release := make(chan struct{})
	go c.Fetch(context.Background(), "k", hdr{}, func() (*Entry, error) {
		close(started)
		<-release
		return nil, nil
	})
	<-started
	done := make(chan error)
	go func() {
		_, leader, err := c.Fetch(context.Background(), "k", hdr{}, func() (*Entry, error) { return nil, nil })
		if leader {
			err = fmt.Errorf("follower became leader")
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	close(release)
	if err := <-done; err != ErrNotShared {
		t.Errorf("follower got %v, want ErrNotShared", err)
	}
	// A follower whose context ends stops waiting.
	block := make(chan struct{})
	defer close(block)
	go c.Fetch(context.Background(), "k2", hdr{}, func() (*Entry, error) { <-block; return nil, nil })
	time.Sleep(10 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, _, err := c.Fetch(ctx, "k2", hdr{}, nil); err != context.DeadlineExceeded {
		t.Errorf("follower with an ended context got %v", err)
	}
}

func TestBackgroundRunsOncePerKey(t *testing.T) {
	c := newCache(t, 1<<20, func() time.Time { return t0 })
	release := make(chan struct{})
	var runs atomic.Int64
	fill := func() (*Entry, error) { runs.Add(1); <-release; return nil, nil }
	started := 0
	for range 10 {
		if c.Background("k", fill) {
			started++
		}
	}
	close(release)
	if started != 1 {
		t.Errorf("%d background refreshes started for one key, want 1", started)
	}
}

func TestPurgeByAbsoluteURLIsPerHost(t *testing.T) {
	c := newCache(t, 1<<20, func() time.Time { return t0 })
	for _, h := range []string{"a.example", "b.example"} {
		c.Store(h, "/x?y=1", hdr{}, entry(200, h, "Cache-Control", "max-age=60"))
	}
	if n := c.PurgeURL("https://A.example/x?y=1"); n != 1 {
		t.Errorf("purged %d, want 1", n)
	}
	if _, st := c.Lookup("a.example", "/x?y=1", hdr{}); st != Miss {
		t.Error("a.example not purged")
	}
	if _, st := c.Lookup("b.example", "/x?y=1", hdr{}); st != Fresh {
		t.Error("b.example purged too")
	}
	if n := c.PurgeURL("::not a url"); n != 0 {
		t.Errorf("bad URL purged %d", n)
	}
}

func TestDependencyCyclesTerminate(t *testing.T) {
	c := newCache(t, 1<<20, func() time.Time { return t0 })
	for _, u := range []string{"/a", "/b"} {
		c.Store("h", u, hdr{}, entry(200, u, "Cache-Control", "max-age=60"))
	}
	c.AddDependency("/a", "/b")
	c.AddDependency("/b", "/a")
	if n := c.PurgeURL("/a"); n != 2 {
		t.Errorf("purged %d, want 2", n)
	}
}

func BenchmarkLookupHit(b *testing.B) {
	c := newCache(b, 64<<20, func() time.Time { return t0 })
	c.Store("shop.example", "/p", hdr{}, entry(200, strings.Repeat("x", 45<<10), "Cache-Control", "max-age=600"))
	h := hdr{}
	b.ReportAllocs()
	for b.Loop() {
		if _, st := c.Lookup("shop.example", "/p", h); st != Fresh {
			b.Fatal(st)
		}
	}
}

func TestRememberUncacheable(t *testing.T) {
	now := t0
	c := newCache(t, 1<<20, func() time.Time { return now })
	c.Store("h", "/p", hdr{}, entry(200, "b", "Cache-Control", "max-age=600"))
	c.RememberUncacheable("h", "/p", 10*time.Second)
	if e, st := c.Lookup("h", "/p", hdr{}); st != Uncacheable || e != nil {
		t.Errorf("Lookup = %v %v, want Uncacheable", e, st)
	}
	now = now.Add(10 * time.Second)
	if _, st := c.Lookup("h", "/p", hdr{}); st != Miss {
		t.Errorf("after the TTL: %v, want Miss", st)
	}
	c.RememberUncacheable("h", "/q", time.Minute)
	if n := c.PurgeURL("/q"); n != 0 {
		t.Errorf("a purge counted %d entries for a remembered uncacheable URL", n)
	}
	if _, st := c.Lookup("h", "/q", hdr{}); st != Miss {
		t.Errorf("purge did not forget the uncacheable mark: %v", st)
	}
}

func TestApplyAnInvalidationFromTheOrigin(t *testing.T) {
	c := newCache(t, 1<<20, func() time.Time { return t0 })
	for _, u := range []string{"/a", "/blog/1", "/blog/2", "/tagged", "/kept"} {
		tags := "none"
		if u == "/tagged" {
			tags = "sale"
		}
		c.Store("shop.example", u, hdr{}, entry(200, u, "Cache-Control", "max-age=60", "Surrogate-Key", tags))
	}
	req, err := purge.Decode([]byte(`{"urls":["https://shop.example/a"],"prefixes":["/blog/"],"tags":["sale"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if n := c.Apply(req); n != 4 {
		t.Errorf("Apply removed %d entries, want 4", n)
	}
	if _, st := c.Lookup("shop.example", "/kept", hdr{}); st != Fresh {
		t.Error("an entry the invalidation did not name was removed")
	}
}
