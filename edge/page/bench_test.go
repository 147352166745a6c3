package page

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"golang.org/x/net/html"
)

// splicePage builds a page of about 50 KB from the start of the real cloudflare.com page with
// three slots inserted before <div> start tags at roughly 10%, 50% and 90% of it (when the
// corpus is absent, from generated markup of the same shape).
func splicePage(tb testing.TB) []byte {
	tb.Helper()
	var src []byte
	if dir := findCorpus(); dir != "" {
		src = corpusPages(tb)["cloudflare.com.html"]
	} else {
		var b bytes.Buffer
		b.WriteString("<!DOCTYPE html><html><head><title>shop</title></head><body>")
		for i := 0; b.Len() < 60_000; i++ {
			fmt.Fprintf(&b, `<div class="card c%d"><a href="/p/%d"><img src="/i/%d.jpg" alt="item %d"></a><p>Item %d &amp; more</p></div>`+"\n", i, i, i, i, i)
		}
		b.WriteString("</body></html>")
		src = b.Bytes()
	}
	const size = 50_000
	page := append([]byte(nil), src[:bytes.IndexByte(src[size:], '>')+size+1]...)
	for _, frac := range []int{90, 50, 10} { // from the end, so earlier positions stay valid
		for at := len(page) * frac / 100; ; {
			i := bytes.Index(page[at:], []byte("<div"))
			if i < 0 {
				tb.Fatalf("no <div> after %d%% of the page", frac)
			}
			at += i
			slot := []byte(fmt.Sprintf(`<div data-seg-slot="s%d"><p>default content of slot %d</p></div>`, frac, frac))
			candidate := append(append(append([]byte(nil), page[:at]...), slot...), page[at:]...)
			if countSlots(candidate) == countSlots(page)+1 { // not inside a script, comment, ...
				page = candidate
				break
			}
			at++
		}
	}
	if n := countSlots(page); n != 3 {
		tb.Fatalf("benchmark page has %d slots, want 3", n)
	}
	return page
}

func countSlots(b []byte) int { return Compile(b).Occurrences() }

var spliceSink []byte

// BenchmarkSplice measures the per-request work: writing a ~50 KB compiled page with 3 slots,
// two of them replaced by variants, into a reused buffer.
func BenchmarkSplice(b *testing.B) {
	p := Compile(splicePage(b))
	variants := make([][]byte, len(p.Slots()))
	variants[0] = []byte(`<a href="/cart" class="hero">Your cart is waiting</a>`)
	variants[2] = []byte(`<section class="vip"><h2>Welcome back</h2><p>Free shipping for you.</p></section>`)
	buf := make([]byte, 0, p.Len(variants))
	b.SetBytes(int64(p.Len(variants)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		buf = p.AppendTo(buf[:0], variants)
	}
	spliceSink = buf
}

// BenchmarkRender is BenchmarkSplice through an io.Writer that keeps nothing, i.e. the cost
// of walking the chunks without the copy (as when the writer hands them to a socket).
func BenchmarkRender(b *testing.B) {
	p := Compile(splicePage(b))
	variants := make([][]byte, len(p.Slots()))
	variants[0] = []byte(`<a href="/cart" class="hero">Your cart is waiting</a>`)
	b.SetBytes(int64(p.Len(variants)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Render(io.Discard, variants); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSpliceChunks is BenchmarkSplice for vectored writes: the per-request work is
// listing the pieces (AppendChunks); the copy into the socket is the kernel's (writev).
func BenchmarkSpliceChunks(b *testing.B) {
	p := Compile(splicePage(b))
	variants := make([][]byte, len(p.Slots()))
	variants[0] = []byte(`<a href="/cart" class="hero">Your cart is waiting</a>`)
	variants[2] = []byte(`<section class="vip"><h2>Welcome back</h2><p>Free shipping for you.</p></section>`)
	chunks := make([][]byte, 0, 2*p.Occurrences()+1)
	b.SetBytes(int64(p.Len(variants)))
	b.ReportAllocs()
	for b.Loop() {
		chunks = p.AppendChunks(chunks[:0], variants)
	}
	chunksSink = chunks
}

var chunksSink [][]byte

// BenchmarkCompile measures the cache-fill cost on the three real corpus pages.
func BenchmarkCompile(b *testing.B) {
	pages := corpusPages(b)
	for _, name := range corpusPageNames {
		body := pages[name]
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				Compile(body)
			}
		})
	}
}

// BenchmarkTokenizeOnly is the floor under BenchmarkCompile: the x/net/html tokenizer walking
// the cloudflare.com page with nothing else done.
func BenchmarkTokenizeOnly(b *testing.B) {
	body := corpusPages(b)["cloudflare.com.html"]
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		z := html.NewTokenizer(bytes.NewReader(body))
		for z.Next() != html.ErrorToken {
			_ = z.Raw()
		}
	}
}

// BenchmarkSpliceCopyFloor is the floor under BenchmarkSplice: one copy of as many bytes as
// the spliced page has, on the same machine in the same run.
func BenchmarkSpliceCopyFloor(b *testing.B) {
	p := Compile(splicePage(b))
	src := make([]byte, p.Len(nil))
	dst := make([]byte, len(src))
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		copy(dst, src)
	}
}
