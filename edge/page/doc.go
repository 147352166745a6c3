// Package page cuts a cached HTML page into static chunks and slots once, when the page enters
// the edge's cache, so that serving it personalized is only a matter of writing chunks.
//
// Why: tokenizing a 50 KB page with golang.org/x/net/html costs about half a millisecond,
// while writing it from chunks costs one copy of the page (about 2 µs for 50 KB), or only
// listing the pieces (tens of nanoseconds) when the caller does a vectored write. A page is
// served many times between cache fills, so the edge pays the parse once (Compile) and per
// request only chooses a variant per slot and writes (AppendTo, AppendChunks, Render), with no
// parsing and no allocation.
//
// A slot is an element carrying the attribute data-seg-slot="name":
//
//	<div data-seg-slot="hero">default content</div>
//
// Its inner content, everything between its start tag and its matching end tag, is the slot's
// default; a variant replaces exactly that inner content, the element's own tags and every
// other byte of the page stay as they were.
//
// The rules that decide what a slot is, chosen so that a doubtful slot is dropped (and keeps
// its default) rather than spliced into the wrong place:
//
//   - Markup is read with the x/net/html Tokenizer, so data-seg-slot inside a comment, a
//     <script> or <style>, a <textarea> or <title>, an attribute value or after <plaintext>
//     is text, not a slot.
//   - The matching end tag is found the way a browser's tree builder finds it, over the
//     elements opened inside the slot: an end tag closes the innermost open element of its
//     name and everything opened after it; an end tag whose element is out of scope (a
//     </div> inside a table cell inside the slot) is ignored, as a browser ignores it; a
//     mis-nested formatting end tag (<b>x<div>y</b>) closes only the <b>. The slot ends at
//     the end tag that closes its own element.
//   - An end tag inside a slot that matches nothing opened inside it, and that a browser
//     would not ignore there, would close an element outside the slot; such a slot is
//     dropped. (A browser ignores a stray </span> in a <div>: its search stops at the div.)
//     Stray </br> is read as <br>, and a stray </p> in a slot element that cannot sit inside
//     a <p> makes an empty <p>; neither closes anything.
//   - A start tag that makes a browser close the slot's element before its end tag (HTML's
//     implied end tags: <p data-seg-slot=x>a<div>, <li data-seg-slot=x>a<li>, a heading in a
//     heading, a cell in a cell, ...) drops the slot: the browser's slot would end there, so
//     splicing up to the end tag would replace content outside it.
//   - A slot never closed before the end of the body is dropped.
//   - A void element (<img data-seg-slot=x>) or a self-closing one (<div data-seg-slot=x/>)
//     has no inner content written by the author and is not a slot. (A browser would treat
//     <div .../> as an open <div> swallowing what follows; guessing where it ends is exactly
//     the kind of splice this package refuses to make.)
//   - Elements outside slots are not tracked, so a formatting element left open around a slot
//     (<a><main data-seg-slot=x><a>) that a browser restructures into the slot (the adoption
//     agency algorithm) goes unnoticed: the splice replaces the source between the slot's
//     tags as always, but the browser's tree around it is not what the markup suggests.
//   - Nested slots: the outer slot wins. A data-seg-slot element inside a slot is part of the
//     outer slot's default and is reported in Dropped.
//   - Duplicate names: every occurrence is a slot of that name, and all of them receive the
//     same variant, because variants are indexed by name (Slots), not by occurrence.
//   - An element carrying data-seg-slot="" (empty name) is not a slot, and a slot with more
//     than MaxDepth elements nested inside it is dropped.
//   - Inside <svg> and <math> the tokenizer is told that raw-text elements such as <title> and
//     <style> hold markup and that CDATA sections are allowed, and inside integration points
//     (<foreignObject>, <mi>, ...) that content is HTML again, as in a browser. An HTML start
//     tag such as <div> in SVG ends the SVG, as in a browser; a slot whose own element is
//     ended that way is dropped. Outside slots this tracking is approximate (an unclosed <svg>
//     is only closed by </svg>), which can only cause a slot to be dropped or missed, never
//     the rest of the page to change.
//
// Tests and a fuzz target check these rules against the x/net/html tree builder (which follows
// the HTML standard browsers implement): for each slot found in the shared corpus, the tables
// and fuzzed documents, the default is exactly what the parser puts inside the slot element
// and a spliced variant ends up exactly inside it (for table-section and <select> slots, whose
// stray content the parser moves elsewhere, and in SVG/MathML, only the latter is checked). A variant has to be content
// its slot element can hold, as the default is (rows for a <tbody> slot, text for <title>).
//
// Whatever the markup, the output of a page with no variants chosen is the input,
// byte-for-byte: the chunks and slot defaults are sub-slices of the body that tile it exactly.
// Bodies that are not HTML should not be compiled at all (the caller decides by Content-Type);
// if they are, they simply have no slots, or only slots that are well-formed as HTML.
package page
