package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/valyala/fasthttp"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/purge"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/core/rulestore"
	"github.com/segedge/segedge/edge/compress"
	"github.com/segedge/segedge/edge/device"
	"github.com/segedge/segedge/edge/httpcache"
	"github.com/segedge/segedge/edge/identity"
	"github.com/segedge/segedge/edge/page"
	"github.com/segedge/segedge/edge/proxy"
	"github.com/segedge/segedge/edge/replica"
	wruleset "github.com/segedge/segedge/wasm/ruleset"
)

// edgeRuleset is a ruleset version loaded at this edge, with everything a request needs
// resolved once: replica ids of the features it reads, variant bytes per slot.
type edgeRuleset struct {
	version  uint64
	ev       *wruleset.Evaluator
	man      *rules.Manifest
	featIDs  []uint16 // per manifest input: the replica's id of its feature key (inputs that are features)
	featByID map[profile.Feature]uint16
	variants atomic.Pointer[variantSet]
	// fragments are the variants fetched from the upstream; refreshMu serializes their refreshes.
	fragments []fragmentRef
	refreshMu sync.Mutex
	results   sync.Pool
	refs      sync.WaitGroup
}

// loadRuleset fetches a stored version and loads it into the sandbox. Fragment variants are
// fetched from the upstream once, here, so no request waits for them.
func (e *edge) loadRuleset(ctx context.Context, store *rulestore.Store, version uint64) (*edgeRuleset, error) {
	v, err := store.Get(ctx, version)
	if err != nil {
		return nil, err
	}
	var m rules.Manifest
	if err := json.Unmarshal(v.Manifest, &m); err != nil {
		return nil, fmt.Errorf("ruleset %d manifest: %w", version, err)
	}
	ev, err := wruleset.Load(ctx, e.rt, fmt.Sprintf("ruleset-v%d", version), &rules.Ruleset{Module: v.Module, Manifest: m, Modules: v.ModuleBytes()})
	if err != nil {
		return nil, err
	}
	rs := &edgeRuleset{version: version, ev: ev, man: ev.Manifest(), featByID: map[profile.Feature]uint16{}}
	for _, in := range rs.man.Inputs {
		var id uint16
		if in.Request == "" {
			id = e.replica.ID(delta.FeatureKey(in.Feature))
			rs.featByID[in.Feature] = id
		}
		rs.featIDs = append(rs.featIDs, id)
	}
	set := &variantSet{}
	for si, s := range rs.man.Slots {
		var vs [][]byte
		for vi, v := range s.Variants {
			b := []byte(v.HTML)
			if v.Fragment != "" {
				var tags []string
				if b, tags, err = e.fetchFragment(ctx, v.Fragment); err != nil {
					ev.Close()
					return nil, fmt.Errorf("slot %s: fragment %s: %w", s.Name, v.Fragment, err)
				}
				rs.fragments = append(rs.fragments, fragmentRef{slot: si, variant: vi, path: v.Fragment, tags: tags})
			}
			vs = append(vs, b)
		}
		set.bytes = append(set.bytes, vs)
	}
	rs.variants.Store(set)
	rs.results.New = func() any { return rs.man.NewResult() }
	return rs, nil
}

// watchRulesets follows the current ruleset pointer and swaps versions in (see quarantine.go
// for the fallback when a version's hand-written module is quarantined).
func (e *edge) watchRulesets(ctx context.Context, js jetstream.JetStream, topo bus.Topology) error {
	store, err := rulestore.Open(ctx, js, topo.RulesetBucket())
	if err != nil {
		return err
	}
	ch, err := store.Watch(ctx)
	if err != nil {
		return err
	}
	e.rulesetsWatched.Store(true)
	for p := range ch {
		if e.isActive(p.Version) {
			continue
		}
		rs, err := e.loadRuleset(ctx, store, p.Version)
		if err != nil {
			e.rulesetFailures.Inc()
			e.log.Error("ruleset not loaded; serving the previous version", "version", p.Version, "err", err)
			e.rulesetErr.Store(fmt.Sprintf("ruleset %d: %v", p.Version, err))
			continue
		}
		e.rulesetErr.Store("")
		e.activate(rs) // quarantine.go: keeps the previous good version to fall back to
	}
	return nil
}

// acquire returns the current ruleset with a reference held; release with rs.refs.Done().
func (e *edge) acquire() *edgeRuleset {
	for {
		rs := e.rs.Load()
		if rs == nil {
			return nil
		}
		rs.refs.Add(1)
		if e.rs.Load() == rs {
			return rs
		}
		rs.refs.Done()
	}
}

// applyPurges follows the INVALIDATE stream from now on and purges the cache.
func (e *edge) applyPurges(ctx context.Context, js jetstream.JetStream, topo bus.Topology) error {
	cons, err := js.OrderedConsumer(ctx, topo.InvalidateStream(), jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return fmt.Errorf("follow purges: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("follow purges: %w", err)
	}
	defer it.Stop()
	for ctx.Err() == nil {
		msg, err := it.Next(jetstream.NextMaxWait(time.Second))
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			continue
		}
		req, err := purge.Decode(msg.Data())
		if err != nil {
			e.log.Warn("unreadable purge skipped", "err", err)
			continue
		}
		n := e.cache.Apply(req)
		e.log.Info("purge applied", "id", req.ID, "entries", n)
		go e.refreshFragments(ctx, req)
	}
	return nil
}

// onCacheFill cuts an HTML page into chunks and slots once, as it enters the cache.
func onCacheFill(en *httpcache.Entry) {
	if en.Status != 200 || !isHTML([]byte(en.Get("Content-Type"))) || en.Get("Content-Encoding") != "" {
		return
	}
	if p := page.Compile(en.Body); len(p.Slots()) > 0 {
		en.Compiled = p
	}
}

// render is the personalized response from a cached page: one evaluation of the ruleset for
// this visitor and request, then the page's chunks with each slot's chosen variant.
func (e *edge) render(ctx *fasthttp.RequestCtx, en *httpcache.Entry) bool {
	pg, ok := en.Compiled.(*page.Page)
	if !ok {
		return false
	}
	rs := e.acquire()
	if rs == nil {
		return false
	}
	defer rs.refs.Done()
	res := rs.results.Get().(*rules.Result)
	defer rs.results.Put(res)
	e.evaluate(ctx, rs, res)
	vp := variantsPool.Get().(*[][]byte)
	defer variantsPool.Put(vp)
	variants := (*vp)[:0]
	for range pg.Slots() {
		variants = append(variants, nil)
	}
	// FNV-1a over the (slot, variant) choices, inline: the ETag of this variant combination
	// without allocating a hasher per request.
	h := uint64(14695981039346656037)
	mix := func(b byte) { h = (h ^ uint64(b)) * 1099511628211 }
	vset := rs.variants.Load()
	for i, s := range rs.man.Slots {
		j := pg.SlotIndex(s.Name)
		c := res.Variants[i]
		if j < 0 || c < 0 || int(c) >= len(vset.bytes[i]) {
			continue
		}
		variants[j] = vset.bytes[i][c]
		mix(byte(i))
		mix(byte(c))
	}
	*vp = variants
	rh := &ctx.Response.Header
	rh.Set("Cache-Control", "private, no-cache")
	rh.Set("Vary", e.trusted.vary)
	rh.Set("Segedge-Ruleset", strconv.FormatUint(rs.version, 10))
	rh.Set("ETag", `"`+strconv.FormatUint(h^uint64(len(en.ETag)), 36)+"-"+strconv.FormatUint(rs.version, 10)+`"`)
	if e.proxy.Compressing() {
		// One copy per variant combination of this page and ruleset, and per coding: the splice
		// (and the compression) happen once; later visitors with the same combination get the
		// stored bytes without a copy, as from a cached page.
		enc := e.proxy.Coding(ctx, en)
		for _, b := range [...]uint64{rs.version, vset.gen} {
			for ; b > 0; b >>= 8 {
				mix(byte(b))
			}
			mix(0xff)
		}
		body := e.proxy.Compressed(en, h|1, enc, func() []byte {
			var buf bytes.Buffer
			buf.Grow(len(en.Body) + 4096)
			t1 := time.Now()
			span := startSpan(ctx, "edge.splice")
			pg.Render(&buf, variants)
			span.End()
			e.spliceDur.Observe(time.Since(t1).Seconds())
			return buf.Bytes()
		})
		if enc == compress.Identity {
			ctx.Response.SetBodyRaw(body)
		} else {
			proxy.SetEncoded(&ctx.Response, enc, body)
		}
	} else {
		t1 := time.Now()
		ctx.Response.ResetBody()
		span := startSpan(ctx, "edge.splice")
		pg.Render(ctx.Response.BodyWriter(), variants)
		span.End()
		e.spliceDur.Observe(time.Since(t1).Seconds())
	}
	if e.cfg.DebugToken != "" && string(ctx.Request.Header.Peek("Segedge-Debug")) == e.cfg.DebugToken {
		var segs []byte
		for i, s := range rs.man.Segments {
			if res.IsMember(i) {
				if len(segs) > 0 {
					segs = append(segs, ' ')
				}
				segs = append(segs, s.Name...)
			}
		}
		rh.SetBytesV("Segedge-Debug-Segments", segs)
	}
	return true
}

// evaluate runs the ruleset once for this visitor and request into res. On failure res says
// "no segments, every error bit" and the page keeps its defaults (fail closed).
func (e *edge) evaluate(ctx *fasthttp.RequestCtx, rs *edgeRuleset, res *rules.Result) {
	t0 := time.Now()
	span := startSpan(ctx, "edge.eval")
	v := e.identify(ctx)
	var ent *replica.Entry
	if !v.new {
		ent = e.replica.Lookup(ctx, string(v.id))
	}
	req := reqSource{ctx: ctx, id: v.id, countryHeader: e.cfg.CountryHeader}
	var err error
	if ent != nil {
		err = rs.ev.Evaluate(ctx, entrySource{e: ent, r: e.replica, rs: rs}, req, time.Now(), res)
	} else {
		err = rs.ev.Evaluate(ctx, nil, req, time.Now(), res)
	}
	e.evalDur.Observe(time.Since(t0).Seconds())
	traceEval(span, rs.version, ent != nil, err)
	if err != nil {
		e.evalFailures.Inc()
		rs.man.Fail(res)
	}
}

// getSlot is GET /user/slots/{name}: the chosen variant of one slot for this visitor, so a client
// can refresh a slot in place. 204 means "keep the page's default".
func (e *edge) getSlot(ctx *fasthttp.RequestCtx, name string) {
	ctx.Response.Header.Set("Cache-Control", "private, no-store")
	rs := e.acquire()
	if rs == nil {
		ctx.SetStatusCode(fasthttp.StatusNoContent)
		return
	}
	defer rs.refs.Done()
	slot := -1
	for i, s := range rs.man.Slots {
		if s.Name == name {
			slot = i
		}
	}
	if slot < 0 {
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		ctx.SetBodyString("no such slot\n")
		return
	}
	res := rs.results.Get().(*rules.Result)
	defer rs.results.Put(res)
	e.evaluate(ctx, rs, res)
	c := res.Variants[slot]
	vset := rs.variants.Load()
	if c < 0 || int(c) >= len(vset.bytes[slot]) {
		ctx.SetStatusCode(fasthttp.StatusNoContent)
		return
	}
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.SetBody(vset.bytes[slot][c])
}

var variantsPool = sync.Pool{New: func() any { s := make([][]byte, 0, 8); return &s }}

// entrySource gives the evaluator a replica entry's feature values.
type entrySource struct {
	e  *replica.Entry
	r  *replica.Replica
	rs *edgeRuleset
}

func (s entrySource) Value(f profile.Feature, _ time.Time) (profile.Value, bool) {
	id, ok := s.rs.featByID[f]
	if !ok {
		return profile.Value{}, false
	}
	return s.r.Feature(s.e, id)
}

func (s entrySource) FeatureAt(i int, _ profile.Feature, _ time.Time) (profile.Value, bool) {
	return s.r.Feature(s.e, s.rs.featIDs[i])
}

// reqSource is the request context rules read (request.*), over the fasthttp request.
type reqSource struct {
	ctx           *fasthttp.RequestCtx
	id            []byte
	countryHeader string
}

func (r reqSource) Path() string    { return string(r.ctx.Path()) }
func (r reqSource) Country() string { return string(r.ctx.Request.Header.Peek(r.countryHeader)) }
func (r reqSource) Device() string {
	return device.ClassifyBytes(r.ctx.Request.Header.UserAgent()).String()
}
func (r reqSource) Hour() int   { return time.Now().UTC().Hour() }
func (r reqSource) Bucket() int { return identity.Bucket(r.id) }
func (r reqSource) Query(name string) (string, bool) {
	v := r.ctx.QueryArgs().Peek(name)
	return string(v), v != nil
}
func (r reqSource) Header(name string) (string, bool) {
	v := r.ctx.Request.Header.Peek(name)
	return string(v), v != nil
}
func (r reqSource) Cookie(name string) (string, bool) {
	v := r.ctx.Request.Header.Cookie(name)
	return string(v), v != nil
}
