package httpcache

import (
	"testing"
	"time"
)

func TestParseCacheControl(t *testing.T) {
	s := time.Second
	tests := []struct {
		in   []string
		want Directives
	}{
		{[]string{"max-age=60"}, Directives{MaxAge: 60 * s}},
		{[]string{"public, s-maxage=300, max-age=5"}, Directives{Public: true, SMaxAge: 300 * s, MaxAge: 5 * s}},
		{[]string{`MAX-AGE="30"`, "No-Store"}, Directives{MaxAge: 30 * s, NoStore: true}},
		{[]string{"max-age=abc, max-age=-1"}, Directives{}},
		{[]string{"max-age=99999999999999999999"}, Directives{MaxAge: maxDelta * s}},
		{[]string{`no-cache="Set-Cookie, X-A", private`}, Directives{NoCache: true, Private: true}},
		{[]string{"must-revalidate,proxy-revalidate,no-transform"}, Directives{MustRevalidate: true, ProxyRevalidate: true, NoTran: true}},
		{[]string{"stale-while-revalidate=30, stale-if-error=600"}, Directives{StaleWhileRevalidate: 30 * s, StaleIfError: 600 * s}},
		{[]string{"max-stale", "min-fresh=5"}, Directives{MaxStale: maxDelta * s, MinFresh: 5 * s}},
		{[]string{",,, ,=,unknown=1"}, Directives{}},
	}
	for _, tt := range tests {
		w := tt.want
		for _, d := range []*time.Duration{&w.MaxAge, &w.SMaxAge, &w.MaxStale, &w.MinFresh, &w.StaleWhileRevalidate, &w.StaleIfError} {
			if *d == 0 {
				*d = -1
			}
		}
		if got := ParseCacheControl(tt.in...); got != w {
			t.Errorf("ParseCacheControl(%q)\n got %+v\nwant %+v", tt.in, got, w)
		}
	}
}

func FuzzParseCacheControl(f *testing.F) {
	for _, s := range []string{"max-age=60, public", `no-cache="a,b", s-maxage=1`, `"`, `\`, "max-age=" + string(rune(0)), "stale-if-error=9999999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d := ParseCacheControl(s)
		for _, v := range []time.Duration{d.MaxAge, d.SMaxAge, d.MaxStale, d.MinFresh, d.StaleWhileRevalidate, d.StaleIfError} {
			if v < -1 || v > maxDelta*time.Second {
				t.Fatalf("duration out of range: %v for %q", v, s)
			}
		}
	})
}
