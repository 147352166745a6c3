package proxy

import (
	"bytes"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/segedge/segedge/edge/compress"
	"github.com/segedge/segedge/edge/httpcache"
)

// With Config.Compress set, the cache holds identity bodies only and the proxy compresses what it
// serves from the cache for each client (Accept-Encoding), the way a CDN does: the upstream is
// asked for identity when the cache fills, and the Accept-Encoding in a request is read as
// "identity" when the cache matches Vary, so an upstream's "Vary: Accept-Encoding" does not split
// the cache into one copy per browser's header. Requests that pass the cache (uncacheable URLs,
// other methods) go to the upstream with the client's own Accept-Encoding, untouched.

var identityValue = []byte("identity")

// identityCoding is a request's header as the cache sees it when the proxy compresses: the
// client's, with Accept-Encoding read as "identity".
type identityCoding struct{ h *fasthttp.RequestHeader }

func (r identityCoding) Peek(key string) []byte {
	if len(key) == len("Accept-Encoding") && strings.EqualFold(key, "Accept-Encoding") {
		return identityValue
	}
	return r.h.Peek(key)
}

// cacheHeader is the request header the cache matches Vary against.
func (p *Proxy) cacheHeader(ctx *fasthttp.RequestCtx) httpcache.RequestHeader {
	return p.cacheHeaderOf(&ctx.Request.Header)
}

// cacheHeaderOf is cacheHeader for a request header of our own (a background refresh's copy,
// which outlives the client's request).
func (p *Proxy) cacheHeaderOf(h *fasthttp.RequestHeader) httpcache.RequestHeader {
	if p.cfg.Compress != nil {
		return identityCoding{h}
	}
	return h
}

// Coding is the content coding in which entry e is served to ctx's client: Identity unless
// compression is on, the client accepts gzip or brotli, and e is a 200 with a compressible,
// not already encoded body of at least compress.MinSize bytes (for a page that is personalized,
// the stored body's size stands for the output's).
func (p *Proxy) Coding(ctx *fasthttp.RequestCtx, e *httpcache.Entry) compress.Encoding {
	if p.cfg.Compress == nil || e.Status != fasthttp.StatusOK || len(e.Body) < compress.MinSize || ctx.IsHead() {
		return compress.Identity
	}
	enc := compress.Negotiate(ctx.Request.Header.Peek("Accept-Encoding"))
	if enc == compress.Identity {
		return enc
	}
	var ct string
	for i := range e.Header {
		f := &e.Header[i]
		switch {
		case strings.EqualFold(f.Name, "Content-Encoding"):
			return compress.Identity // stored encoded (an upstream that ignored our identity request)
		case strings.EqualFold(f.Name, "Content-Type"):
			ct = f.Value
		}
	}
	if !compress.Compressible(ct) {
		return compress.Identity
	}
	return enc
}

// Compressing says whether the proxy keeps compressed (and personalized) bodies: Config.Compress is set.
func (p *Proxy) Compressing() bool { return p.cfg.Compress != nil }

// Compressed returns the body of entry e's variant compressed with enc, from the compressed-body
// cache, or made from identity() on a miss and stored. variant is 0 for e's own body; a
// personalized page passes what identifies its output among e's variants (and may ask for
// enc Identity: its rendered bytes are kept as they are).
func (p *Proxy) Compressed(e *httpcache.Entry, variant uint64, enc compress.Encoding, identity func() []byte) []byte {
	k := compress.Key{Entry: e.ID, Variant: variant, Enc: enc}
	if b, ok := p.cfg.Compress.Get(k); ok {
		return b
	}
	return p.cfg.Compress.Compress(k, identity())
}

// SetEncoded sets body, compressed with enc, as the response and says so in the headers:
// Content-Encoding, Accept-Encoding in Vary, and a weak ETag (the compressed bytes are not the
// stored representation's; weak comparison still lets the client revalidate, as with nginx).
func SetEncoded(r *fasthttp.Response, enc compress.Encoding, body []byte) {
	r.SetBodyRaw(body)
	r.Header.Set("Content-Encoding", enc.String())
	addVary(&r.Header, "Accept-Encoding")
	if et := r.Header.Peek("ETag"); len(et) > 0 && et[0] == '"' {
		r.Header.Set("ETag", "W/"+string(et))
	}
}

// addVary adds name to the response's Vary unless it is listed already (or Vary is "*").
func addVary(h *fasthttp.ResponseHeader, name string) {
	v := h.Peek("Vary")
	if len(v) == 0 {
		h.Set("Vary", name)
		return
	}
	for _, n := range bytes.Split(v, []byte{','}) {
		if n = bytes.TrimSpace(n); string(n) == "*" || strings.EqualFold(string(n), name) {
			return
		}
	}
	h.Set("Vary", string(v)+", "+name)
}
