package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/core/rulestore"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/edge/httpcache"
	"github.com/segedge/segedge/edge/identity"
	"github.com/segedge/segedge/edge/proxy"
	"github.com/segedge/segedge/edge/replica"
	"github.com/segedge/segedge/wasm"
)

// benchPage is a 45 KB HTML page (the size DESIGN.md measures with) with one slot.
var benchPage = "<!doctype html><html><body>" + strings.Repeat("<p>segedge benchmark paragraph</p>", 1300) +
	`<div data-seg-slot="hero">Welcome</div></body></html>`

const benchRules = `segments:
  - name: cart_abandoner
    rule: count("add_to_cart", "30m") > 0
  - name: mobile_visitor
    rule: request.device == "mobile"
slots:
  - name: hero
    variants:
      - when: cart_abandoner
        html: '<h1>Your cart is waiting</h1>'
`

// benchEdge is the edge as Run wires it for the request path (cache, proxy with render, the
// sandbox with a compiled ruleset from the ruleset store, replica, cookie signer), without the
// listeners; it returns the edge and a request from a known visitor who is in a segment.
func benchEdge(b testing.TB) (*edge, *fasthttp.Request) {
	b.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "public, max-age=3600")
		io.WriteString(w, benchPage)
	}))
	b.Cleanup(up.Close)
	reg := prometheus.NewRegistry()
	cache, err := httpcache.New(httpcache.Config{MaxBytes: 64 << 20}, reg)
	if err != nil {
		b.Fatal(err)
	}
	rt, err := wasm.NewRuntime(ctx, wasm.Config{Registerer: reg, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rt.Close(context.Background()) })
	e := &edge{cfg: Config{CountryHeader: "CF-IPCountry", UpstreamURL: up.URL}, log: log, cache: cache, rt: rt}
	e.metrics(reg)
	px, err := proxy.New(proxy.Config{Upstream: up.URL, Cache: cache, OnCacheFill: onCacheFill, Render: e.render, OnUpstream: traceUpstream}, reg, log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(px.Close)
	n := testenv.StartNATS(b)
	rep, err := replica.New(replica.Config{Topology: n.Topology, Registerer: reg})
	if err != nil {
		b.Fatal(err)
	}
	signer, err := identity.NewSigner(identity.RandomKey())
	if err != nil {
		b.Fatal(err)
	}
	e.proxy, e.replica, e.signer = px, rep, signer
	e.limits = event.DefaultLimits()
	if e.trusted, err = newTrustedUsers("", "", reg); err != nil { // no trusted user-id header, as by default
		b.Fatal(err)
	}

	f, err := rules.Parse("bench.yaml", []byte(benchRules))
	if err != nil {
		b.Fatal(err)
	}
	rs, err := rules.Compile(f)
	if err != nil {
		b.Fatal(err)
	}
	man, err := json.Marshal(rs.Manifest)
	if err != nil {
		b.Fatal(err)
	}
	store, err := rulestore.Open(ctx, n.JS, n.Topology.RulesetBucket())
	if err != nil {
		b.Fatal(err)
	}
	meta, err := store.Put(ctx, rulestore.Version{Source: []byte(benchRules), Module: rs.Module, Manifest: man}, 0)
	if err != nil {
		b.Fatal(err)
	}
	loaded, err := e.loadRuleset(ctx, store, meta.Version)
	if err != nil {
		b.Fatal(err)
	}
	e.rs.Store(loaded)
	e.ruleset.Store(loaded.version)

	id, cookie := signer.Issue()
	// As the origin publishes it: the membership and the feature values request-scoped rules read.
	cart := profile.Feature{Kind: profile.FeatureCount, Name: "add_to_cart", Window: 30 * time.Minute}
	rep.Apply(&delta.Delta{UserID: id, Version: 1, Members: []string{"cart_abandoner"},
		Features: []delta.FeatureValue{{Key: delta.FeatureKey(cart), Value: profile.IntValue(1)}}})
	var req fasthttp.Request
	req.SetRequestURI("/shop?id=1")
	req.Header.SetHost("shop.example")
	req.Header.Set("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0")
	req.Header.SetCookie(identity.CookieName, cookie)
	return e, &req
}

// BenchmarkPersonalizedHit is the edge's request path for a personalized page from the cache:
// handle on a RequestCtx (routing, identity, cache hit, one sandboxed evaluation for a visitor
// in the replica, splice), no sockets.
func BenchmarkPersonalizedHit(b *testing.B) {
	e, req := benchEdge(b)
	benchHandle(b, e.handle, req)
}

func benchHandle(b *testing.B, h fasthttp.RequestHandler, req *fasthttp.Request) {
	var ctx fasthttp.RequestCtx
	ctx.Init(req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}, nil)
	h(&ctx) // fills the cache
	ctx.Response.Reset()
	h(&ctx)
	if body := string(ctx.Response.Body()); ctx.Response.StatusCode() != 200 || !strings.Contains(body, "Your cart is waiting") ||
		string(ctx.Response.Header.Peek(proxy.CacheHeader)) != "HIT" {
		b.Fatalf("not a personalized cache hit: %d %q %.200q", ctx.Response.StatusCode(), ctx.Response.Header.Peek(proxy.CacheHeader), body)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchPage)))
	for b.Loop() {
		ctx.Response.Reset()
		h(&ctx)
	}
	if !strings.Contains(string(ctx.Response.Body()), "Your cart is waiting") {
		b.Fatal("last response not personalized")
	}
}
