// Package page cuts a cached HTML page into static chunks and slots once, when the page enters
// the edge's cache, so that serving it personalized is only a matter of writing chunks.
//
// Why: tokenizing a 45 KB page with golang.org/x/net/html costs hundreds of microseconds, while
// appending a handful of byte slices costs about a microsecond. A page is served many times
// between cache fills, so the edge pays the parse once (Compile) and per request only chooses
// a variant per slot and writes (AppendTo, Render), with no parsing and no allocation.
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
//   - The matching end tag is found by tracking the elements opened inside the slot: an end
//     tag closes the innermost open element of its name (and, as in a browser, anything opened
//     after it). A slot is closed by the end tag that closes its own element.
//   - An end tag inside a slot that matches nothing opened inside it would, in a browser,
//     close an element outside the slot; such a slot is dropped. Stray </p> and </br> are the
//     exception: a browser turns them into empty elements, so they close nothing.
//   - A slot never closed before the end of the body is dropped.
//   - A void element (<img data-seg-slot=x>) or a self-closing one (<div data-seg-slot=x/>)
//     has no inner content written by the author and is not a slot. (A browser would treat
//     <div .../> as an open <div> swallowing what follows; guessing where it ends is exactly
//     the kind of splice this package refuses to make.)
//   - Nested slots: the outer slot wins. A data-seg-slot element inside a slot is part of the
//     outer slot's default and is reported in Dropped.
//   - Duplicate names: every occurrence is a slot of that name, and all of them receive the
//     same variant, because variants are indexed by name (Slots), not by occurrence.
//   - An element carrying data-seg-slot="" (empty name) is not a slot, and a slot with more
//     than MaxDepth elements nested inside it is dropped.
//   - Inside <svg> and <math> the tokenizer is told that raw-text elements such as <title> and
//     <style> hold markup and that CDATA sections are allowed, as in an HTML parser's foreign
//     content. This is an approximation of the tree builder (it does not model HTML elements
//     breaking out of foreign content), which can only cause a slot to be dropped or missed,
//     never the rest of the page to change.
//
// Whatever the markup, the output of a page with no variants chosen is the input,
// byte-for-byte: the chunks and slot defaults are sub-slices of the body that tile it exactly.
// Bodies that are not HTML should not be compiled at all (the caller decides by Content-Type);
// if they are, they simply have no slots, or only slots that are well-formed as HTML.
package page
