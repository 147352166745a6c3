package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
)

// deltaStamp is what loadgen reads of a delta: whose it is and when its event was accepted.
type deltaStamp struct {
	// UserID aliases the message body (or, for an id written with escapes, a decoded copy): it
	// is valid as long as the body is.
	UserID     []byte
	AcceptedAt int64 // Unix ms; 0 when the delta has none
}

// deltaStamps appends the stamps of a DELTAS message's deltas to dst. It reads both formats of
// core/delta (format 1, '[': an array of deltas; format 0, '{': one delta from an origin before
// batching) and only the two fields it needs, in a single pass over the bytes that allocates
// nothing (but for a user id written with escapes), because loadgen decodes every delta of the
// run on the machine under test: encoding/json, with reflection and a validating pre-pass, was a
// third of loadgen's CPU at 10k events/s and ~4x slower per message (BenchmarkDeltaStamps).
//
// The whole body is still checked to be JSON: a malformed message, or a user_id that is not a
// string or an accepted_at that is not an integer, returns dst unchanged and an error, as
// encoding/json did. Unlike encoding/json, keys match exactly (the origin writes them so) and a
// top-level value other than an object or an array is an error, as in core/delta.
func deltaStamps(b []byte, dst []deltaStamp) ([]deltaStamp, error) {
	s := scanner{b: b}
	n := len(dst)
	var err error
	s.space()
	switch s.peek() {
	case '[':
		dst, err = s.stampArray(dst)
	case '{':
		var d deltaStamp
		if d, err = s.stampObject(); err == nil {
			dst = append(dst, d)
		}
	default:
		err = s.fail("want a delta object or an array of them")
	}
	if err == nil {
		if s.space(); s.i < len(s.b) {
			err = s.fail("data after the message")
		}
	}
	if err != nil {
		return dst[:n], fmt.Errorf("decode delta message: %w", err)
	}
	return dst, nil
}

// maxDepth bounds the nesting skipValue follows, so garbage cannot exhaust the stack (as
// encoding/json does, at the same depth).
const maxDepth = 10000

// scanner reads JSON from b, position i.
type scanner struct {
	b []byte
	i int
}

// fail says what was wrong where.
func (s *scanner) fail(what string) error {
	return fmt.Errorf("offset %d: %s", s.i, what)
}

// peek is the byte at the position, 0 at the end.
func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// space skips JSON whitespace.
func (s *scanner) space() {
	i, b := s.i, s.b
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	s.i = i
}

// expect consumes c (after whitespace) or fails.
func (s *scanner) expect(c byte) error {
	s.space()
	if s.peek() != c {
		return s.fail(fmt.Sprintf("want %q", c))
	}
	s.i++
	return nil
}

// stampArray reads an array of deltas (format 1); a null element is a delta without stamps, as
// encoding/json decoded it.
func (s *scanner) stampArray(dst []deltaStamp) ([]deltaStamp, error) {
	s.i++ // '['
	if s.space(); s.peek() == ']' {
		s.i++
		return dst, nil
	}
	for {
		s.space()
		var d deltaStamp
		if s.peek() == 'n' {
			if err := s.literal("null"); err != nil {
				return dst, err
			}
		} else {
			var err error
			if d, err = s.stampObject(); err != nil {
				return dst, err
			}
		}
		dst = append(dst, d)
		s.space()
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return dst, nil
		default:
			return dst, s.fail("want ',' or ']' in the delta array")
		}
	}
}

// stampObject reads one delta object, keeping user_id and accepted_at and skipping the rest.
func (s *scanner) stampObject() (deltaStamp, error) {
	var d deltaStamp
	if err := s.expect('{'); err != nil {
		return d, err
	}
	if s.space(); s.peek() == '}' {
		s.i++
		return d, nil
	}
	for {
		s.space()
		key, _, err := s.str()
		if err != nil {
			return d, err
		}
		if err := s.expect(':'); err != nil {
			return d, err
		}
		s.space()
		switch string(key) { // no allocation: the compiler compares in place
		case "user_id":
			err = s.userID(&d)
		case "accepted_at":
			err = s.acceptedAt(&d)
		default:
			err = s.skipValue(0)
		}
		if err != nil {
			return d, err
		}
		s.space()
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return d, nil
		default:
			return d, s.fail("want ',' or '}' in a delta")
		}
	}
}

// userID reads the user_id value: a string, or null (which leaves it unset).
func (s *scanner) userID(d *deltaStamp) error {
	if s.peek() == 'n' {
		return s.literal("null")
	}
	start := s.i
	raw, escaped, err := s.str()
	if err != nil {
		return err
	}
	if !escaped {
		d.UserID = raw
		return nil
	}
	// Rare (the origin escapes only quotes, backslashes and control characters): let
	// encoding/json undo the escapes.
	var id string
	if err := json.Unmarshal(s.b[start:s.i], &id); err != nil {
		return fmt.Errorf("offset %d: user_id: %w", start, err)
	}
	d.UserID = []byte(id)
	return nil
}

// acceptedAt reads the accepted_at value: an integer that fits int64, or null (which leaves it
// unset). A fraction or an exponent is an error, as encoding/json has for an int64 field.
func (s *scanner) acceptedAt(d *deltaStamp) error {
	if s.peek() == 'n' {
		return s.literal("null")
	}
	start := s.i
	if err := s.number(); err != nil {
		return err
	}
	v, ok := parseInt64(s.b[start:s.i])
	if !ok {
		return fmt.Errorf("offset %d: accepted_at %.30q is not an int64", start, s.b[start:s.i])
	}
	d.AcceptedAt = v
	return nil
}

// parseInt64 parses a JSON integer (optional '-', digits, no fraction or exponent) that fits
// int64.
func parseInt64(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 {
		return 0, false
	}
	var u uint64
	for _, c := range b {
		if c < '0' || c > '9' || u > (math.MaxUint64-9)/10 {
			return 0, false
		}
		u = u*10 + uint64(c-'0')
	}
	switch {
	case neg && u <= 1<<63:
		return int64(-u), true // -(1<<63) wraps to itself, MinInt64
	case !neg && u <= math.MaxInt64:
		return int64(u), true
	}
	return 0, false
}

// skipValue checks and skips one JSON value.
func (s *scanner) skipValue(depth int) error {
	if depth > maxDepth {
		return s.fail("nested too deep")
	}
	switch c := s.peek(); {
	case c == '"':
		_, _, err := s.str()
		return err
	case c == '{':
		return s.skipContainer('}', depth, func() error {
			if _, _, err := s.str(); err != nil {
				return err
			}
			if err := s.expect(':'); err != nil {
				return err
			}
			s.space()
			return s.skipValue(depth + 1)
		})
	case c == '[':
		return s.skipContainer(']', depth, func() error { return s.skipValue(depth + 1) })
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	}
	return s.fail("want a JSON value")
}

// skipContainer skips an object or array whose opening byte is at the position, calling member
// (at the start of each member, after whitespace) for its members.
func (s *scanner) skipContainer(end byte, depth int, member func() error) error {
	s.i++
	if s.space(); s.peek() == end {
		s.i++
		return nil
	}
	for {
		s.space()
		if err := member(); err != nil {
			return err
		}
		s.space()
		switch s.peek() {
		case ',':
			s.i++
		case end:
			s.i++
			return nil
		default:
			return s.fail(fmt.Sprintf("want ',' or %q", end))
		}
	}
}

// str reads a string at the position and returns its raw content (between the quotes, escapes
// as written) and whether it holds escapes. Escapes are checked; UTF-8 is not (encoding/json
// replaces invalid bytes instead of failing).
func (s *scanner) str() (raw []byte, escaped bool, err error) {
	if s.peek() != '"' {
		return nil, false, s.fail("want a string")
	}
	start := s.i + 1
	b := s.b
	for i := start; i < len(b); {
		// The run of ordinary bytes, in locals: this loop is most of loadgen's decoding.
		for i < len(b) && b[i] >= 0x20 && b[i] != '"' && b[i] != '\\' {
			i++
		}
		if i == len(b) {
			break
		}
		switch c := b[i]; {
		case c == '"':
			s.i = i + 1
			return b[start:i], escaped, nil
		case c == '\\':
			escaped = true
			s.i = i
			if err := s.escape(); err != nil {
				return nil, false, err
			}
			i = s.i
		default:
			s.i = i
			return nil, false, s.fail("control character in a string")
		}
	}
	s.i = len(b)
	return nil, false, s.fail("unterminated string")
}

// escape checks the escape sequence at the position ('\' …) and skips it.
func (s *scanner) escape() error {
	if s.i+1 >= len(s.b) {
		return s.fail("unterminated escape")
	}
	switch s.b[s.i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		s.i += 2
		return nil
	case 'u':
		if s.i+6 > len(s.b) {
			return s.fail("short \\u escape")
		}
		for _, h := range s.b[s.i+2 : s.i+6] {
			if !isHex(h) {
				return s.fail("bad \\u escape")
			}
		}
		s.i += 6
		return nil
	}
	return s.fail("bad escape")
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// number checks and skips a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() error {
	if s.peek() == '-' {
		s.i++
	}
	switch c := s.peek(); {
	case c == '0':
		s.i++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		return s.fail("bad number")
	}
	if s.peek() == '.' {
		s.i++
		if !s.digits() {
			return s.fail("bad number fraction")
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.i++
		if c := s.peek(); c == '+' || c == '-' {
			s.i++
		}
		if !s.digits() {
			return s.fail("bad number exponent")
		}
	}
	return nil
}

// digits skips decimal digits and says whether there was one.
func (s *scanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

// literal consumes lit (true, false, null).
func (s *scanner) literal(lit string) error {
	if !bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
		return s.fail("bad literal")
	}
	s.i += len(lit)
	return nil
}
