package httpcache

import (
	"strconv"
	"strings"
	"time"
)

// Directives are the Cache-Control directives a shared cache acts on (RFC 9111 §5.2). Durations
// are -1 when the directive is absent.
type Directives struct {
	MaxAge, SMaxAge, MaxStale, MinFresh     time.Duration
	StaleWhileRevalidate, StaleIfError      time.Duration
	NoStore, NoCache, Private, Public       bool
	MustRevalidate, ProxyRevalidate, NoTran bool
}

// maxDelta caps delta-seconds (RFC 9111 §1.2.2 suggests 2^31 seconds as "infinity").
const maxDelta = 1<<31 - 1

// ParseCacheControl reads one or more Cache-Control header values. Unknown directives are
// ignored and malformed numbers make their directive absent, as RFC 9111 §4.2.1 asks of caches;
// it never fails.
func ParseCacheControl(values ...string) Directives {
	d := Directives{MaxAge: -1, SMaxAge: -1, MaxStale: -1, MinFresh: -1, StaleWhileRevalidate: -1, StaleIfError: -1}
	for _, v := range values {
		for len(v) > 0 {
			var part string
			part, v = nextDirective(v)
			name, arg, _ := strings.Cut(part, "=")
			name = strings.ToLower(strings.TrimSpace(name))
			arg = strings.TrimSpace(arg)
			if len(arg) >= 2 && arg[0] == '"' && arg[len(arg)-1] == '"' {
				arg = arg[1 : len(arg)-1]
			}
			switch name {
			case "max-age":
				d.MaxAge = seconds(arg)
			case "s-maxage":
				d.SMaxAge = seconds(arg)
			case "max-stale":
				if arg == "" {
					d.MaxStale = maxDelta * time.Second
				} else {
					d.MaxStale = seconds(arg)
				}
			case "min-fresh":
				d.MinFresh = seconds(arg)
			case "stale-while-revalidate":
				d.StaleWhileRevalidate = seconds(arg)
			case "stale-if-error":
				d.StaleIfError = seconds(arg)
			case "no-store":
				d.NoStore = true
			case "no-cache":
				// The qualified form (no-cache="Set-Cookie") is treated like the plain one: stricter, never wrong.
				d.NoCache = true
			case "private":
				d.Private = true
			case "public":
				d.Public = true
			case "must-revalidate":
				d.MustRevalidate = true
			case "proxy-revalidate":
				d.ProxyRevalidate = true
			case "no-transform":
				d.NoTran = true
			}
		}
	}
	return d
}

// nextDirective splits off the first comma-separated directive, honouring quoted strings.
func nextDirective(v string) (part, rest string) {
	inQuote := false
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '\\':
			if inQuote {
				i++
			}
		case '"':
			inQuote = !inQuote
		case ',':
			if !inQuote {
				return v[:i], v[i+1:]
			}
		}
	}
	return v, ""
}

func seconds(s string) time.Duration {
	if s == "" {
		return -1
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return -1
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n > maxDelta {
		n = maxDelta
	}
	return time.Duration(n) * time.Second
}
