package page

import (
	"bytes"
	"fmt"
	"io"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// SlotAttr is the attribute that marks an element as a slot; its value is the slot's name.
const SlotAttr = "data-seg-slot"

// MaxDepth is the deepest nesting of elements inside a slot; a slot with deeper content is
// dropped. It bounds the work per tag (end tags search the elements open inside the slot)
// and, like browsers' own limits on DOM depth, is far beyond what real pages use.
const MaxDepth = 512

// Page is an HTML body cut into static chunks and slot occurrences. It is immutable after
// Compile and safe for concurrent use. It keeps a reference to the body it was compiled from
// (every chunk is a sub-slice of it), so the caller must not modify that body afterwards.
type Page struct {
	body []byte
	// statics[i] is the text before occurrence i; statics[len(occ)] is the text after the last.
	statics [][]byte
	occ     []occurrence
	names   []string // unique slot names, in order of first occurrence; index = variant index
	dropped []Dropped
}

// occurrence is one slot element in the page: the byte range of its inner content and the
// index of its name in Page.names.
type occurrence struct {
	start, end int
	slot       int
}

// Dropped describes an element that carried data-seg-slot but is not a slot, and why. It is
// meant for operators' logs ("my slot never changes"), not for serving.
type Dropped struct {
	Name   string // the attribute's value
	Offset int    // byte offset of the element's start tag in the body
	Reason string
}

func (d Dropped) String() string {
	return fmt.Sprintf("slot %q at byte %d dropped: %s", d.Name, d.Offset, d.Reason)
}

// Compile parses body once and returns it cut into static chunks and slots. It never fails:
// markup it cannot make sense of yields fewer slots (see the package documentation), and a
// page with no slots is served as the body itself. The body is retained, not copied.
func Compile(body []byte) *Page {
	c := compiler{p: &Page{body: body}}
	c.run()
	c.p.build()
	return c.p
}

// openSlot is the slot being read: the stack of elements opened inside it, with the slot's
// own element at the bottom.
type openSlot struct {
	name   string
	offset int // start of the slot's start tag
	inner  int // start of the inner content
	stack  []elem
}

// elem is an element open inside a slot. name is the lower-cased tag name; a its atom (0 for
// names HTML does not know).
type elem struct {
	a       atom.Atom
	name    string
	foreign bool // an SVG or MathML element
	ip      bool // an HTML integration point (<foreignObject>, <mi>, ...)
	frame   bool // opening it pushed a frame (see compiler.frames)
}

type compiler struct {
	p    *Page
	open *openSlot
	// frames tracks SVG and MathML content: a frame per open <svg> or <math> and per HTML
	// integration point inside them (<foreignObject>, <mi>, ...), whose content is HTML again.
	// Outside slots it is approximate (only these elements are tracked); it decides how the
	// tokenizer reads raw-text elements and CDATA, and whether HTML's implied end tags apply.
	frames []frame
	name   []byte
}

type frame struct {
	a  atom.Atom
	ip bool // an HTML integration point
}

// inForeign reports whether the current position is SVG or MathML content.
func (c *compiler) inForeign() bool {
	n := len(c.frames)
	return n > 0 && !c.frames[n-1].ip
}

func (c *compiler) run() {
	z := html.NewTokenizer(bytes.NewReader(c.p.body))
	off := 0
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			// io.EOF is the normal end; with a bytes.Reader and no buffer limit there is no other
			// error, but should one appear, what was read so far is still correctly placed.
			break
		}
		start := off
		off += len(z.Raw())
		switch tt {
		case html.StartTagToken, html.SelfClosingTagToken:
			c.startTag(z, tt == html.SelfClosingTagToken, start, off)
		case html.EndTagToken:
			c.endTag(z, start, off)
		}
	}
	if c.open != nil {
		c.drop(c.open.name, c.open.offset, "no matching end tag before the end of the page")
		c.open = nil
	}
}

func (c *compiler) startTag(z *html.Tokenizer, selfClosing bool, start, end int) {
	raw := c.p.body[start:end]
	a, rawName := c.tagName(raw)
	foreign := c.inForeign()
	if foreign && isBreakout(a) {
		// An HTML start tag such as <div> or <p> in SVG or MathML (outside an integration
		// point) ends the foreign content: a browser closes the foreign elements and reads
		// the tag as HTML.
		c.leaveForeign()
		foreign = false
	}
	isForeignElem := foreign || a == atom.Svg || a == atom.Math
	e := elem{a: a, foreign: isForeignElem}
	if !selfClosing {
		switch {
		case a == atom.Svg || a == atom.Math:
			c.frames = append(c.frames, frame{a: a})
			e.frame = true
		case foreign && isIntegrationPoint(c.frames[len(c.frames)-1].a, a):
			c.frames = append(c.frames, frame{a: a, ip: true})
			e.frame, e.ip = true, true
		}
	}
	if isForeignElem {
		z.NextIsNotRawText() // a foreign <title> or <style> holds markup, not text
	}
	z.AllowCDATA(c.inForeign())
	// A self-closing tag only closes itself in foreign content; in HTML, <span/> opens a span.
	opens := !isVoid(a)
	if isForeignElem {
		opens = !selfClosing
	}

	name, isSlot := "", false
	if containsFold(raw, SlotAttr) { // cheap filter before asking the tokenizer for attributes
		name, isSlot = slotName(z)
	}
	if o := c.open; o != nil {
		if !foreign && o.impliedClose(a) {
			c.drop(o.name, o.offset, fmt.Sprintf("a <%s> inside its <%s> would close the <%s> in a browser",
				a, o.stack[0].name, o.stack[0].name))
			c.open = nil
			return
		}
		if isSlot {
			c.drop(name, start, fmt.Sprintf("inside slot %q, whose default it is part of", o.name))
		}
		if opens {
			if len(o.stack) >= MaxDepth {
				c.drop(o.name, o.offset, fmt.Sprintf("more than %d elements nested inside it", MaxDepth))
				c.open = nil
				return
			}
			e.name = tagString(a, rawName)
			o.stack = append(o.stack, e)
		}
		return
	}
	if !isSlot {
		return
	}
	switch {
	case name == "":
		c.drop(name, start, "empty slot name")
	case isVoid(a) && !isForeignElem:
		c.drop(name, start, "void element has no content")
	case selfClosing:
		c.drop(name, start, "self-closing element has no content")
	default:
		e.name = tagString(a, rawName)
		c.open = &openSlot{name: name, offset: start, inner: end, stack: []elem{e}}
	}
}

// leaveForeign closes the SVG and MathML elements up to the nearest integration point, as a
// browser does on an HTML start tag in foreign content; inside a slot it closes them there
// too, and drops the slot if its own element is one of them.
func (c *compiler) leaveForeign() {
	for n := len(c.frames); n > 0 && !c.frames[n-1].ip; n = len(c.frames) {
		c.frames = c.frames[:n-1]
	}
	o := c.open
	if o == nil {
		return
	}
	i := len(o.stack)
	for i > 0 && o.stack[i-1].foreign && !o.stack[i-1].ip {
		i--
	}
	if i == 0 {
		c.drop(o.name, o.offset, "an HTML element inside it ends the SVG or MathML its element belongs to")
		c.open = nil
		return
	}
	o.stack = o.stack[:i]
}

func (c *compiler) endTag(z *html.Tokenizer, start, end int) {
	defer func() { z.AllowCDATA(c.inForeign()) }()
	a, rawName := c.tagName(c.p.body[start:end])
	o := c.open
	if o == nil {
		c.closeFrame(a)
		return
	}
	name := tagString(a, rawName)
	// End tags follow the foreign-content rules when the current node is an SVG or MathML
	// element (integration points included), HTML's otherwise.
	if i, ok := o.findEnd(a, name, o.stack[len(o.stack)-1].foreign); ok {
		if i < 0 {
			return // a browser ignores this end tag (which also means it closes nothing outside)
		}
		e := o.stack[i]
		if i > 0 && isFormatting(a) && !e.foreign && hasAny(o.stack[i+1:], isSpecial) {
			// Mis-nested formatting (<b>x<div>y</b>): the adoption agency algorithm closes
			// the <b> but keeps the <div> open.
			o.stack = append(o.stack[:i], o.stack[i+1:]...)
			return
		}
		c.popTo(o, i)
		if i == 0 {
			c.p.addOccurrence(o.name, o.inner, start)
			c.open = nil
		}
		return
	}
	// The end tag matches nothing opened inside the slot.
	switch {
	case a == atom.Br:
		return // a browser reads a stray </br> as <br>
	case a == atom.P && closesP(o.stack[0].a):
		// A stray </p> makes an empty <p>; it could only close an outer <p>, and the slot's
		// own start tag already closed any that was open.
		return
	}
	c.drop(o.name, o.offset, fmt.Sprintf("</%s> inside it closes an element opened outside it", name))
	c.open = nil
	c.closeFrame(a)
}

// findEnd finds the element inside the slot that end tag a closes, as a browser does: in
// SVG/MathML first among the foreign elements on top (by name); otherwise, or once it reaches
// an HTML element, by HTML's rules, where foreign elements never match and integration points
// bound the search. It returns the element's index, or -1 with ok when a browser ignores the
// end tag there; ok is false when the end tag matches nothing inside the slot and is not
// ignored, so it would close something outside.
func (o *openSlot) findEnd(a atom.Atom, name string, foreign bool) (int, bool) {
	if foreign {
		for i := len(o.stack) - 1; i >= 0 && o.stack[i].foreign; i-- {
			if o.stack[i].name == name {
				return i, true
			}
			if i == 0 {
				return 0, false // every element in the slot is foreign: it continues outside
			}
		}
	}
	for i := len(o.stack) - 1; i >= 0; i-- {
		e := o.stack[i]
		switch {
		case e.foreign && e.ip:
			return -1, true // integration points are special and bound every scope
		case e.foreign:
			// SVG and MathML elements neither match nor stop HTML end tags.
		case e.name == name:
			return i, true
		case endTagStopsAt(a, e.a):
			return -1, true
		}
	}
	return 0, false
}

// popTo closes the elements o.stack[i:], and the SVG/MathML frames they opened.
func (c *compiler) popTo(o *openSlot, i int) {
	for j := len(o.stack) - 1; j >= i; j-- {
		if e := o.stack[j]; e.frame {
			if n := len(c.frames); n > 0 && c.frames[n-1].a == e.a {
				c.frames = c.frames[:n-1]
			}
		}
	}
	o.stack = o.stack[:i]
}

// closeFrame handles an end tag outside any slot: </svg> or </math> closes the innermost
// frame of that name and those opened after it; the end tag of an integration point closes it.
func (c *compiler) closeFrame(a atom.Atom) {
	for i := len(c.frames) - 1; i >= 0; i-- {
		if f := c.frames[i]; f.a == a {
			c.frames = c.frames[:i]
			return
		}
		if a != atom.Svg && a != atom.Math {
			return // only the innermost frame can be closed by an integration point's end tag
		}
	}
}

func (c *compiler) drop(name string, offset int, reason string) {
	c.p.dropped = append(c.p.dropped, Dropped{Name: name, Offset: offset, Reason: reason})
}

// slotName returns the value of the first data-seg-slot attribute of the current tag (a
// browser ignores repeated attributes after the first).
func slotName(z *html.Tokenizer) (string, bool) {
	for {
		key, val, more := z.TagAttr()
		if string(key) == SlotAttr {
			return string(val), true
		}
		if !more {
			return "", false
		}
	}
}

// tagName returns the atom and lower-cased name of the tag whose raw bytes (from the body)
// are raw, as the tokenizer's TagName would, but without its copy per tag: the name runs
// from after "<" or "</" to the first whitespace, "/" or ">", and a NUL in it stands for
// U+FFFD. The returned name is valid until the next call.
func (c *compiler) tagName(raw []byte) (atom.Atom, []byte) {
	i := 1
	if i < len(raw) && raw[i] == '/' {
		i++
	}
	c.name = c.name[:0]
	for ; i < len(raw); i++ {
		ch := raw[i]
		switch {
		case ch == ' ' || ch == '\n' || ch == '\t' || ch == '\f' || ch == '\r' || ch == '/' || ch == '>':
			return atom.Lookup(c.name), c.name
		case 'A' <= ch && ch <= 'Z':
			ch += 'a' - 'A'
		case ch == 0:
			c.name = append(c.name, "\uFFFD"...)
			continue
		}
		c.name = append(c.name, ch)
	}
	return atom.Lookup(c.name), c.name
}

// containsFold reports whether b contains the lower-case ASCII string s, ignoring ASCII case.
func containsFold(b []byte, s string) bool {
	for i := 0; i+len(s) <= len(b); i++ {
		j := 0
		for ; j < len(s); j++ {
			ch := b[i+j]
			if 'A' <= ch && ch <= 'Z' {
				ch += 'a' - 'A'
			}
			if ch != s[j] {
				break
			}
		}
		if j == len(s) {
			return true
		}
	}
	return false
}

// tagString names an element without allocating for the names HTML knows.
func tagString(a atom.Atom, raw []byte) string {
	if a != 0 {
		return a.String()
	}
	return string(raw)
}

func isVoid(a atom.Atom) bool {
	switch a {
	case atom.Area, atom.Base, atom.Br, atom.Col, atom.Embed, atom.Hr, atom.Img, atom.Input,
		atom.Keygen, atom.Link, atom.Meta, atom.Param, atom.Source, atom.Track, atom.Wbr:
		return true
	}
	return false
}

func (p *Page) addOccurrence(name string, start, end int) {
	slot := -1
	for i, n := range p.names {
		if n == name {
			slot = i
			break
		}
	}
	if slot < 0 {
		slot = len(p.names)
		p.names = append(p.names, name)
	}
	p.occ = append(p.occ, occurrence{start: start, end: end, slot: slot})
}

// build cuts the body into the static chunks around the occurrences, which the compiler
// found in document order and which never overlap (nested slots are not slots).
func (p *Page) build() {
	p.statics = make([][]byte, 0, len(p.occ)+1)
	prev := 0
	for _, o := range p.occ {
		p.statics = append(p.statics, p.body[prev:o.start:o.start])
		prev = o.end
	}
	p.statics = append(p.statics, p.body[prev:len(p.body):len(p.body)])
}

// Body returns the body the page was compiled from.
func (p *Page) Body() []byte { return p.body }

// Slots returns the page's slot names, each once, in order of first appearance. A variants
// slice passed to AppendTo, Render or Len is indexed like this slice. The caller must not
// modify it.
func (p *Page) Slots() []string { return p.names }

// SlotIndex returns the index of the named slot in Slots, or -1 if the page has no such slot.
// Resolve names once per compiled page, not per request.
func (p *Page) SlotIndex(name string) int {
	for i, n := range p.names {
		if n == name {
			return i
		}
	}
	return -1
}

// Occurrences returns how many slot elements the page has (a name may occur several times).
func (p *Page) Occurrences() int { return len(p.occ) }

// Default returns the default content of the first occurrence of slot i, or nil if i is out
// of range.
func (p *Page) Default(i int) []byte {
	for _, o := range p.occ {
		if o.slot == i {
			return p.body[o.start:o.end:o.end]
		}
	}
	return nil
}

// Dropped returns the elements that carried data-seg-slot but are not slots, with reasons.
func (p *Page) Dropped() []Dropped { return p.dropped }

// content returns what occurrence o renders as: its variant, or its default when the variant
// is nil or missing.
func (p *Page) content(o *occurrence, variants [][]byte) []byte {
	if o.slot < len(variants) && variants[o.slot] != nil {
		return variants[o.slot]
	}
	return p.body[o.start:o.end]
}

// Len returns the length of the page rendered with variants, e.g. for Content-Length.
func (p *Page) Len(variants [][]byte) int {
	n := len(p.statics[len(p.occ)])
	for i := range p.occ {
		n += len(p.statics[i]) + len(p.content(&p.occ[i], variants))
	}
	return n
}

// AppendTo appends the page to dst with variants[i] as the content of every occurrence of
// slot i (indexed like Slots); a nil or missing variant keeps the slot's default. With all
// variants nil the result is the body, byte-for-byte. It does not allocate when dst has room
// (see Len).
func (p *Page) AppendTo(dst []byte, variants [][]byte) []byte {
	for i := range p.occ {
		dst = append(dst, p.statics[i]...)
		dst = append(dst, p.content(&p.occ[i], variants)...)
	}
	return append(dst, p.statics[len(p.occ)]...)
}

// AppendChunks appends to dst the pieces of the page rendered with variants, in order, without
// copying any content: static chunks and defaults are sub-slices of the body, variants are
// passed through as given. Empty pieces are left out. It is meant for vectored writes
// (net.Buffers, writev), where it saves the copy AppendTo makes; it does not allocate when
// dst has room for 2*Occurrences()+1 pieces.
func (p *Page) AppendChunks(dst [][]byte, variants [][]byte) [][]byte {
	for i := range p.occ {
		if s := p.statics[i]; len(s) > 0 {
			dst = append(dst, s)
		}
		if c := p.content(&p.occ[i], variants); len(c) > 0 {
			dst = append(dst, c)
		}
	}
	if s := p.statics[len(p.occ)]; len(s) > 0 {
		dst = append(dst, s)
	}
	return dst
}

// Render writes the page to w like AppendTo, one Write per non-empty chunk, and returns the
// number of bytes written. It allocates nothing itself.
func (p *Page) Render(w io.Writer, variants [][]byte) (int64, error) {
	var n int64
	write := func(b []byte) error {
		if len(b) == 0 {
			return nil
		}
		m, err := w.Write(b)
		n += int64(m)
		if err != nil {
			return fmt.Errorf("write page: %w", err)
		}
		return nil
	}
	for i := range p.occ {
		if err := write(p.statics[i]); err != nil {
			return n, err
		}
		if err := write(p.content(&p.occ[i], variants)); err != nil {
			return n, err
		}
	}
	return n, write(p.statics[len(p.occ)])
}
