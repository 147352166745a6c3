package profile

import "testing"

// FuzzParseSeriesKey guards the parser of stored series names: errors, never panics, and what it
// accepts prints back to the same text.
func FuzzParseSeriesKey(f *testing.F) {
	for _, s := range []string{"n:60000:page_view", "s:3600000:purchase:amount", "s:1:a:b:c", "n:-1:a", "n::", ":"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseSeriesKey(s)
		if err != nil {
			return
		}
		if k.Res <= 0 {
			t.Fatalf("accepted a non-positive bucket size: %q", s)
		}
		back, err := ParseSeriesKey(k.String())
		if err != nil || back != k {
			t.Fatalf("%q → %+v → %q → %+v, %v", s, k, k.String(), back, err)
		}
	})
}
