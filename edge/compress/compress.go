// Package compress is the edge's content coding: it chooses gzip or brotli from a client's
// Accept-Encoding, compresses bodies, and keeps compressed bodies in a cache bounded by bytes, so
// a cached page (or one personalized combination of it) is compressed once, not per request.
//
// The HTTP cache always stores the identity body (the edge asks the upstream for identity when it
// fills the cache): the page compiler needs plain HTML, and one stored body serves every coding.
package compress

import (
	"fmt"

	"github.com/maypok86/otter/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// Encoding is a content coding the edge produces.
type Encoding uint8

// Encodings, in the edge's order of preference when a client weighs them equally.
const (
	Identity Encoding = iota
	Gzip
	Brotli
)

// String is the coding's token in Accept-Encoding and Content-Encoding.
func (e Encoding) String() string {
	switch e {
	case Gzip:
		return "gzip"
	case Brotli:
		return "br"
	}
	return "identity"
}

// MinSize is the smallest body worth compressing: below it, the coding's framing and the
// client's work cost more than the bytes saved.
const MinSize = 256

// Negotiate chooses the coding for a response from the request's Accept-Encoding (RFC 9110
// §12.5.3): the acceptable coding (q > 0) with the highest weight, brotli before gzip on a tie,
// "*" standing for any coding not named. No header, or nothing acceptable, is Identity. It does
// not allocate.
func Negotiate(accept []byte) Encoding {
	qGzip, qBr, qAny := -1, -1, -1 // weights in thousandths; -1: not named
	for len(accept) > 0 {
		var item []byte
		if i := indexByte(accept, ','); i >= 0 {
			item, accept = accept[:i], accept[i+1:]
		} else {
			item, accept = accept, nil
		}
		coding, q := parseItem(item)
		switch {
		case equalFold(coding, "gzip"), equalFold(coding, "x-gzip"):
			qGzip = max(qGzip, q)
		case equalFold(coding, "br"):
			qBr = max(qBr, q)
		case string(coding) == "*":
			qAny = q
		}
	}
	if qGzip < 0 {
		qGzip = qAny
	}
	if qBr < 0 {
		qBr = qAny
	}
	switch {
	case qBr > 0 && qBr >= qGzip:
		return Brotli
	case qGzip > 0:
		return Gzip
	}
	return Identity
}

// parseItem splits "coding;q=0.5" into the coding and its weight in thousandths (1000 without q;
// 0 for a malformed q, so a coding with a broken weight is never chosen).
func parseItem(item []byte) ([]byte, int) {
	item = trim(item)
	coding, params := item, []byte(nil)
	if i := indexByte(item, ';'); i >= 0 {
		coding, params = trim(item[:i]), item[i+1:]
	}
	q := 1000
	for len(params) > 0 {
		var p []byte
		if i := indexByte(params, ';'); i >= 0 {
			p, params = trim(params[:i]), params[i+1:]
		} else {
			p, params = trim(params), nil
		}
		if len(p) >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=' {
			q = parseQ(trim(p[2:]))
		}
	}
	return coding, q
}

// parseQ parses a qvalue ("0", "0.5", "1", "1.000") into thousandths; anything else is 0.
func parseQ(b []byte) int {
	if len(b) == 0 || len(b) > 5 || (b[0] != '0' && b[0] != '1') {
		return 0
	}
	q := int(b[0]-'0') * 1000
	if len(b) == 1 {
		return q
	}
	if b[1] != '.' {
		return 0
	}
	scale := 100
	for _, c := range b[2:] {
		if c < '0' || c > '9' {
			return 0
		}
		q += int(c-'0') * scale
		scale /= 10
	}
	return min(q, 1000)
}

func indexByte[T ~string | ~[]byte](b T, c byte) int {
	for i := 0; i < len(b); i++ {
		if b[i] == c {
			return i
		}
	}
	return -1
}

func trim[T ~string | ~[]byte](b T) T {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

func equalFold[T ~string | ~[]byte](b T, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// Compressible says whether a response of this Content-Type is worth compressing: text, and the
// structured text formats (JSON, JavaScript, XML, SVG). Images, video, fonts in woff2 and
// archives are compressed already.
func Compressible(contentType string) bool {
	ct := trim(contentType)
	if i := indexByte(ct, ';'); i >= 0 {
		ct = trim(ct[:i])
	}
	if len(ct) >= 5 && equalFold(ct[:5], "text/") {
		return true
	}
	for _, s := range [...]string{"application/json", "application/javascript", "application/xml",
		"application/xhtml+xml", "application/ld+json", "application/manifest+json", "image/svg+xml",
		"application/rss+xml", "application/atom+xml", "application/wasm"} {
		if equalFold(ct, s) {
			return true
		}
	}
	return false
}

// Levels: brotli 5 and gzip 6 compress a 50 KB page in about a millisecond, once per cached
// body, and come within a few percent of the best levels' size.
const (
	gzipLevel   = fasthttp.CompressDefaultCompression
	brotliLevel = 5
)

// Append appends src compressed with enc to dst. Identity appends src as it is.
func Append(dst []byte, enc Encoding, src []byte) []byte {
	switch enc {
	case Gzip:
		return fasthttp.AppendGzipBytesLevel(dst, src, gzipLevel)
	case Brotli:
		return fasthttp.AppendBrotliBytesLevel(dst, src, brotliLevel)
	}
	return append(dst, src...)
}

// Key names one compressed body: the cache entry it was made from (its id, unique per stored
// entry), the variant of that entry (0 for the entry's own body; a hash of the chosen slot
// variants and the ruleset version for a personalized page), and the coding.
type Key struct {
	Entry   uint64
	Variant uint64
	Enc     Encoding
}

// DefaultMaxBytes bounds the compressed bodies kept when Config.MaxBytes is zero.
const DefaultMaxBytes = 64 << 20

// Cache keeps compressed bodies, and the rendered identity bytes of personalized pages per variant
// combination, bounded by bytes (otter's W-TinyLFU evicts the least useful).
// Entries are immutable byte slices: a hit is served without copying.
type Cache struct {
	store *otter.Cache[Key, []byte]
	m     metrics
}

type metrics struct {
	hits, misses prometheus.Counter
	compressed   *prometheus.CounterVec
	in, out      prometheus.Counter
}

// New makes a cache of at most maxBytes compressed bytes (DefaultMaxBytes if zero) and registers
// its metrics with reg.
func New(maxBytes uint64, reg prometheus.Registerer) (*Cache, error) {
	if maxBytes == 0 {
		maxBytes = DefaultMaxBytes
	}
	store, err := otter.New(&otter.Options[Key, []byte]{
		MaximumWeight: maxBytes,
		Weigher:       func(_ Key, b []byte) uint32 { return uint32(min(len(b)+64, 1<<32-1)) },
	})
	if err != nil {
		return nil, fmt.Errorf("compressed body cache: %w", err)
	}
	c := &Cache{store: store}
	c.m.hits = prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_compress_cache_hits_total",
		Help: "Compressed responses served from the compressed-body cache."})
	c.m.misses = prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_compress_cache_misses_total",
		Help: "Compressed responses (and identity copies of personalized pages) that had to be made first."})
	c.m.compressed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segedge_edge_compressions_total",
		Help: "Bodies compressed, by coding."}, []string{"encoding"})
	c.m.in = prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_compress_input_bytes_total",
		Help: "Bytes given to the compressor."})
	c.m.out = prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_compress_output_bytes_total",
		Help: "Bytes the compressor produced (output/input is the compression ratio)."})
	if reg != nil {
		for _, col := range []prometheus.Collector{c.m.hits, c.m.misses, c.m.compressed, c.m.in, c.m.out} {
			if err := reg.Register(col); err != nil {
				return nil, fmt.Errorf("compress metrics: %w", err)
			}
		}
	}
	return c, nil
}

// Get returns the compressed body stored under k.
func (c *Cache) Get(k Key) ([]byte, bool) {
	b, ok := c.store.GetIfPresent(k)
	if ok {
		c.m.hits.Inc()
	}
	return b, ok
}

// Compress compresses src with k.Enc, stores the result under k (when k.Entry is not 0, i.e. the
// body belongs to a stored entry) and returns it. The result must not be modified. With k.Enc
// Identity, src itself is kept (a personalized page's rendered bytes): the caller gives it up.
func (c *Cache) Compress(k Key, src []byte) []byte {
	c.m.misses.Inc()
	out := src
	if k.Enc != Identity {
		out = Append(make([]byte, 0, len(src)/3+64), k.Enc, src)
	}
	c.m.compressed.WithLabelValues(k.Enc.String()).Inc()
	c.m.in.Add(float64(len(src)))
	c.m.out.Add(float64(len(out)))
	if k.Entry != 0 {
		c.store.Set(k, out)
	}
	return out
}
