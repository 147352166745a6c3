package deploy

import (
	"fmt"
	"slices"
	"strings"
)

// promqlModifiers are keywords followed by a parenthesised list of label names, not an expression.
var promqlModifiers = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

// promqlWords are keywords and constants that are not metric names.
var promqlWords = map[string]bool{"bool": true, "offset": true, "and": true, "or": true, "unless": true, "atan2": true,
	"inf": true, "nan": true, "start": true, "end": true}

// MetricNames returns the metric names a PromQL expression selects, sorted and without
// duplicates, as written (histogram series keep their _bucket, _sum or _count suffix). Label
// matchers, label lists (by, without, on, ignoring, group_left, group_right), ranges, strings,
// functions, aggregations and Grafana variables ($__rate_interval, ${x}) are not metric names.
func MetricNames(expr string) ([]string, error) {
	var out []string
	s := expr
	i := 0
	skipSpace := func(j int) int {
		for j < len(s) && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r') {
			j++
		}
		return j
	}
	// skipString returns the index after the string literal starting at j.
	skipString := func(j int) (int, error) {
		q := s[j]
		for k := j + 1; k < len(s); k++ {
			switch {
			case s[k] == '\\' && q != '`':
				k++
			case s[k] == q:
				return k + 1, nil
			}
		}
		return 0, fmt.Errorf("unterminated string at %d in %q", j, expr)
	}
	// skipUntil returns the index after the closing byte, skipping strings inside.
	skipUntil := func(j int, closing byte) (int, error) {
		for k := j + 1; k < len(s); k++ {
			switch s[k] {
			case '"', '\'', '`':
				e, err := skipString(k)
				if err != nil {
					return 0, err
				}
				k = e - 1
			case closing:
				return k + 1, nil
			}
		}
		return 0, fmt.Errorf("no %q after %d in %q", closing, j, expr)
	}
	isStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isPart := func(c byte) bool { return isStart(c) || c >= '0' && c <= '9' }
	for i < len(s) {
		c := s[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			e, err := skipString(i)
			if err != nil {
				return nil, err
			}
			i = e
		case c == '{':
			e, err := skipUntil(i, '}')
			if err != nil {
				return nil, err
			}
			i = e
		case c == '[':
			e, err := skipUntil(i, ']')
			if err != nil {
				return nil, err
			}
			i = e
		case c == '$': // a Grafana variable: $name or ${name}
			i++
			if i < len(s) && s[i] == '{' {
				e, err := skipUntil(i, '}')
				if err != nil {
					return nil, err
				}
				i = e
				continue
			}
			for i < len(s) && isPart(s[i]) {
				i++
			}
		case c >= '0' && c <= '9' || c == '.': // numbers and durations (5m, 1e3, 0x1f)
			for i < len(s) && (isPart(s[i]) || s[i] == '.') {
				i++
			}
		case isStart(c):
			j := i
			for i < len(s) && isPart(s[i]) {
				i++
			}
			word := s[j:i]
			next := skipSpace(i)
			followedByParen := next < len(s) && s[next] == '('
			if !followedByParen { // an aggregation written "sum by (le) (...)"
				k := next
				for k < len(s) && isPart(s[k]) {
					k++
				}
				if m := strings.ToLower(s[next:k]); m == "by" || m == "without" {
					followedByParen = true
				}
			}
			lower := strings.ToLower(word)
			switch {
			case promqlModifiers[lower]:
				if followedByParen {
					e, err := skipUntil(next, ')')
					if err != nil {
						return nil, err
					}
					i = e
				}
			case promqlWords[lower]:
			case followedByParen: // a function or an aggregation
			default:
				out = append(out, word)
			}
		default:
			i++
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// histogramSuffixes are the series a histogram (or summary) exports besides its documented name.
var histogramSuffixes = []string{"_bucket", "_sum", "_count"}

// Documented reports whether a metric name, as selected in PromQL, is one of the documented
// metric families: the name itself, or a histogram's _bucket, _sum or _count series of a
// documented family that is not a counter (a counter has no buckets).
func Documented(name string, families map[string]bool) bool {
	if families[name] {
		return true
	}
	for _, suf := range histogramSuffixes {
		if base, ok := strings.CutSuffix(name, suf); ok && families[base] && !strings.HasSuffix(base, "_total") {
			return true
		}
	}
	return false
}
