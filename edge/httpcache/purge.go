package httpcache

import (
	"net/url"
	"strings"

	"github.com/segedge/segedge/core/purge"
)

// AddDependency records that the page at pageURI embeds the fragment at fragmentURI (both
// request URIs, path and query), so that purging the fragment also purges the page, on every
// host. The edge calls it when it compiles a page that includes a fragment; the edge is gone
// from the index when the page leaves the cache.
func (c *Cache) AddDependency(pageURI, fragmentURI string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	add(c.deps, fragmentURI, pageURI)
	add(c.pageDeps, pageURI, fragmentURI)
}

// PurgeURL removes every stored response for url: a request URI ("/shop?page=2", any host, all
// Vary variants) or an absolute URL ("https://shop.example/x", that host only). Pages depending
// on it are purged too. It returns how many entries were removed.
func (c *Cache) PurgeURL(rawURL string) int {
	uri, host := rawURL, ""
	if !strings.HasPrefix(rawURL, "/") {
		u, err := url.Parse(rawURL)
		if err != nil || u.Host == "" {
			return 0
		}
		host, uri = strings.ToLower(u.Host), u.RequestURI()
	}
	c.m.purges.WithLabelValues("url").Inc()
	c.mu.Lock()
	keys := c.keysOf(c.byURI[uri], host)
	c.mu.Unlock()
	return c.invalidate(keys, []string{uri})
}

// PurgePrefix removes every stored response whose request URI starts with prefix (and the pages
// depending on them). It scans the distinct URIs, not the entries.
func (c *Cache) PurgePrefix(prefix string) int {
	c.m.purges.WithLabelValues("prefix").Inc()
	var keys, uris []string
	c.mu.Lock()
	for uri, ks := range c.byURI {
		if strings.HasPrefix(uri, prefix) {
			uris = append(uris, uri)
			keys = append(keys, c.keysOf(ks, "")...)
		}
	}
	c.mu.Unlock()
	return c.invalidate(keys, uris)
}

// PurgeTag removes every stored response tagged tag by Surrogate-Key or Cache-Tag (and the pages
// depending on them), through the tag index.
func (c *Cache) PurgeTag(tag string) int {
	c.m.purges.WithLabelValues("tag").Inc()
	c.mu.Lock()
	keys := c.keysOf(c.byTag[tag], "")
	c.mu.Unlock()
	uris := make([]string, 0, len(keys))
	for _, k := range keys {
		if e, ok := c.store.GetIfPresent(k); ok {
			uris = append(uris, e.URI)
		}
	}
	return c.invalidate(keys, uris)
}

// keysOf copies a key set, keeping only host's keys when host is set. Callers hold c.mu.
func (c *Cache) keysOf(set map[string]struct{}, host string) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		if host == "" || strings.HasPrefix(k, host+" ") {
			out = append(out, k)
		}
	}
	return out
}

// invalidate removes keys, then cascades to the pages depending on uris (transitively, each
// URI once).
func (c *Cache) invalidate(keys, uris []string) int {
	n := 0
	for _, k := range keys {
		if e, ok := c.store.Invalidate(k); ok && !e.marker && !e.pass {
			n++
		}
	}
	seen := map[string]bool{}
	for _, u := range uris {
		seen[u] = true
	}
	for len(uris) > 0 {
		u := uris[0]
		uris = uris[1:]
		c.mu.Lock()
		var pages []string
		for p := range c.deps[u] {
			if !seen[p] {
				seen[p] = true
				pages = append(pages, p)
			}
		}
		var pageKeys []string
		for _, p := range pages {
			pageKeys = append(pageKeys, c.keysOf(c.byURI[p], "")...)
		}
		c.mu.Unlock()
		if len(pages) > 0 {
			c.m.purges.WithLabelValues("dependency").Inc()
		}
		for _, k := range pageKeys {
			if e, ok := c.store.Invalidate(k); ok && !e.marker && !e.pass {
				n++
			}
		}
		uris = append(uris, pages...)
	}
	return n
}

// Delete removes e if it is still the stored entry for its key: the upstream answered a
// revalidation with a response that may not be stored, so the old one must not be served again.
func (c *Cache) Delete(e *Entry) {
	if e == nil || e.key == "" {
		return
	}
	if cur, ok := c.store.GetIfPresent(e.key); ok && cur == e {
		c.store.Invalidate(e.key)
	}
}

// InvalidateURI removes what is stored for uri on host (all variants, and dependent pages) after
// a successful unsafe request (POST, PUT, DELETE…) to it, as RFC 9111 §4.4 asks.
func (c *Cache) InvalidateURI(host, uri string) int {
	c.m.purges.WithLabelValues("unsafe_method").Inc()
	prefix := strings.ToLower(host)
	c.mu.Lock()
	keys := c.keysOf(c.byURI[uri], prefix)
	c.mu.Unlock()
	return c.invalidate(keys, []string{uri})
}

// Apply carries out one invalidation from the origin (core/purge, stream INVALIDATE): every URL,
// prefix and tag it names. It returns how many entries were removed.
func (c *Cache) Apply(r *purge.Request) int {
	n := 0
	for _, u := range r.URLs {
		n += c.PurgeURL(u)
	}
	for _, p := range r.Prefixes {
		n += c.PurgePrefix(p)
	}
	for _, t := range r.Tags {
		n += c.PurgeTag(t)
	}
	return n
}
