package event

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// A small JSON scanner for the hot paths (request bodies, EVENTS messages). It is an
// optimisation only, never a second opinion: it accepts a strict subset of what encoding/json
// accepts and produces the same values, and whenever it meets anything it does not handle
// exactly like encoding/json (escapes in a key, a key that differs from a field name only in
// case, a string that needs unescaping, a number that does not fit a float64, deep nesting) it
// says so and the caller takes the encoding/json path, which also words every error. The fuzz
// targets compare both paths on arbitrary input.

// maxScanDepth is the nesting past which the scanner gives up (encoding/json allows 10000).
const maxScanDepth = 512

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// scanString scans the JSON string starting at b[i] == '"' and returns the index after its
// closing quote (-1 if invalid) and whether the raw bytes between the quotes are its value
// (no escapes, valid UTF-8).
func scanString(b []byte, i int) (int, bool) {
	i++
	start := i
	plain, ascii := true, true
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			if !ascii && plain {
				plain = utf8.Valid(b[start:i])
			}
			return i + 1, plain
		case c == '\\':
			plain = false
			i++
			if i >= len(b) {
				return -1, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				if i+4 >= len(b) {
					return -1, false
				}
				for _, h := range b[i+1 : i+5] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return -1, false
					}
				}
				i += 5
			default:
				return -1, false
			}
		case c < 0x20:
			return -1, false
		default:
			if c >= 0x80 {
				ascii = false
			}
			i++
		}
	}
	return -1, false
}

// scanNumber scans the JSON number starting at b[i]; -1 if it is not one.
func scanNumber(b []byte, i int) int {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i++; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		}
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return -1
		}
		for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return -1
		}
		for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		}
	}
	return i
}

func scanLiteral(b []byte, i int, lit string) int {
	if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
		return i + len(lit)
	}
	return -1
}

// scanValue checks the JSON value starting at b[i] (no leading space) and returns the index
// after it, or -1.
func scanValue(b []byte, i, depth int) int {
	if i >= len(b) {
		return -1
	}
	switch c := b[i]; {
	case c == '{' || c == '[':
		if depth >= maxScanDepth {
			return -1
		}
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == closer {
			return i + 1
		}
		for {
			if c == '{' {
				if i >= len(b) || b[i] != '"' {
					return -1
				}
				if i, _ = scanString(b, i); i < 0 {
					return -1
				}
				if i = skipSpace(b, i); i >= len(b) || b[i] != ':' {
					return -1
				}
				i = skipSpace(b, i+1)
			}
			if i = scanValue(b, i, depth+1); i < 0 {
				return -1
			}
			if i = skipSpace(b, i); i >= len(b) {
				return -1
			}
			switch b[i] {
			case ',':
				i = skipSpace(b, i+1)
			case closer:
				return i + 1
			default:
				return -1
			}
		}
	case c == '"':
		end, _ := scanString(b, i)
		return end
	case c == 't':
		return scanLiteral(b, i, "true")
	case c == 'f':
		return scanLiteral(b, i, "false")
	case c == 'n':
		return scanLiteral(b, i, "null")
	default:
		return scanNumber(b, i)
	}
}

// scanFields reads the JSON object rec (nothing but space around it) and sets out[k] to the
// raw value of the member named names[k] (nil when absent). Other members are checked and
// skipped. It reports false when rec is not such an object, when a member named in names is
// repeated, or when a key has escapes or matches a name only case-insensitively (encoding/json
// would take it).
func scanFields(rec []byte, names []string, out [][]byte) bool {
	i := skipSpace(rec, 0)
	if i >= len(rec) || rec[i] != '{' {
		return false
	}
	i = skipSpace(rec, i+1)
	if i < len(rec) && rec[i] == '}' {
		return skipSpace(rec, i+1) == len(rec)
	}
	for {
		if i >= len(rec) || rec[i] != '"' {
			return false
		}
		kend, plain := scanString(rec, i)
		if kend < 0 || !plain {
			return false
		}
		key := rec[i+1 : kend-1]
		i = skipSpace(rec, kend)
		if i >= len(rec) || rec[i] != ':' {
			return false
		}
		i = skipSpace(rec, i+1)
		vstart := i
		if i = scanValue(rec, i, 1); i < 0 {
			return false
		}
		k := fieldIndex(key, names)
		if k == -2 || k >= 0 && out[k] != nil {
			return false // a repeated member: encoding/json may fail on the earlier value
		}
		if k >= 0 {
			out[k] = rec[vstart:i]
		}
		if i = skipSpace(rec, i); i >= len(rec) {
			return false
		}
		switch rec[i] {
		case ',':
			i = skipSpace(rec, i+1)
		case '}':
			return skipSpace(rec, i+1) == len(rec)
		default:
			return false
		}
	}
}

// fieldIndex is k when key is names[k], -1 when it is none of them, -2 when it equals one
// only ignoring case (or has non-ASCII bytes, which encoding/json may fold onto one).
func fieldIndex(key []byte, names []string) int {
	for k, n := range names {
		if string(key) == n {
			return k
		}
	}
	for _, c := range key {
		if c >= 0x80 {
			return -2
		}
	}
	for _, n := range names {
		if len(n) == len(key) && equalFoldASCII(key, n) {
			return -2
		}
	}
	return -1
}

func equalFoldASCII(a []byte, b string) bool {
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// plainString is the value of the JSON string raw when it needs no unescaping.
func plainString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	end, plain := scanString(raw, 0)
	if end != len(raw) || !plain {
		return "", false
	}
	return string(raw[1 : len(raw)-1]), true
}

// parseAny decodes the valid JSON value starting at b[i] exactly as encoding/json decodes into
// an interface{} (objects map[string]any, arrays []any, numbers float64), returning the index
// after it; ok is false when it met something to leave to encoding/json.
func parseAny(b []byte, i, depth int) (v any, end int, ok bool) {
	if i >= len(b) {
		return nil, -1, false
	}
	switch c := b[i]; {
	case c == '{':
		if depth >= maxScanDepth {
			return nil, -1, false
		}
		m := map[string]any{}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == '}' {
			return m, i + 1, true
		}
		for {
			if i >= len(b) || b[i] != '"' {
				return nil, -1, false
			}
			var k any
			if k, i, ok = parseAny(b, i, depth+1); !ok {
				return nil, -1, false
			}
			if i = skipSpace(b, i); i >= len(b) || b[i] != ':' {
				return nil, -1, false
			}
			var x any
			if x, i, ok = parseAny(b, skipSpace(b, i+1), depth+1); !ok {
				return nil, -1, false
			}
			m[k.(string)] = x
			if i = skipSpace(b, i); i >= len(b) {
				return nil, -1, false
			}
			switch b[i] {
			case ',':
				i = skipSpace(b, i+1)
			case '}':
				return m, i + 1, true
			default:
				return nil, -1, false
			}
		}
	case c == '[':
		if depth >= maxScanDepth {
			return nil, -1, false
		}
		a := []any{}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == ']' {
			return a, i + 1, true
		}
		for {
			var x any
			if x, i, ok = parseAny(b, i, depth+1); !ok {
				return nil, -1, false
			}
			a = append(a, x)
			if i = skipSpace(b, i); i >= len(b) {
				return nil, -1, false
			}
			switch b[i] {
			case ',':
				i = skipSpace(b, i+1)
			case ']':
				return a, i + 1, true
			default:
				return nil, -1, false
			}
		}
	case c == '"':
		end, plain := scanString(b, i)
		if end < 0 {
			return nil, -1, false
		}
		if plain {
			return string(b[i+1 : end-1]), end, true
		}
		var s string
		if json.Unmarshal(b[i:end], &s) != nil {
			return nil, -1, false
		}
		return s, end, true
	case c == 't':
		end = scanLiteral(b, i, "true")
		return true, end, end > 0
	case c == 'f':
		end = scanLiteral(b, i, "false")
		return false, end, end > 0
	case c == 'n':
		end = scanLiteral(b, i, "null")
		return nil, end, end > 0
	default:
		end = scanNumber(b, i)
		if end < 0 {
			return nil, -1, false
		}
		f, err := strconv.ParseFloat(string(b[i:end]), 64)
		if err != nil {
			return nil, -1, false
		}
		return f, end, true
	}
}

// parseObject decodes raw, a JSON object and nothing else, into a map as encoding/json would.
func parseObject(raw []byte) (map[string]any, bool) {
	if len(raw) == 0 || raw[0] != '{' {
		return nil, false
	}
	v, end, ok := parseAny(raw, 0, 1)
	if !ok || end != len(raw) {
		return nil, false
	}
	return v.(map[string]any), true
}
