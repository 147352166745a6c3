// Package httpcache is the edge's shared HTTP cache (RFC 9111 for a CDN): entries bounded by
// bytes in an otter cache, Vary variants, freshness with stale-while-revalidate and
// stale-if-error, request coalescing, and purges by URL, URL prefix, surrogate key and
// dependency (a fragment purge purges the pages that embed it). It knows nothing about sockets:
// edge/proxy asks it what it has and tells it what to store.
//
// Policy, where RFC 9111 leaves a choice or a CDN customarily differs:
//   - No heuristic freshness: a response is stored only with s-maxage, max-age or Expires, or
//     with a validator when it must be revalidated on every use (no-cache, max-age=0).
//   - Stored status codes: 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501; never 206.
//   - Responses with Set-Cookie are not stored (Varnish's default): storing them would hand one
//     visitor's cookie to the next.
//   - s-maxage implies proxy-revalidate (RFC 9111 §5.2.2.10), but an explicit
//     stale-while-revalidate or stale-if-error from the same response is honoured;
//     must-revalidate, proxy-revalidate and no-cache always forbid serving stale.
//   - The request directives honoured are no-store, no-cache and max-age=0; max-stale and
//     min-fresh are parsed but not applied (clients do not get to extend a site's staleness).
//   - Keys are the Host header as sent (lower-cased, port included) plus the request URI
//     exactly as sent: "/a?x=%2F" and "/a?x=/" are different entries.
package httpcache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxBytes bounds the cache when Config.MaxBytes is zero.
const DefaultMaxBytes = 256 << 20

// Config sizes the cache.
type Config struct {
	// MaxBytes bounds the stored bodies, headers and keys together (default DefaultMaxBytes).
	MaxBytes uint64
	// Now is the clock for ages and freshness (default time.Now). Tests inject one.
	Now func() time.Time
}

// State is what the cache has for a request.
type State int

const (
	// Miss: nothing stored for this request.
	Miss State = iota
	// Fresh: may be served as is.
	Fresh
	// Stale: must be revalidated before use, unless WithinStaleWhileRevalidate or (on upstream
	// failure) WithinStaleIfError allow serving it.
	Stale
	// Uncacheable: the upstream recently answered this URL with a response that may not be
	// stored (see RememberUncacheable): send the request straight on, without coalescing, which
	// would only queue requests behind each other.
	Uncacheable
)

func (s State) String() string {
	return [...]string{"miss", "fresh", "stale", "uncacheable"}[s]
}

// Result is how a request was answered, for the requests metric and the Segedge-Cache header.
type Result string

// Results.
const (
	Hit         Result = "HIT"
	MissResult  Result = "MISS"
	StaleResult Result = "STALE"
	Pass        Result = "PASS"
	Revalidated Result = "REVALIDATED"
)

// ErrNotShared is returned to requests that waited on another's upstream fetch when its response
// was not stored (not cacheable, too large, or a different Vary variant): they must fetch on
// their own, as RFC 9111 §4 requires of collapsed requests.
var ErrNotShared = errors.New("httpcache: coalesced response not stored; fetch it yourself")

// Cache is safe for concurrent use.
type Cache struct {
	now   func() time.Time
	store *otter.Cache[string, *Entry]

	mu    sync.Mutex
	byURI map[string]map[string]struct{} // request URI → stored keys (all hosts and variants)
	byTag map[string]map[string]struct{} // surrogate key → stored keys
	deps  map[string]map[string]struct{} // fragment URI → URIs of pages that embed it
	// pageDeps is deps reversed (page URI → fragment URIs), to forget a page's edges when it goes.
	pageDeps map[string]map[string]struct{}

	flightMu sync.Mutex
	inflight map[string]*call

	nextID atomic.Uint64 // Entry.ID

	m *metrics
}

type call struct {
	done chan struct{}
	e    *Entry
	err  error
}

// New creates a cache; its metrics are registered on reg (nil: not registered).
func New(cfg Config, reg prometheus.Registerer) (*Cache, error) {
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Cache{
		now:      cfg.Now,
		byURI:    map[string]map[string]struct{}{},
		byTag:    map[string]map[string]struct{}{},
		deps:     map[string]map[string]struct{}{},
		pageDeps: map[string]map[string]struct{}{},
		inflight: map[string]*call{},
	}
	var err error
	c.store, err = otter.New(&otter.Options[string, *Entry]{
		MaximumWeight: cfg.MaxBytes,
		Weigher:       func(_ string, e *Entry) uint32 { return e.weight },
		OnDeletion:    c.unindex,
	})
	if err != nil {
		return nil, fmt.Errorf("httpcache: %w", err)
	}
	if c.m, err = newMetrics(reg, c); err != nil {
		return nil, fmt.Errorf("httpcache: %w", err)
	}
	return c, nil
}

// Now is the cache's clock.
func (c *Cache) Now() time.Time { return c.now() }

// Record counts one request answered with r.
func (c *Cache) Record(r Result) { c.m.requests.WithLabelValues(string(r)).Inc() }

func primaryKey(host, uri string) string { return strings.ToLower(host) + " " + uri }

// Lookup returns what is stored for a GET or HEAD of uri (path and query exactly as requested)
// on host, choosing the Vary variant by req. A request's own Cache-Control (no-cache, max-age=0)
// is the caller's to apply.
func (c *Cache) Lookup(host, uri string, req RequestHeader) (*Entry, State) {
	e, ok := c.store.GetIfPresent(primaryKey(host, uri))
	if ok && e.marker {
		e, ok = c.store.GetIfPresent(e.key + "\x00" + varyValues(e.vary, req))
	}
	if !ok {
		return nil, Miss
	}
	if e.pass {
		if c.now().Before(e.ResponseTime.Add(e.lifetime)) {
			return nil, Uncacheable
		}
		return nil, Miss
	}
	if e.Fresh(c.now()) {
		return e, Fresh
	}
	return e, Stale
}

// RememberUncacheable records for d that uri on host was answered with a response that may not
// be stored (Varnish's hit-for-pass), so that Lookup says Uncacheable rather than Miss. It
// replaces what was stored for the URL (all Vary variants are reached through the primary key).
func (c *Cache) RememberUncacheable(host, uri string, d time.Duration) {
	primary := primaryKey(host, uri)
	m := &Entry{pass: true, key: primary, URI: uri, ResponseTime: c.now(), lifetime: d}
	m.weight = uint32(m.size())
	c.index(m)
	c.store.Set(primary, m)
}

// Matches says whether e is the variant for req.
func (e *Entry) Matches(req RequestHeader) bool {
	return e.vary == nil || varyValues(e.vary, req) == e.varyValues
}

// Store saves e (a Storable response, body set) as the answer to req for uri on host and
// returns it.
func (c *Cache) Store(host, uri string, req RequestHeader, e *Entry) *Entry {
	primary := primaryKey(host, uri)
	e.URI = uri
	e.key = primary
	if e.vary != nil {
		e.varyValues = varyValues(e.vary, req)
		e.key = primary + "\x00" + e.varyValues
		if m, ok := c.store.GetIfPresent(primary); !ok || !m.marker || !equalStrings(m.vary, e.vary) {
			m := &Entry{marker: true, vary: e.vary, key: primary, URI: uri}
			m.weight = uint32(m.size())
			c.index(m)
			c.store.Set(primary, m)
		}
	}
	e.weight = uint32(min(e.size(), 1<<32-1))
	if e.ID == 0 {
		e.ID = c.nextID.Add(1)
	}
	c.index(e)
	c.store.Set(e.key, e)
	return e
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func (c *Cache) index(e *Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	add(c.byURI, e.URI, e.key)
	for _, t := range e.Tags {
		add(c.byTag, t, e.key)
	}
}

// unindex runs after otter deleted an entry (evicted, purged or replaced). The key may have been
// stored again meanwhile, so only references the current entry does not need are dropped.
func (c *Cache) unindex(ev otter.DeletionEvent[string, *Entry]) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur, present := c.store.GetIfPresent(ev.Key)
	old := ev.Value
	if !present {
		del(c.byURI, old.URI, old.key)
		if _, stillThere := c.byURI[old.URI]; !stillThere {
			// The page is gone; it records its dependencies again when it is stored again.
			// (A fragment's own eviction keeps its dependents: purging it must still reach them.)
			for f := range c.pageDeps[old.URI] {
				del(c.deps, f, old.URI)
			}
			delete(c.pageDeps, old.URI)
		}
	}
	for _, t := range old.Tags {
		if !present || !hasTag(cur, t) {
			del(c.byTag, t, old.key)
		}
	}
}

func hasTag(e *Entry, t string) bool {
	for _, x := range e.Tags {
		if x == t {
			return true
		}
	}
	return false
}

func add(m map[string]map[string]struct{}, k, v string) {
	s := m[k]
	if s == nil {
		s = map[string]struct{}{}
		m[k] = s
	}
	s[v] = struct{}{}
}

func del(m map[string]map[string]struct{}, k, v string) {
	if s := m[k]; s != nil {
		delete(s, v)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

// Fetch coalesces concurrent fetches of one key: the first caller (the leader) runs fill, the
// others wait for its result. fill returns the stored entry, or an error; the leader gets fill's
// error as is, followers get ErrNotShared when fill returned no entry (they must fetch
// themselves) or when the entry is not their Vary variant. key is the caller's choice (the
// proxy uses host and URI). A follower whose ctx ends stops waiting with ctx.Err().
func (c *Cache) Fetch(ctx context.Context, key string, req RequestHeader, fill func() (*Entry, error)) (e *Entry, leader bool, err error) {
	c.flightMu.Lock()
	if cl, ok := c.inflight[key]; ok {
		c.flightMu.Unlock()
		select {
		case <-cl.done:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
		if cl.e == nil || !cl.e.Matches(req) {
			return nil, false, ErrNotShared
		}
		return cl.e, false, nil
	}
	cl := &call{done: make(chan struct{})}
	c.inflight[key] = cl
	c.flightMu.Unlock()
	defer func() {
		c.flightMu.Lock()
		delete(c.inflight, key)
		c.flightMu.Unlock()
		close(cl.done)
	}()
	cl.e, cl.err = fill()
	return cl.e, true, cl.err
}

// Background runs fill in a new goroutine unless a fetch of key is already in flight, so a stale
// entry is refreshed once however many requests see it stale. It reports whether it started one.
func (c *Cache) Background(key string, fill func() (*Entry, error)) bool {
	c.flightMu.Lock()
	if _, ok := c.inflight[key]; ok {
		c.flightMu.Unlock()
		return false
	}
	cl := &call{done: make(chan struct{})}
	c.inflight[key] = cl
	c.flightMu.Unlock()
	go func() {
		defer func() {
			c.flightMu.Lock()
			delete(c.inflight, key)
			c.flightMu.Unlock()
			close(cl.done)
		}()
		cl.e, cl.err = fill()
	}()
	return true
}

// FlightKey is the coalescing key for a request of uri on host.
func FlightKey(host, uri string) string { return primaryKey(host, uri) }
