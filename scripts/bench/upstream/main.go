// Command upstream is the site behind the proxies in scripts/bench-edge.sh: one ~50 KB HTML page
// with three personalizable slots, an ESI variant of it for Varnish, and the fragment both use.
// The page is built at start from a real page (the corpus, when present) so that the edge's page
// compiler, nginx and Varnish all handle realistic markup; without one it generates filler.
// Every response is cacheable (Cache-Control: public, max-age=3600), as a CDN would see it.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/html"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9190", "listen address")
	corpus := flag.String("corpus", "", "HTML page whose body text fills the page (empty or missing: generated filler)")
	size := flag.Int("size", 50*1024, "target size of the page in bytes")
	write := flag.String("write", "", "write the page to this file and exit (for inspection)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	var src []byte
	if *corpus != "" {
		b, err := os.ReadFile(*corpus)
		if err != nil {
			log.Warn("corpus unreadable; generating filler", "path", *corpus, "err", err)
		} else {
			src = b
		}
	}
	blocks, err := fillerBlocks(src)
	if err != nil {
		log.Warn("corpus unparsable; generating filler", "err", err)
		blocks = nil
	}
	if len(blocks) == 0 {
		blocks = generatedBlocks()
	}
	site := newSite(blocks, *size)
	if *write != "" {
		if err := os.WriteFile(*write, site.page, 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "upstream: %v\n", err)
			os.Exit(1)
		}
		return
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "upstream: listen on %s: %v\n", *addr, err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: site, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("serve", "err", err)
		}
	}()
	log.Info("bench upstream listening", "addr", ln.Addr().String(), "page_bytes", len(site.page), "esi_bytes", len(site.esi))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
}

// heroFragment is /fragments/hero.html: what Varnish includes into /esi.html, and what the
// edge's ruleset may choose for the hero slot.
const heroFragment = `<section class="hero"><h1>Welcome back</h1><p>Picked for you: the plan that fits how you use the site.</p><a href="/pricing">See your offer</a></section>`

type site struct {
	page, esi, fragment []byte
	pageTag, esiTag     string
	// served counts the requests answered (except the counter's own): the benchmark reads it
	// before and after a run to tell a caching proxy from one that forwards every request.
	served atomic.Int64
}

// newSite lays out the page: the hero slot first, the promo slot in the middle of the filler,
// the footer slot at the end; the ESI variant replaces the hero slot with an include of the fragment.
func newSite(blocks []string, size int) *site {
	const head = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>segedge bench page</title>" +
		"<link rel=\"stylesheet\" href=\"/site.css\"></head>\n<body>\n"
	hero := `<div data-seg-slot="hero"><section class="hero"><h1>Welcome</h1><p>The default hero for every visitor.</p></section></div>` + "\n"
	esiHero := `<div class="hero-slot"><esi:include src="/fragments/hero.html"/></div>` + "\n"
	promo := `<div data-seg-slot="promo"><aside class="promo">Free shipping on your first order.</aside></div>` + "\n"
	footer := `<div data-seg-slot="footer"><footer>Questions? <a href="/contact">Contact us</a>.</footer></div>` + "\n"
	const tail = "</body></html>\n"

	budget := size - len(head) - len(hero) - len(promo) - len(footer) - len(tail)
	var filler []string
	for n, i := 0, 0; n < budget; i++ {
		b := blocks[i%len(blocks)] + "\n"
		if n+len(b) > budget && n > 0 {
			// Pad to the exact size with a comment rather than cutting markup in half.
			if pad := budget - n - len("<!--  -->\n"); pad > 0 {
				filler = append(filler, "<!-- "+strings.Repeat("x", pad)+" -->\n")
			}
			break
		}
		filler = append(filler, b)
		n += len(b)
	}
	half := len(filler) / 2
	build := func(first string) []byte {
		var buf bytes.Buffer
		buf.WriteString(head)
		buf.WriteString(first)
		for _, b := range filler[:half] {
			buf.WriteString(b)
		}
		buf.WriteString(promo)
		for _, b := range filler[half:] {
			buf.WriteString(b)
		}
		buf.WriteString(footer)
		buf.WriteString(tail)
		return buf.Bytes()
	}
	s := &site{page: build(hero), esi: build(esiHero), fragment: []byte(heroFragment)}
	s.pageTag, s.esiTag = etag(s.page), etag(s.esi)
	return s
}

func etag(b []byte) string {
	sum := sha256.Sum256(b)
	return `"` + hex.EncodeToString(sum[:8]) + `"`
}

func (s *site) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.Path == "/_bench/requests" {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, s.served.Load())
		return
	}
	s.served.Add(1)
	var body []byte
	var tag string
	switch r.URL.Path {
	case "/", "/index.html", "/page.html":
		body, tag = s.page, s.pageTag
	case "/esi.html":
		body, tag = s.esi, s.esiTag
	case "/fragments/hero.html":
		body, tag = s.fragment, ""
	default:
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "public, max-age=3600")
	if tag != "" {
		h.Set("ETag", tag)
		if r.Header.Get("If-None-Match") == tag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	h.Set("Content-Length", fmt.Sprint(len(body)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(body)
}

// fillerBlocks cuts the body of a real page into complete, balanced pieces of markup (no
// scripts, styles or comments), each small enough that the page can be filled to size without
// cutting an element in half: a cut element would leave the slots after it nested inside it.
func fillerBlocks(src []byte) ([]string, error) {
	if len(src) == 0 {
		return nil, nil
	}
	doc, err := html.Parse(bytes.NewReader(src))
	if err != nil {
		return nil, fmt.Errorf("parse corpus: %w", err)
	}
	strip(doc)
	body := find(doc, "body")
	if body == nil {
		return nil, nil
	}
	var out []string
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			var buf bytes.Buffer
			if err := html.Render(&buf, c); err != nil {
				continue
			}
			s := strings.TrimSpace(buf.String())
			switch {
			case s == "":
			case buf.Len() <= 4096:
				out = append(out, s)
			case c.Type == html.ElementNode:
				walk(c) // too big: take its children, dropping the wrapper
			}
		}
	}
	walk(body)
	return out, nil
}

// strip removes what would let a slot end up inside something else (comments, scripts) or what
// the benchmark should not depend on (styles, templates, forms).
func strip(n *html.Node) {
	for c := n.FirstChild; c != nil; {
		next := c.NextSibling
		drop := c.Type == html.CommentNode || c.Type == html.DoctypeNode
		if c.Type == html.ElementNode {
			switch c.Data {
			case "script", "style", "noscript", "template", "iframe", "svg", "form", "link", "meta":
				drop = true
			}
		}
		if drop {
			n.RemoveChild(c)
		} else {
			strip(c)
		}
		c = next
	}
}

func find(n *html.Node, tag string) *html.Node {
	if n.Type == html.ElementNode && n.Data == tag {
		return n
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if f := find(c, tag); f != nil {
			return f
		}
	}
	return nil
}

// generatedBlocks is the filler when no corpus page is at hand: plain article markup.
func generatedBlocks() []string {
	out := make([]string, 0, 64)
	for i := 0; i < 64; i++ {
		out = append(out, fmt.Sprintf(`<section class="card"><h2>Section %d</h2><p>%s</p><ul><li><a href="/p/%d">Read more</a></li><li><a href="/p/%d/specs">Specifications</a></li></ul></section>`,
			i, strings.Repeat("Edge caches keep pages close to visitors; personalization keeps them relevant. ", 8), i, i))
	}
	return out
}
