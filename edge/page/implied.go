package page

import "golang.org/x/net/html/atom"

// impliedClose reports whether the start tag a, met inside the slot, makes a browser close the
// slot's element before its end tag (HTML's implied end tags: <p>a<div> closes the p, <li>a<li>
// closes the first li). The slot's content in the browser's tree then ends there, not at the
// end tag in the source, and splicing up to the end tag would replace more than the slot, so
// the slot is dropped. This follows the tree-construction rules for the common cases (p, li,
// dt/dd, headings, a, nobr, button, option, select, table parts) and the scopes that stop
// them; it is not a full tree builder.
func (o *openSlot) impliedClose(a atom.Atom) bool {
	inner := o.stack[1:]
	switch slot := o.stack[0].a; slot {
	case atom.P:
		return closesP(a) && !hasAny(inner, isButtonScopeBoundary)
	case atom.Li:
		return a == atom.Li && !hasAny(inner, func(e atom.Atom) bool {
			return e == atom.Li || isSpecial(e) && e != atom.Address && e != atom.Div && e != atom.P
		})
	case atom.Dd, atom.Dt:
		return (a == atom.Dd || a == atom.Dt) && !hasAny(inner, func(e atom.Atom) bool {
			return e == atom.Dd || e == atom.Dt || isSpecial(e) && e != atom.Address && e != atom.Div && e != atom.P
		})
	case atom.H1, atom.H2, atom.H3, atom.H4, atom.H5, atom.H6:
		// A heading start tag first closes a <p> in button scope, then closes the current
		// node if that is a heading.
		if i := lastIndex(inner, atom.P); i >= 0 && !hasAny(inner[i+1:], isButtonScopeBoundary) {
			inner = inner[:i]
		}
		return isHeading(a) && len(inner) == 0
	case atom.A, atom.Nobr:
		// A second <a> (or <nobr>) while the first is open runs the adoption agency
		// algorithm, which closes the first, unless a marker (cell, caption, object,
		// marquee, applet, template) lies between them.
		return a == slot && !hasAny(inner, isFormattingMarker)
	case atom.Button:
		return a == atom.Button && !hasAny(inner, isScopeBoundary)
	case atom.Option:
		return (a == atom.Option || a == atom.Optgroup) && len(inner) == 0
	case atom.Select:
		return a == atom.Select || a == atom.Input || a == atom.Keygen || a == atom.Textarea
	case atom.Td, atom.Th:
		return isTablePart(a) && !hasAny(inner, isTable)
	case atom.Tr:
		return isTablePart(a) && a != atom.Td && a != atom.Th && !hasAny(inner, isTable)
	case atom.Tbody, atom.Thead, atom.Tfoot:
		return isTablePart(a) && a != atom.Td && a != atom.Th && a != atom.Tr && !hasAny(inner, isTable)
	case atom.Caption:
		return isTablePart(a) && !hasAny(inner, isTable)
	}
	return false
}

func hasAny(stack []elem, f func(atom.Atom) bool) bool {
	for _, e := range stack {
		if f(e.a) {
			return true
		}
	}
	return false
}

func lastIndex(stack []elem, a atom.Atom) int {
	for i := len(stack) - 1; i >= 0; i-- {
		if stack[i].a == a {
			return i
		}
	}
	return -1
}

func isTable(a atom.Atom) bool { return a == atom.Table }

func isHeading(a atom.Atom) bool {
	switch a {
	case atom.H1, atom.H2, atom.H3, atom.H4, atom.H5, atom.H6:
		return true
	}
	return false
}

func isTablePart(a atom.Atom) bool {
	switch a {
	case atom.Caption, atom.Col, atom.Colgroup, atom.Tbody, atom.Td, atom.Tfoot, atom.Th, atom.Thead, atom.Tr:
		return true
	}
	return false
}

// closesP: start tags that close an open <p> in button scope.
func closesP(a atom.Atom) bool {
	switch a {
	case atom.Address, atom.Article, atom.Aside, atom.Blockquote, atom.Center, atom.Details,
		atom.Dialog, atom.Dir, atom.Div, atom.Dl, atom.Fieldset, atom.Figcaption, atom.Figure,
		atom.Footer, atom.Header, atom.Hgroup, atom.Main, atom.Menu, atom.Nav, atom.Ol, atom.P,
		atom.Search, atom.Section, atom.Summary, atom.Ul, atom.H1, atom.H2, atom.H3, atom.H4,
		atom.H5, atom.H6, atom.Pre, atom.Listing, atom.Form, atom.Plaintext, atom.Table, atom.Hr,
		atom.Xmp, atom.Li, atom.Dd, atom.Dt:
		return true
	}
	return false
}

// isScopeBoundary: the elements that bound "has an element in scope" (HTML namespace part).
func isScopeBoundary(a atom.Atom) bool {
	switch a {
	case atom.Applet, atom.Caption, atom.Html, atom.Table, atom.Td, atom.Th, atom.Marquee,
		atom.Object, atom.Template, atom.Svg, atom.Math:
		return true
	}
	return false
}

func isButtonScopeBoundary(a atom.Atom) bool { return a == atom.Button || isScopeBoundary(a) }

// isFormattingMarker: elements that push a marker onto the list of active formatting elements.
func isFormattingMarker(a atom.Atom) bool {
	switch a {
	case atom.Applet, atom.Object, atom.Marquee, atom.Template, atom.Td, atom.Th, atom.Caption:
		return true
	}
	return false
}

// isSpecial: HTML's "special" category (HTML namespace).
func isSpecial(a atom.Atom) bool {
	switch a {
	case atom.Address, atom.Applet, atom.Area, atom.Article, atom.Aside, atom.Base, atom.Basefont,
		atom.Bgsound, atom.Blockquote, atom.Body, atom.Br, atom.Button, atom.Caption, atom.Center,
		atom.Col, atom.Colgroup, atom.Dd, atom.Details, atom.Dir, atom.Div, atom.Dl, atom.Dt,
		atom.Embed, atom.Fieldset, atom.Figcaption, atom.Figure, atom.Footer, atom.Form, atom.Frame,
		atom.Frameset, atom.H1, atom.H2, atom.H3, atom.H4, atom.H5, atom.H6, atom.Head, atom.Header,
		atom.Hgroup, atom.Hr, atom.Html, atom.Iframe, atom.Img, atom.Input, atom.Keygen, atom.Li,
		atom.Link, atom.Listing, atom.Main, atom.Marquee, atom.Menu, atom.Meta, atom.Nav,
		atom.Noembed, atom.Noframes, atom.Noscript, atom.Object, atom.Ol, atom.P, atom.Param,
		atom.Plaintext, atom.Pre, atom.Script, atom.Search, atom.Section, atom.Select, atom.Source,
		atom.Style, atom.Summary, atom.Table, atom.Tbody, atom.Td, atom.Template, atom.Textarea,
		atom.Tfoot, atom.Th, atom.Thead, atom.Title, atom.Tr, atom.Track, atom.Ul, atom.Wbr, atom.Xmp,
		atom.Svg, atom.Math:
		return true
	}
	return false
}

// endTagStopsAt reports whether a browser, looking down the stack of open elements for the
// element an end tag a closes, gives up at element e, ignoring the end tag. End tags with
// "in scope" rules (</div>, </li>, </p>, </td>, formatting elements, ...) stop at scope
// boundaries (a <div> outside a <table> cannot be closed from inside its cells); any other
// end tag (</span>, </style>, custom elements) stops at the first special element.
func endTagStopsAt(a, e atom.Atom) bool {
	switch {
	case a == atom.P:
		return isButtonScopeBoundary(e)
	case a == atom.Li:
		return isScopeBoundary(e) || e == atom.Ol || e == atom.Ul
	case isTablePart(a) || a == atom.Table:
		return e == atom.Table || e == atom.Template || e == atom.Html
	case hasScopedEndTag(a) || isFormatting(a):
		return isScopeBoundary(e)
	}
	return isSpecial(e)
}

// hasScopedEndTag: elements whose end tag, in the body, closes them only if they are in scope.
func hasScopedEndTag(a atom.Atom) bool {
	switch a {
	case atom.Address, atom.Article, atom.Aside, atom.Blockquote, atom.Button, atom.Center,
		atom.Details, atom.Dialog, atom.Dir, atom.Div, atom.Dl, atom.Fieldset, atom.Figcaption,
		atom.Figure, atom.Footer, atom.Header, atom.Hgroup, atom.Listing, atom.Main, atom.Menu,
		atom.Nav, atom.Ol, atom.Pre, atom.Search, atom.Section, atom.Summary, atom.Ul, atom.Form,
		atom.Dd, atom.Dt, atom.H1, atom.H2, atom.H3, atom.H4, atom.H5, atom.H6, atom.Applet,
		atom.Marquee, atom.Object, atom.Body, atom.Html, atom.Template:
		return true
	}
	return false
}

// isFormatting: HTML's formatting elements, whose end tags run the adoption agency algorithm.
func isFormatting(a atom.Atom) bool {
	switch a {
	case atom.A, atom.B, atom.Big, atom.Code, atom.Em, atom.Font, atom.I, atom.Nobr, atom.S,
		atom.Small, atom.Strike, atom.Strong, atom.Tt, atom.U:
		return true
	}
	return false
}

// isBreakout: HTML start tags that end SVG or MathML content (the tree builder's "breakout"
// list; <font> with color, face or size attributes also breaks out, and is not modelled).
func isBreakout(a atom.Atom) bool {
	switch a {
	case atom.B, atom.Big, atom.Blockquote, atom.Body, atom.Br, atom.Center, atom.Code, atom.Dd,
		atom.Div, atom.Dl, atom.Dt, atom.Em, atom.Embed, atom.H1, atom.H2, atom.H3, atom.H4, atom.H5,
		atom.H6, atom.Head, atom.Hr, atom.I, atom.Img, atom.Li, atom.Listing, atom.Menu, atom.Meta,
		atom.Nobr, atom.Ol, atom.P, atom.Pre, atom.Ruby, atom.S, atom.Small, atom.Span, atom.Strong,
		atom.Strike, atom.Sub, atom.Sup, atom.Table, atom.Tt, atom.U, atom.Ul, atom.Var:
		return true
	}
	return false
}

// isIntegrationPoint reports whether element a inside root (<svg> or <math>) holds HTML:
// <foreignObject>, <desc> and <title> in SVG, <mi>, <mo>, <mn>, <ms> and <mtext> in MathML.
func isIntegrationPoint(root, a atom.Atom) bool {
	switch root {
	case atom.Svg:
		return a == atom.Foreignobject || a == atom.Desc || a == atom.Title
	case atom.Math:
		return a == atom.Mi || a == atom.Mo || a == atom.Mn || a == atom.Ms || a == atom.Mtext
	}
	return false
}
