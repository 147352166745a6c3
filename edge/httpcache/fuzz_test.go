package httpcache

import (
	"strings"
	"testing"
	"time"
)

// FuzzEntry feeds arbitrary response headers through the whole entry life: build, decide,
// store, look up, refresh, purge. Nothing may panic and the freshness answers must be coherent.
func FuzzEntry(f *testing.F) {
	f.Add("Cache-Control: max-age=60\nVary: Accept\nSurrogate-Key: a b\nCache-Tag: c, d", 200)
	f.Add("Expires: Sun, 01 Mar 2026 12:01:00 GMT\nDate: garbage\nAge: 99999999999999999999", 200)
	f.Add("Cache-Control: no-cache, stale-if-error=5\nETag: \"x\"\nVary: *", 404)
	f.Add("Age: -5\nCache-Control: s-maxage=1, max-age=\"", 301)
	f.Fuzz(func(t *testing.T, raw string, status int) {
		var h []Field
		for _, line := range strings.Split(raw, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				h = append(h, Field{k, strings.TrimSpace(v)})
			}
		}
		e := NewEntry(status, h, t0, t0.Add(time.Millisecond))
		e.Body = []byte(raw)
		req := hdr{"Accept": "x"}
		now := t0.Add(time.Second)
		if e.Fresh(now) && e.Age(now) >= e.lifetime {
			t.Fatalf("fresh at age %v with lifetime %v", e.Age(now), e.lifetime)
		}
		if e.Age(now) < 0 {
			t.Fatalf("negative age %v", e.Age(now))
		}
		ok, _ := Storable(req, e)
		c := newCache(t, 1<<20, func() time.Time { return now })
		if ok {
			c.Store("h", "/u", req, e)
			if got, st := c.Lookup("h", "/u", req); got != e || st == Miss {
				t.Fatalf("stored entry not found: %v %v", got, st)
			}
		}
		_ = e.Refreshed(h, t0, t0)
		for _, tag := range e.Tags {
			c.PurgeTag(tag)
		}
		c.PurgeURL("/u")
		if _, st := c.Lookup("h", "/u", req); st != Miss {
			t.Fatal("entry survived its URL purge")
		}
	})
}
