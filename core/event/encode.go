package event

import (
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// appendWireFast writes the wire object of ev byte for byte as json.Marshal of wire would,
// without reflection, for the values a decoded event holds (props of strings, float64s, bools,
// nil, []any and map[string]any). It reports false for anything else — another Go type in
// props, a NaN, invalid UTF-8, nesting past maxScanDepth (or a cycle) — and AppendWire then
// takes json.Marshal, which encodes or refuses it.
func appendWireFast(dst []byte, ev Event, acceptedAt time.Time) ([]byte, bool) {
	var ok bool
	dst = append(dst, `{"event_id":`...)
	if dst, ok = appendString(dst, ev.ID); !ok {
		return dst, false
	}
	dst = append(dst, `,"user_id":`...)
	if dst, ok = appendString(dst, ev.UserID); !ok {
		return dst, false
	}
	dst = append(dst, `,"type":`...)
	if dst, ok = appendString(dst, ev.Type); !ok {
		return dst, false
	}
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, ev.TS.UnixMilli(), 10)
	if len(ev.Props) > 0 {
		dst = append(dst, `,"props":`...)
		if dst, ok = appendObject(dst, ev.Props, 1); !ok {
			return dst, false
		}
	}
	dst = append(dst, `,"accepted_at":`...)
	dst = strconv.AppendInt(dst, acceptedAt.UnixNano(), 10)
	return append(dst, '}'), true
}

func appendValue(dst []byte, v any, depth int) ([]byte, bool) {
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...), true
	case bool:
		return strconv.AppendBool(dst, x), true
	case string:
		return appendString(dst, x)
	case float64:
		return appendFloat(dst, x)
	case map[string]any:
		if x == nil {
			return append(dst, "null"...), true
		}
		return appendObject(dst, x, depth+1)
	case []any:
		if x == nil {
			return append(dst, "null"...), true
		}
		if depth >= maxScanDepth {
			return dst, false
		}
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			var ok bool
			if dst, ok = appendValue(dst, e, depth+1); !ok {
				return dst, false
			}
		}
		return append(dst, ']'), true
	default:
		return dst, false
	}
}

// appendObject writes m with its keys sorted, as json.Marshal does.
func appendObject(dst []byte, m map[string]any, depth int) ([]byte, bool) {
	if depth >= maxScanDepth {
		return dst, false
	}
	var stack [8]string
	keys := stack[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		var ok bool
		if dst, ok = appendString(dst, k); !ok {
			return dst, false
		}
		dst = append(dst, ':')
		if dst, ok = appendValue(dst, m[k], depth); !ok {
			return dst, false
		}
	}
	return append(dst, '}'), true
}

// appendFloat formats f as encoding/json does (ES6 style: no exponent between 1e-6 and 1e21).
func appendFloat(dst []byte, f float64) ([]byte, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return dst, false
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst, true
}

const hexDigits = "0123456789abcdef"

// appendString quotes s as encoding/json does (HTML-safe, U+2028 and U+2029 escaped); false
// for invalid UTF-8, which json.Marshal replaces.
func appendString(dst []byte, s string) ([]byte, bool) {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				return dst, false
			}
			if r == '\u2028' || r == '\u2029' {
				dst = append(dst, s[start:i]...)
				dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
				start = i + size
			}
			i += size
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"'), true
}
