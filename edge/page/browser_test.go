package page

import (
	"bytes"
	"strings"
	"testing"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// structuralDocuments are slots whose element a browser may close before its end tag (HTML's
// implied end tags). want is the slot's default, or "" when the slot must be dropped.
var structuralDocuments = []struct {
	doc, want string
}{
	{`<p data-seg-slot="w">para<div>block</div>rest</p>`, ""},
	{`<p data-seg-slot="w">para <b>bold</b> <a href=x>link</a></p>`, `para <b>bold</b> <a href=x>link</a>`},
	{`<p data-seg-slot="w">a<button><div>in button</div></button>b</p>`, `a<button><div>in button</div></button>b`},
	{`<p data-seg-slot="w">a<table><tr><td><div>x</div></td></tr></table>b</p>`, ""},
	{`<ul><li data-seg-slot="w">one<li>two</ul>`, ""},
	{`<ul><li data-seg-slot="w">one<span>x<li>two</ul>`, ""},
	{`<ul><li data-seg-slot="w">one</li><li>two</ul>`, "one"},
	{`<ul><li data-seg-slot="w">menu<ul><li>sub 1<li>sub 2</ul></li></ul>`, "menu<ul><li>sub 1<li>sub 2</ul>"},
	{`<dl><dt data-seg-slot="w">term<dd>def</dl>`, ""},
	{`<dl><dt data-seg-slot="w">term</dt><dd>def</dl>`, "term"},
	{`<h1 data-seg-slot="w">Title<h2>sub</h2></h1>`, ""},
	{`<h1 data-seg-slot="w">Title<p>x<h2>sub</h2></h1>`, ""},
	{`<h1 data-seg-slot="w">Title <span>s<h2>sub</h2></span></h1>`, "Title <span>s<h2>sub</h2></span>"},
	{`<a href=1 data-seg-slot="w">x<a href=2>y</a></a>`, ""},
	{`<a href=1 data-seg-slot="w">x<object><a href=2>y</a></object></a>`, "x<object><a href=2>y</a></object>"},
	{`<nobr data-seg-slot="w">a<nobr>b</nobr></nobr>`, ""},
	{`<button data-seg-slot="w">a<button>b</button></button>`, ""},
	{`<select><option data-seg-slot="w">a<option>b</select>`, ""},
	{`<select><option data-seg-slot="w">a</option><option>b</select>`, "a"},
	{`<select data-seg-slot="w"><option>a<option>b</select>`, "<option>a<option>b"},
	{`<select data-seg-slot="w"><select></select>`, ""},
	{`<table><tr><td data-seg-slot="w">a<td>b</tr></table>`, ""},
	{`<table><tr><td data-seg-slot="w">a</td><td>b</tr></table>`, "a"},
	{`<table><tr><td data-seg-slot="w"><table><tr><td>in</td></tr></table></td></tr></table>`, "<table><tr><td>in</td></tr></table>"},
	{`<table><tr data-seg-slot="w"><td>a<tr><td>b</table>`, ""},
	{`<table><tr data-seg-slot="w"><td>a</td><td>b</td></tr></table>`, "<td>a</td><td>b</td>"},
	{`<table data-seg-slot="w"><tr><td>cell</td></tr></table>`, "<tr><td>cell</td></tr>"},
	{`<table><tbody data-seg-slot="w"><tr><td>a</tbody><tbody><tr><td>b</table>`, "<tr><td>a"},
	{`<div data-seg-slot="w"><p>a<p>b<div>c</div></div>`, "<p>a<p>b<div>c</div>"},
	{`<div data-seg-slot="w"><svg><title><div>x</div></title></svg></div>`, "<svg><title><div>x</div></title></svg>"},
	{`<div data-seg-slot="w"><table><td>x</div><p>after</p>`, ""},
	{`<div data-seg-slot="w"><table><tr><td>x</td></tr></table></div>`, "<table><tr><td>x</td></tr></table>"},
	{`<div data-seg-slot="w"><table></div></table></div>`, "<table></div></table>"},
	{`<p><span data-seg-slot="w">a</p>b</span>`, ""},
	{`<div data-seg-slot="w">a</p>b</div>`, "a</p>b"},
	{`<div data-seg-slot="w"><b>x<div>y</b>z</div></div>`, "<b>x<div>y</b>z</div>"},
	{`<div data-seg-slot="w"><b>bold<i>both</b>italic</i></div>`, ""},
	{`<div data-seg-slot="w"><span>a<div>b</span>c</div></div>`, "<span>a<div>b</span>c</div>"},
	{`<div data-seg-slot="w"><ul><li>a</div></li></ul></div>`, "<ul><li>a"},
	{`<div data-seg-slot="w"><object><div>x</object></div>`, "<object><div>x</object>"},
	{`<p data-seg-slot="w">a<svg><div>b</div></svg>c</p>`, ""},
	{`<div data-seg-slot="w">a<svg><p>b</p></svg>c</div>`, "a<svg><p>b</p></svg>c"},
	{`<div data-seg-slot="w">a<svg><g><p>b</g></svg>c</div>`, "a<svg><g><p>b</g></svg>c"},
	{`<p data-seg-slot="w">a<svg><foreignObject><div>b</div></foreignObject></svg>c</p>`,
		"a<svg><foreignObject><div>b</div></foreignObject></svg>c"},
	{`<svg><g data-seg-slot="w"><p>b</p></g></svg>`, ""},
	{`<svg><g data-seg-slot="w"><path d="M0"/><foreignObject><p>b</p></foreignObject></g></svg>`,
		`<path d="M0"/><foreignObject><p>b</p></foreignObject>`},
	{`<div data-seg-slot="w"><math><mi><p>x</p></mi></math></div>`, "<math><mi><p>x</p></mi></math>"},
	{`<div data-seg-slot="w"><svg><title><p>x</p></title><style>a<b>c</style></svg></div>`,
		"<svg><title><p>x</p></title><style>a<b>c</style></svg>"},
	{`<div data-seg-slot="w"><svg><![CDATA[</div>]]></svg></div>`, "<svg><![CDATA[</div>]]></svg>"},
}

// TestSlotsAreWhatABrowserSees checks slots against the HTML parser x/net/html implements
// (the one browsers follow): the default must be exactly what the browser puts inside the
// slot element, and a spliced variant must end up exactly inside it.
func TestSlotsAreWhatABrowserSees(t *testing.T) {
	for _, tc := range structuralDocuments {
		p := Compile([]byte(tc.doc))
		i := p.SlotIndex("w")
		if tc.want == "" {
			if i >= 0 {
				t.Errorf("%q: slot %q found, want it dropped", tc.doc, p.Default(i))
			}
			continue
		}
		if i < 0 {
			t.Errorf("%q: slot dropped (%v), want default %q", tc.doc, p.Dropped(), tc.want)
			continue
		}
		if got := string(p.Default(i)); got != tc.want {
			t.Errorf("%q: default %q, want %q", tc.doc, got, tc.want)
		}
		if msg := browserDisagrees(p, i); msg != "" {
			t.Errorf("%q: %s", tc.doc, msg)
		}
	}
	docs := 0
	for _, tc := range oddDocuments {
		p := Compile([]byte(tc.doc))
		for i := range p.Slots() {
			docs++
			if msg := browserDisagrees(p, i); msg != "" {
				t.Errorf("%q, slot %q: %s", tc.doc, p.Slots()[i], msg)
			}
		}
	}
	if findCorpus() == "" {
		return
	}
	for _, in := range corpusTokenizerInputs(t) {
		p := Compile([]byte(`<!DOCTYPE html><body><div data-seg-slot="w">` + in.Input + `</div><p>after</p>`))
		if i := p.SlotIndex("w"); i >= 0 {
			docs++
			if msg := browserDisagrees(p, i); msg != "" {
				t.Errorf("%q wrapped in a slot: %s", in.Input, msg)
			}
		}
	}
	t.Logf("%d slots checked against the parser", docs)
}

// browserDisagrees parses the page and the page with slot i spliced, and describes how the
// browser's idea of the slot's content differs from the compiler's, or returns "".
func browserDisagrees(p *Page, i int) string {
	name := p.Slots()[i]
	orig, err := html.Parse(bytes.NewReader(p.Body()))
	if err != nil {
		return "" // x/net/html refuses documents nested more than 512 deep: nothing to compare
	}
	el := findSlotElement(orig, name)
	if el == nil {
		// The parser ignored the slot's start tag (a <td> outside a table, a second <body>):
		// there is no element to compare with. The splice still only replaces the source
		// between the tags, which the other tests check.
		return ""
	}
	if countSlotElements(orig, name) > 1 {
		return "" // duplicate names: which element is which occurrence is not told apart here
	}
	if el.Namespace != "" {
		return "" // foreign content: out of scope of the fragment comparison below
	}
	ctx := &html.Node{Type: html.ElementNode, Data: el.Data, DataAtom: atom.Lookup([]byte(el.Data))}
	switch ctx.DataAtom {
	case atom.Table, atom.Tbody, atom.Thead, atom.Tfoot, atom.Tr, atom.Colgroup, atom.Select, atom.Frameset:
		// The parser moves content these elements cannot hold (text in a <tbody> goes before
		// the table), so the default's subtree depends on the markup around the slot; only the
		// splice is checked.
	default:
		if reconstructsFormatting(p, i, name) {
			// Formatting elements left open before the slot (<a> closed by a </div>) are
			// reopened by the browser around whatever text the slot holds, and a formatting
			// element around the slot that is repeated inside it (<a><main slot><a>) is
			// restructured by the adoption agency algorithm; the default alone cannot
			// reproduce either, and the compiler does not track elements outside slots.
			break
		}
		if msg := defaultDisagrees(p, i, el, ctx); msg != "" {
			return msg
		}
	}

	// A spliced variant must be exactly the slot's content. The marker is a comment, valid in
	// any context (tables included), except in elements that hold text only.
	marker := "<!--MARKER-->"
	switch ctx.DataAtom {
	case atom.Textarea, atom.Title, atom.Script, atom.Style, atom.Xmp, atom.Iframe, atom.Noembed,
		atom.Noframes, atom.Noscript:
		marker = "MARKER"
	}
	variants := make([][]byte, len(p.Slots()))
	variants[i] = []byte(marker)
	spliced, err := html.Parse(bytes.NewReader(p.AppendTo(nil, variants)))
	if err != nil {
		return err.Error()
	}
	if got := renderChildren(findSlotElement(spliced, name)); got != marker {
		return "after splicing the slot holds " + quote(got)
	}
	return ""
}

// reconstructsFormatting reports whether, in the page up to the start of slot i, the slot
// element sits inside a formatting element, or text at the start of the slot ends up inside
// an element the browser reopens there (the "reconstruct the active formatting elements"
// step).
func reconstructsFormatting(p *Page, i int, name string) bool {
	for _, o := range p.occ {
		if o.slot != i {
			continue
		}
		doc := append(append([]byte(nil), p.Body()[:o.start]...), "x"...)
		root, err := html.Parse(bytes.NewReader(doc))
		if err != nil {
			return false
		}
		el := findSlotElement(root, name)
		return el != nil && (insideFormatting(el) || el.FirstChild != nil && el.FirstChild.Type == html.ElementNode)
	}
	return false
}

// insideFormatting reports whether n has a formatting element (<a>, <b>, ...) as an ancestor.
func insideFormatting(n *html.Node) bool {
	for p := n.Parent; p != nil; p = p.Parent {
		if p.Type == html.ElementNode && p.Namespace == "" && isFormatting(p.DataAtom) {
			return true
		}
	}
	return false
}

// defaultDisagrees compares the slot element's subtree in the page with the default parsed
// alone in the slot element's context.
func defaultDisagrees(p *Page, i int, el, ctx *html.Node) string {
	frag, err := html.ParseFragment(bytes.NewReader(p.Default(i)), ctx)
	if err != nil {
		return err.Error()
	}
	var alone strings.Builder
	for _, n := range frag {
		html.Render(&alone, n)
	}
	if inPage := renderChildren(el); inPage != alone.String() {
		return "in the page the slot holds " + quote(inPage) + ", the default alone parses as " + quote(alone.String())
	}
	return ""
}

func quote(s string) string { return `"` + s + `"` }

func findSlotElement(n *html.Node, name string) *html.Node {
	if n.Type == html.ElementNode {
		for _, a := range n.Attr {
			if a.Key == SlotAttr && a.Val == name {
				return n
			}
		}
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if f := findSlotElement(c, name); f != nil {
			return f
		}
	}
	return nil
}

func countSlotElements(n *html.Node, name string) int {
	c := 0
	if n.Type == html.ElementNode {
		for _, a := range n.Attr {
			if a.Key == SlotAttr && a.Val == name {
				c++
				break
			}
		}
	}
	for ch := n.FirstChild; ch != nil; ch = ch.NextSibling {
		c += countSlotElements(ch, name)
	}
	return c
}

func renderChildren(n *html.Node) string {
	var b strings.Builder
	if n != nil {
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			html.Render(&b, c)
		}
	}
	return b.String()
}
