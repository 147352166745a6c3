// Command pathpromo is an example hand-written rule module: two segments
// whose logic CEL cannot express, because they loop over a string.
//
// Input convention (this module's own manifest):
//
//	slot 0  string  request.path
//	slot 1  string  the promo code the user typed (absent if none)
//
// Segments:
//
//	0  deep_browser  the path has at least 3 non-empty segments ("/a/b/c")
//	1  valid_promo   the promo code is 6–16 digits passing the Luhn checksum
//
// Slot 0 ("hero") shows variant 0 for valid_promo users, else the default.
// A promo code that contains something other than digits and spaces sets
// valid_promo's error bit.
//
// Build (a WASI reactor, loaded untrusted by the host):
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o pathpromo.wasm ./wasm/examples/pathpromo
package main

import (
	"errors"

	"github.com/segedge/segedge/wasm/guest"
)

// Segment and slot indexes.
const (
	segDeepBrowser = 0
	segValidPromo  = 1
	slotHero       = 0
)

func init() {
	guest.Register(guest.Shape{Segments: 2, Slots: 1}, evaluate)
}

func evaluate(in *guest.Input, out *guest.Output) error {
	if path, ok := in.String(0); ok {
		out.SetMember(segDeepBrowser, pathDepth(path) >= 3)
	}
	if code, ok := in.String(1); ok {
		valid, err := luhn(code)
		if err != nil {
			out.SetError(segValidPromo)
		} else if valid {
			out.SetMember(segValidPromo, true)
			out.Choose(slotHero, 0)
		}
	}
	return nil
}

// pathDepth counts the non-empty segments of a URL path, ignoring any query.
func pathDepth(path string) int {
	depth, inSegment := 0, false
	for i := 0; i < len(path); i++ {
		switch path[i] {
		case '?', '#':
			return depth
		case '/':
			inSegment = false
		default:
			if !inSegment {
				depth++
				inSegment = true
			}
		}
	}
	return depth
}

var errNotDigits = errors.New("promo code has characters other than digits and spaces")

// luhn reports whether code (digits, spaces ignored) is 6–16 digits long and
// passes the Luhn checksum.
func luhn(code string) (bool, error) {
	sum, n := 0, 0
	for i := len(code) - 1; i >= 0; i-- {
		c := code[i]
		if c == ' ' {
			continue
		}
		if c < '0' || c > '9' {
			return false, errNotDigits
		}
		d := int(c - '0')
		if n%2 == 1 {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		n++
	}
	return n >= 6 && n <= 16 && sum%10 == 0, nil
}

func main() {}
