package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/segedge/segedge/core/purge"
)

// variantSet is the HTML of every slot variant of a loaded ruleset ([slot][variant]). It is
// replaced whole, never modified, when a purge names one of its fragments: a request reads one
// set with one atomic load.
type variantSet struct {
	gen   uint64 // 0 when loaded; +1 per refresh (part of the compressed-copy key)
	bytes [][][]byte
}

// fragmentRef is a variant whose HTML is a fragment fetched from the upstream.
type fragmentRef struct {
	slot, variant int
	path          string
	tags          []string // the fragment response's Surrogate-Key / Cache-Tag, for tag purges
}

// fetchFragment gets a fragment's HTML from the upstream, with its surrogate keys.
func (e *edge) fetchFragment(ctx context.Context, path string) ([]byte, []string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", e.cfg.UpstreamURL+path, nil)
	if err != nil {
		return nil, nil, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		return nil, nil, fmt.Errorf("upstream answered %d", res.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return nil, nil, err
	}
	var tags []string
	tags = append(tags, strings.Fields(res.Header.Get("Surrogate-Key"))...)
	for _, t := range strings.Split(res.Header.Get("Cache-Tag"), ",") {
		if t = strings.TrimSpace(t); t != "" {
			tags = append(tags, t)
		}
	}
	return b, tags, nil
}

// names says whether purge request r names the fragment: its path as a URL (relative, or
// absolute with any host), a prefix of it, or one of its surrogate keys.
func (f fragmentRef) namedBy(r *purge.Request) bool {
	for _, u := range r.URLs {
		if !strings.HasPrefix(u, "/") {
			pu, err := url.Parse(u)
			if err != nil {
				continue
			}
			u = pu.RequestURI()
		}
		if u == f.path {
			return true
		}
	}
	for _, p := range r.Prefixes {
		if strings.HasPrefix(f.path, p) {
			return true
		}
	}
	for _, t := range r.Tags {
		if slices.Contains(f.tags, t) {
			return true
		}
	}
	return false
}

// refreshFragments fetches again the fragments of the current ruleset that purge r names and
// swaps in a variant set with their new HTML, so a purged fragment changes what pages show
// right away, not at the next ruleset version. A fragment that cannot be fetched keeps its
// previous HTML (and is counted and logged). The previous version kept loaded to fall back to
// (quarantine.go) is refreshed too, so a fallback does not bring back purged HTML.
func (e *edge) refreshFragments(ctx context.Context, r *purge.Request) {
	if rs := e.acquire(); rs != nil {
		e.refreshFragmentsOf(ctx, rs, r)
		rs.refs.Done()
	}
	e.fb.mu.Lock()
	prev := e.fb.prev
	if prev != nil {
		prev.refs.Add(1) // retire waits for it
	}
	e.fb.mu.Unlock()
	if prev != nil {
		e.refreshFragmentsOf(ctx, prev, r)
		prev.refs.Done()
	}
}

func (e *edge) refreshFragmentsOf(ctx context.Context, rs *edgeRuleset, r *purge.Request) {
	rs.refreshMu.Lock()
	defer rs.refreshMu.Unlock()
	cur := rs.variants.Load()
	var next *variantSet
	for i, f := range rs.fragments {
		if !f.namedBy(r) {
			continue
		}
		b, tags, err := e.fetchFragment(ctx, f.path)
		if err != nil {
			e.fragmentFailures.Inc()
			e.log.Warn("purged fragment not refetched; it keeps its previous HTML", "fragment", f.path, "err", err)
			continue
		}
		if next == nil {
			next = &variantSet{gen: cur.gen + 1, bytes: make([][][]byte, len(cur.bytes))}
			for s := range cur.bytes {
				next.bytes[s] = slices.Clone(cur.bytes[s])
			}
		}
		next.bytes[f.slot][f.variant] = b
		rs.fragments[i].tags = tags // only this goroutine (under refreshMu) reads tags
	}
	if next != nil {
		rs.variants.Store(next)
		e.fragmentRefreshes.Inc()
		e.log.Info("fragments refreshed after a purge", "version", rs.version, "generation", next.gen)
	}
}
