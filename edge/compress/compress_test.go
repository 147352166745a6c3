package compress

import (
	"bytes"
	"compress/gzip"
	"io"
	"strings"
	"testing"

	"github.com/andybalholm/brotli"
	"github.com/prometheus/client_golang/prometheus"
)

func TestNegotiate(t *testing.T) {
	for _, tc := range []struct {
		accept string
		want   Encoding
	}{
		{"", Identity},
		{"identity", Identity},
		{"gzip", Gzip},
		{"GZIP", Gzip},
		{"x-gzip", Gzip},
		{"br", Brotli},
		{"gzip, deflate, br", Brotli},               // browsers: brotli wins the tie
		{"gzip, deflate, br, zstd", Brotli},         // unknown codings are ignored
		{"br;q=0.5, gzip", Gzip},                    // weights decide
		{"br;q=1.0, gzip;q=0.8", Brotli},            //
		{"gzip;q=0, br;q=0", Identity},              // q=0 means "not acceptable"
		{"*", Brotli},                               // anything
		{"*;q=0.1, gzip;q=0.5", Gzip},               // named beats wildcard weight
		{"*;q=0", Identity},                         //
		{"gzip;q=0, *", Brotli},                     // gzip refused, br through *
		{"deflate", Identity},                       // not produced by the edge
		{"gzip;q=abc", Identity},                    // a malformed weight is never chosen
		{"gzip;q=2", Identity},                      // out of range
		{" gzip ; q=0.001 ", Gzip},                  // spaces and tiny weights
		{",,,", Identity},                           // empty items
		{"br;level=5;q=0.9, gzip;q=0.9", Brotli},    // other parameters are skipped
		{"gzip;q=0.9, br;q=0.95", Brotli},           //
		{"gzip;q=1, br;q=0.999", Gzip},              //
		{"gzip, gzip;q=0", Gzip},                    // the best weight given counts
		{strings.Repeat("x,", 1000) + "br", Brotli}, // long headers
	} {
		if got := Negotiate([]byte(tc.accept)); got != tc.want {
			t.Errorf("Negotiate(%q) = %s, want %s", tc.accept, got, tc.want)
		}
	}
}

func TestNegotiateDoesNotAllocate(t *testing.T) {
	h := []byte("gzip, deflate, br;q=0.9, *;q=0.1")
	if n := testing.AllocsPerRun(100, func() { Negotiate(h) }); n != 0 {
		t.Fatalf("Negotiate allocates %v times", n)
	}
}

func TestCompressible(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/html; charset=utf-8": true,
		"TEXT/CSS":                 true,
		"application/json":         true,
		"application/javascript":   true,
		"image/svg+xml":            true,
		" application/xml ; x=y":   true,
		"image/png":                false,
		"font/woff2":               false,
		"application/octet-stream": false,
		"":                         false,
		"application/zip":          false,
	} {
		if got := Compressible(ct); got != want {
			t.Errorf("Compressible(%q) = %v, want %v", ct, got, want)
		}
	}
}

func decode(t *testing.T, enc Encoding, b []byte) []byte {
	t.Helper()
	var r io.Reader
	switch enc {
	case Gzip:
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	case Brotli:
		r = brotli.NewReader(bytes.NewReader(b))
	default:
		return b
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decode %s: %v", enc, err)
	}
	return out
}

func TestCompressRoundTripsAndIsCached(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, err := New(1<<20, reg)
	if err != nil {
		t.Fatal(err)
	}
	page := []byte(strings.Repeat("<p>segedge personalizes pages at the edge</p>\n", 500))
	for _, enc := range []Encoding{Gzip, Brotli} {
		k := Key{Entry: 7, Variant: 42, Enc: enc}
		if _, ok := c.Get(k); ok {
			t.Fatalf("%s: cached before it was compressed", enc)
		}
		out := c.Compress(k, page)
		if len(out) >= len(page)/5 {
			t.Errorf("%s: %d bytes from %d: not compressed", enc, len(out), len(page))
		}
		if got := decode(t, enc, out); !bytes.Equal(got, page) {
			t.Fatalf("%s: round trip changed the body", enc)
		}
		again, ok := c.Get(k)
		if !ok || !bytes.Equal(again, out) {
			t.Fatalf("%s: not served from the cache", enc)
		}
		// Another variant of the same entry is another body.
		if _, ok := c.Get(Key{Entry: 7, Variant: 43, Enc: enc}); ok {
			t.Fatalf("%s: variant 43 answered by variant 42", enc)
		}
	}
	// Entry 0 is a body that is not stored in the HTTP cache: compressed, never kept.
	c.Compress(Key{Entry: 0, Enc: Gzip}, page)
	if _, ok := c.Get(Key{Entry: 0, Enc: Gzip}); ok {
		t.Fatal("a body of no stored entry was cached")
	}
}

func BenchmarkNegotiate(b *testing.B) {
	h := []byte("gzip, deflate, br, zstd")
	for b.Loop() {
		Negotiate(h)
	}
}
