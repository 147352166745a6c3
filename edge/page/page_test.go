package page

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/net/html"
)

type wantSlot struct{ name, def string }

// oddDocuments are the markup cases the slot rules are about; each lists the slot occurrences
// (name and default) the page must have, in order, and how many data-seg-slot elements are
// reported as dropped.
var oddDocuments = []struct {
	name    string
	doc     string
	want    []wantSlot
	dropped int
}{
	{"plain slot", `<p>a</p><div data-seg-slot="hero">Hi <b>there</b></div><p>b</p>`,
		[]wantSlot{{"hero", "Hi <b>there</b>"}}, 0},
	{"nested same-name elements", `<div data-seg-slot="x"><div>in</div>tail</div>after</div>`,
		[]wantSlot{{"x", "<div>in</div>tail"}}, 0},
	{"empty default", `<div data-seg-slot="e"></div>`, []wantSlot{{"e", ""}}, 0},
	{"slot markup in a comment", `<!-- <div data-seg-slot="x">no</div> --><div>y</div>`, nil, 0},
	{"comment containing </div> inside a slot", `<div data-seg-slot=x><!-- </div> -->c</div>`,
		[]wantSlot{{"x", "<!-- </div> -->c"}}, 0},
	{"script holding </div> and slot markup inside a slot",
		`<div data-seg-slot="x"><script>var s = "</div><div data-seg-slot='y'>";</script>ok</div>`,
		[]wantSlot{{"x", `<script>var s = "</div><div data-seg-slot='y'>";</script>ok`}}, 0},
	{"slot markup in a script", `<script>document.write('<div data-seg-slot="x">a</div>')</script>`, nil, 0},
	{"slot markup in a style", `<style>/* <div data-seg-slot="x">a</div> */</style>`, nil, 0},
	{"slot markup in an attribute", `<a title='<div data-seg-slot="x">'>t</a></div>`, nil, 0},
	{"slot never closed", `<div data-seg-slot="x">never closed`, nil, 1},
	{"end tag of an outer element inside the slot", `<section><div data-seg-slot="x"><span>a</section></div>`, nil, 1},
	{"implied end tags inside the slot", `<div data-seg-slot="x"><p>a<p>b<li>c</div>d`,
		[]wantSlot{{"x", "<p>a<p>b<li>c"}}, 0},
	{"stray </p> inside the slot", `<div data-seg-slot=x>a</p>b</br></div>`,
		[]wantSlot{{"x", "a</p>b</br>"}}, 0},
	{"byte order mark", "\xEF\xBB\xBF<div data-seg-slot=x>bom</div>", []wantSlot{{"x", "bom"}}, 0},
	{"bytes that are not UTF-8", "<div data-seg-slot=\"x\">\xff\xfe caf\xe9</div>\xc3",
		[]wantSlot{{"x", "\xff\xfe caf\xe9"}}, 0},
	{"NUL bytes", "<div data-seg-slot=\"x\">a\x00b</div>\x00", []wantSlot{{"x", "a\x00b"}}, 0},
	{"huge attribute", `<div title="` + strings.Repeat("a", 16<<10) + `" data-seg-slot="x">big</div>`,
		[]wantSlot{{"x", "big"}}, 0},
	{"uppercase tags and attributes", `<DIV DATA-SEG-SLOT="x">Up<DIV>in</div></Div>`,
		[]wantSlot{{"x", "Up<DIV>in</div>"}}, 0},
	{"unquoted attributes", `<div data-seg-slot=hero class=a>u</div>`, []wantSlot{{"hero", "u"}}, 0},
	{"attribute without a value", `<div data-seg-slot>u</div>`, nil, 1},
	{"empty slot name", `<div data-seg-slot="">x</div>`, nil, 1},
	{"entity in the slot name", `<div data-seg-slot="a&amp;b">x</div>`, []wantSlot{{"a&b", "x"}}, 0},
	{"repeated attribute: the first wins", `<div data-seg-slot="a" data-seg-slot="b">x</div>`,
		[]wantSlot{{"a", "x"}}, 0},
	{"template slot", `<template data-seg-slot="t"><p>tpl</p></template>`, []wantSlot{{"t", "<p>tpl</p>"}}, 0},
	{"textarea slot holding markup", `<textarea data-seg-slot="ta"></div><b>x</textarea>`,
		[]wantSlot{{"ta", "</div><b>x"}}, 0},
	{"slot markup in a textarea", `<textarea><div data-seg-slot="x">no</div></textarea>`, nil, 0},
	{"title slot", `<title data-seg-slot="t">Shop</title>`, []wantSlot{{"t", "Shop"}}, 0},
	{"slot markup in a title", `<title>a <div data-seg-slot=x>b</div></title>`, nil, 0},
	{"slot markup in noscript", `<noscript><div data-seg-slot=x>b</div></noscript>`, nil, 0},
	{"slot markup after plaintext", `<plaintext><div data-seg-slot=x>no</div>`, nil, 0},
	{"plaintext after a slot", `<div data-seg-slot=x>a</div><plaintext></div>`, []wantSlot{{"x", "a"}}, 0},
	{"plaintext slot is never closed", `<plaintext data-seg-slot=x>a</plaintext>`, nil, 1},
	{"nested slots: the outer wins",
		`<div data-seg-slot="outer">a<span data-seg-slot="inner">b</span>c</div><i data-seg-slot="inner">d</i>`,
		[]wantSlot{{"outer", `a<span data-seg-slot="inner">b</span>c`}, {"inner", "d"}}, 1},
	{"self-closing slot element", `<div data-seg-slot="x"/>rest</div>`, nil, 1},
	{"void slot element", `<img data-seg-slot="x" src=a.png><br data-seg-slot=y>`, nil, 2},
	{"duplicate names", `<b data-seg-slot="d">1</b><i data-seg-slot="d">2</i><u data-seg-slot="e">3</u>`,
		[]wantSlot{{"d", "1"}, {"d", "2"}, {"e", "3"}}, 0},
	{"custom element slot", `<seg-box data-seg-slot="c"><seg-box>i</seg-box></seg-box>`,
		[]wantSlot{{"c", "<seg-box>i</seg-box>"}}, 0},
	{"svg title holds markup", `<svg><title data-seg-slot="s"><b>x</b></title></svg>`,
		[]wantSlot{{"s", "<b>x</b>"}}, 0},
	{"self-closing element inside svg slot", `<svg><g data-seg-slot="g"><path d="M0"/></g></svg>`,
		[]wantSlot{{"g", `<path d="M0"/>`}}, 0},
	{"CDATA in svg", `<svg><![CDATA[<g data-seg-slot="x">]]></svg><div data-seg-slot=y>z</div>`,
		[]wantSlot{{"y", "z"}}, 0},
	{"doctype and full document", "<!DOCTYPE html>\n<html><head><title>t</title></head><body>\n<main data-seg-slot=\"m\">\n<h1>Hello</h1>\n</main>\n</body></html>\n",
		[]wantSlot{{"m", "\n<h1>Hello</h1>\n"}}, 0},
	{"empty body", "", nil, 0},
	{"only text", "just text, no markup", nil, 0},
	{"truncated start tag", `<div data-seg-slot="x"`, nil, 0},
	{"truncated end tag", `<div data-seg-slot="x">a</di`, nil, 1},
	{"nesting at the depth limit", `<div data-seg-slot="x">` + strings.Repeat("<span>", MaxDepth-1) + `</div>`,
		[]wantSlot{{"x", strings.Repeat("<span>", MaxDepth-1)}}, 0},
	{"nesting beyond the depth limit", `<div data-seg-slot="x">` + strings.Repeat("<span>", MaxDepth) + `</div>`, nil, 1},
}

func TestCompileOddDocuments(t *testing.T) {
	for _, tc := range oddDocuments {
		t.Run(tc.name, func(t *testing.T) {
			p := Compile([]byte(tc.doc))
			var got []wantSlot
			for _, o := range p.occ {
				got = append(got, wantSlot{p.names[o.slot], tc.doc[o.start:o.end]})
			}
			if !slicesEqual(got, tc.want) {
				t.Errorf("slots = %q, want %q", got, tc.want)
			}
			if len(p.Dropped()) != tc.dropped {
				t.Errorf("dropped = %v, want %d", p.Dropped(), tc.dropped)
			}
			checkInvariants(t, p)
		})
	}
}

func TestMegabyteAttribute(t *testing.T) {
	doc := `<p>a</p><div data-x="` + strings.Repeat("<div data-seg-slot=y>", 50_000) + `" data-seg-slot="x">big</div>`
	p := Compile([]byte(doc))
	if p.Occurrences() != 1 || string(p.Default(0)) != "big" {
		t.Errorf("slots %q, want one, x, with default \"big\"", p.Slots())
	}
	checkInvariants(t, p)
}

func slicesEqual(a, b []wantSlot) bool {
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

func TestSpliceReplacesExactlyTheInnerContent(t *testing.T) {
	doc := `<html><body><div data-seg-slot="hero" class=h>Welcome</div><p>x</p>` +
		`<span data-seg-slot="promo">10% off</span><b data-seg-slot="hero">again</b></body></html>`
	p := Compile([]byte(doc))
	if got := p.Slots(); len(got) != 2 || got[0] != "hero" || got[1] != "promo" {
		t.Fatalf("Slots() = %q", got)
	}
	hero, promo := p.SlotIndex("hero"), p.SlotIndex("promo")
	if p.SlotIndex("missing") != -1 {
		t.Errorf("SlotIndex(missing) = %d, want -1", p.SlotIndex("missing"))
	}
	if got := string(p.Default(hero)); got != "Welcome" {
		t.Errorf("Default(hero) = %q", got)
	}
	if p.Default(7) != nil {
		t.Error("Default(out of range) is not nil")
	}
	tests := []struct {
		name     string
		variants [][]byte
		want     string
	}{
		{"no variants", nil, doc},
		{"all nil", [][]byte{nil, nil}, doc},
		{"hero only, both occurrences",
			variantsAt(2, hero, "<a href=/cart>Cart</a>"),
			`<html><body><div data-seg-slot="hero" class=h><a href=/cart>Cart</a></div><p>x</p>` +
				`<span data-seg-slot="promo">10% off</span><b data-seg-slot="hero"><a href=/cart>Cart</a></b></body></html>`},
		{"promo emptied", variantsAt(2, promo, ""),
			`<html><body><div data-seg-slot="hero" class=h>Welcome</div><p>x</p>` +
				`<span data-seg-slot="promo"></span><b data-seg-slot="hero">again</b></body></html>`},
		{"variants slice shorter than Slots", variantsAt(1, hero, "H"),
			`<html><body><div data-seg-slot="hero" class=h>H</div><p>x</p>` +
				`<span data-seg-slot="promo">10% off</span><b data-seg-slot="hero">H</b></body></html>`},
		{"extra variants ignored", [][]byte{nil, []byte("P"), []byte("extra")},
			`<html><body><div data-seg-slot="hero" class=h>Welcome</div><p>x</p>` +
				`<span data-seg-slot="promo">P</span><b data-seg-slot="hero">again</b></body></html>`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(p.AppendTo([]byte("prefix:"), tc.variants)); got != "prefix:"+tc.want {
				t.Errorf("AppendTo =\n%s\nwant\n%s", got, "prefix:"+tc.want)
			}
			if got := p.Len(tc.variants); got != len(tc.want) {
				t.Errorf("Len = %d, want %d", got, len(tc.want))
			}
			var buf bytes.Buffer
			n, err := p.Render(&buf, tc.variants)
			if err != nil || n != int64(len(tc.want)) || buf.String() != tc.want {
				t.Errorf("Render = %d, %v, %q", n, err, buf.String())
			}
		})
	}
}

func variantsAt(n, i int, v string) [][]byte {
	vs := make([][]byte, n)
	vs[i] = []byte(v)
	return vs
}

type failingWriter struct{ after int }

func (w *failingWriter) Write(b []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("connection reset")
	}
	w.after--
	return len(b), nil
}

func TestRenderReportsWriteErrors(t *testing.T) {
	p := Compile([]byte(`a<i data-seg-slot=s>b</i>c`))
	for after := 0; after < 3; after++ {
		if _, err := p.Render(&failingWriter{after: after}, nil); err == nil {
			t.Errorf("Render with a writer failing after %d writes: no error", after)
		}
	}
	if n, err := p.Render(&failingWriter{after: 3}, nil); err != nil || n != 26 {
		t.Errorf("Render = %d, %v; want 26, nil", n, err)
	}
}

func TestAppendToDoesNotAllocate(t *testing.T) {
	p := Compile([]byte(`<p>a</p><div data-seg-slot="hero">Hi</div><p>b</p><i data-seg-slot="x">y</i>`))
	variants := [][]byte{[]byte("<b>variant</b>"), nil}
	buf := make([]byte, 0, 1024)
	var allocs float64
	allocs = testing.AllocsPerRun(100, func() {
		buf = p.AppendTo(buf[:0], variants)
	})
	if allocs != 0 {
		t.Errorf("AppendTo allocates %v times per call, want 0", allocs)
	}
	chunks := make([][]byte, 0, 2*p.Occurrences()+1)
	allocs = testing.AllocsPerRun(100, func() {
		chunks = p.AppendChunks(chunks[:0], variants)
	})
	if allocs != 0 {
		t.Errorf("AppendChunks allocates %v times per call, want 0", allocs)
	}
	var w bytes.Buffer
	w.Grow(1024)
	allocs = testing.AllocsPerRun(100, func() {
		w.Reset()
		if _, err := p.Render(&w, variants); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Render allocates %v times per call, want 0", allocs)
	}
}

// checkInvariants verifies what must hold for every page, whatever its markup: with no
// variant the output is the body; a variant replaces exactly the inner content of each
// occurrence of its slot and nothing else; Len and Render agree with AppendTo.
func checkInvariants(tb testing.TB, p *Page) {
	tb.Helper()
	body := p.Body()
	if got := p.AppendTo(nil, nil); !bytes.Equal(got, body) {
		tb.Fatalf("passthrough broken: AppendTo(nil, nil) differs from the body\nbody: %q\ngot:  %q", body, got)
	}
	nils := make([][]byte, len(p.Slots()))
	if got := p.AppendTo(nil, nils); !bytes.Equal(got, body) {
		tb.Fatalf("passthrough broken with all-nil variants")
	}
	if p.Len(nil) != len(body) {
		tb.Fatalf("Len(nil) = %d, body has %d bytes", p.Len(nil), len(body))
	}
	prev := 0
	for _, o := range p.occ {
		if o.start < prev || o.end < o.start || o.end > len(body) {
			tb.Fatalf("occurrence [%d,%d) overlaps or leaves the body (prev end %d, len %d)", o.start, o.end, prev, len(body))
		}
		prev = o.end
	}
	marker := []byte("\x01SEGEDGE-MARKER\x02")
	for i := range p.Slots() {
		variants := make([][]byte, len(p.Slots()))
		variants[i] = marker
		got := p.AppendTo(nil, variants)
		// The reference splice: the body with each occurrence of slot i replaced by the marker.
		var want []byte
		prev, count := 0, 0
		for _, o := range p.occ {
			if o.slot != i {
				continue
			}
			want = append(want, body[prev:o.start]...)
			want = append(want, marker...)
			prev = o.end
			count++
		}
		want = append(want, body[prev:]...)
		if !bytes.Equal(got, want) {
			tb.Fatalf("splicing slot %q changed more than its inner content", p.Slots()[i])
		}
		if count == 0 {
			tb.Fatalf("slot %q has no occurrence", p.Slots()[i])
		}
		if !bytes.Contains(body, marker) && bytes.Count(got, marker) != count {
			tb.Fatalf("marker appears %d times, want once per occurrence (%d)", bytes.Count(got, marker), count)
		}
		var joined []byte
		for _, c := range p.AppendChunks(nil, variants) {
			joined = append(joined, c...)
		}
		if !bytes.Equal(joined, got) {
			tb.Fatalf("AppendChunks differs from AppendTo")
		}
		if p.Len(variants) != len(got) {
			tb.Fatalf("Len = %d, AppendTo wrote %d", p.Len(variants), len(got))
		}
		var buf bytes.Buffer
		if _, err := p.Render(&buf, variants); err != nil || !bytes.Equal(buf.Bytes(), got) {
			tb.Fatalf("Render differs from AppendTo (err %v)", err)
		}
	}
}

// TestTokenizerRawTilesInput guards the assumption the offsets rest on: the tokenizer's raw
// tokens, concatenated, are the input, for every html5lib tokenizer input and real page; only
// an unfinished token at the very end (e.g. "<a hr") yields no token, and those bytes simply
// stay in the last static chunk.
func TestTokenizerRawTilesInput(t *testing.T) {
	var inputs [][]byte
	for _, b := range corpusPages(t) {
		inputs = append(inputs, b)
	}
	for _, in := range corpusTokenizerInputs(t) {
		inputs = append(inputs, []byte(in.Input))
	}
	for _, tc := range oddDocuments {
		inputs = append(inputs, []byte(tc.doc))
	}
	for _, in := range inputs {
		z := html.NewTokenizer(bytes.NewReader(in))
		var got []byte
		for z.Next() != html.ErrorToken {
			got = append(got, z.Raw()...)
		}
		if !bytes.HasPrefix(in, got) {
			t.Errorf("raw tokens are not a prefix of the input\ninput: %q\ngot:   %q", in, got)
		}
	}
}

// TestTagNameMatchesTokenizer checks the compiler's allocation-free tag name against the
// tokenizer's own TagName on every tag of the corpus and the odd-markup table.
func TestTagNameMatchesTokenizer(t *testing.T) {
	inputs := [][]byte{[]byte("<A\x00b>x</A\x00B ><SVG/><x-Y\tz=1></x-y\n>")}
	for _, tc := range oddDocuments {
		inputs = append(inputs, []byte(tc.doc))
	}
	if findCorpus() != "" {
		for _, b := range corpusPages(t) {
			inputs = append(inputs, b)
		}
		for _, in := range corpusTokenizerInputs(t) {
			inputs = append(inputs, []byte(in.Input))
		}
	}
	var c compiler
	for _, in := range inputs {
		z := html.NewTokenizer(bytes.NewReader(in))
		off := 0
		for {
			tt := z.Next()
			if tt == html.ErrorToken {
				break
			}
			start := off
			off += len(z.Raw())
			if tt != html.StartTagToken && tt != html.EndTagToken && tt != html.SelfClosingTagToken {
				continue
			}
			want, _ := z.TagName()
			if _, got := c.tagName(in[start:off]); !bytes.Equal(got, want) {
				t.Errorf("tag name of %q = %q, tokenizer says %q", in[start:off], got, want)
			}
		}
	}
}

func TestPassthroughCorpusPages(t *testing.T) {
	for name, b := range corpusPages(t) {
		p := Compile(b)
		if len(p.Slots()) != 0 {
			t.Errorf("%s: found slots %q in a page without data-seg-slot", name, p.Slots())
		}
		checkInvariants(t, p)
		// The same page with a slot around its whole <body> content.
		withSlot := bytes.Replace(b, []byte("<body"), []byte(`<body data-seg-slot="body"`), 1)
		p = Compile(withSlot)
		checkInvariants(t, p)
		if bytes.Contains(b, []byte("</body>")) && p.SlotIndex("body") < 0 {
			t.Errorf("%s: <body data-seg-slot> not found as a slot (dropped: %v)", name, p.Dropped())
		}
	}
}

// TestPassthroughTokenizerCorpus compiles each html5lib tokenizer input as a document, wrapped
// inside a slot element, and next to (before and after) one.
func TestPassthroughTokenizerCorpus(t *testing.T) {
	const open, close = `<div data-seg-slot="w">`, `</div>`
	for _, in := range corpusTokenizerInputs(t) {
		docs := map[string]string{
			"as document": in.Input,
			"inside slot": open + in.Input + close,
			"after slot":  open + "d" + close + in.Input,
			"before slot": in.Input + open + "d" + close,
		}
		for how, doc := range docs {
			p := Compile([]byte(doc))
			func() {
				defer func() {
					if t.Failed() {
						t.Logf("input %s / %q, %s: %q", in.Source, in.Description, how, doc)
					}
				}()
				checkInvariants(t, p)
			}()
			if how == "after slot" && (p.Occurrences() < 1 || string(p.Default(0)) != "d") {
				t.Errorf("%q (%s): leading slot not found (dropped %v)", in.Description, how, p.Dropped())
			}
		}
	}
}

// TestChunksAliasTheBody checks that compiling copies nothing: every piece of the page is a
// sub-slice of the body it was compiled from.
func TestChunksAliasTheBody(t *testing.T) {
	body := []byte(`<p>a</p><div data-seg-slot="hero">Hi</div><p>b</p><i data-seg-slot="x">y</i>tail`)
	p := Compile(body)
	lo, hi := uintptr(unsafe.Pointer(unsafe.SliceData(body))), uintptr(unsafe.Pointer(unsafe.SliceData(body)))+uintptr(len(body))
	chunks := p.AppendChunks(nil, nil)
	if len(chunks) != 5 {
		t.Fatalf("got %d chunks, want 5 (3 static, 2 defaults)", len(chunks))
	}
	for _, c := range chunks {
		at := uintptr(unsafe.Pointer(unsafe.SliceData(c)))
		if at < lo || at+uintptr(len(c)) > hi {
			t.Errorf("chunk %q is not inside the body", c)
		}
	}
}

// TestConcurrentRendering renders one page from many goroutines with different variants, as
// the edge does; run with -race.
func TestConcurrentRendering(t *testing.T) {
	p := Compile([]byte(`<h1 data-seg-slot="hero">default</h1><p>body</p>`))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := fmt.Appendf(nil, "variant %d", g)
			want := fmt.Sprintf(`<h1 data-seg-slot="hero">variant %d</h1><p>body</p>`, g)
			buf := make([]byte, 0, 64)
			for range 200 {
				buf = p.AppendTo(buf[:0], [][]byte{v})
				if string(buf) != want {
					t.Errorf("goroutine %d got %q", g, buf)
					return
				}
			}
		}()
	}
	wg.Wait()
}
