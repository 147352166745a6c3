package rules

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/segedge/segedge/core/profile"
)

// RunTests runs the tests of a rules file against its compiled ruleset with the reference
// evaluator, and returns every failed expectation ("a failing test rejects the ruleset").
// The compiled module is checked against the same evaluator by the compiler's differential
// tests; run the tests through wasm/ruleset to check the module itself.
func RunTests(f *File, rs *Ruleset) error {
	ref, err := NewReference(&rs.Manifest)
	if err != nil {
		return err
	}
	var errs []error
	res := rs.Manifest.NewResult()
	for ti, t := range f.Tests {
		prof, req, err := t.Sources()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: test %d: %w", f.where(t.Pos), ti+1, err))
			continue
		}
		ref.Evaluate(prof, req, time.Unix(0, 0), res)
		if err := CheckTest(&rs.Manifest, celOnly(&rs.Manifest, &t), res); err != nil {
			errs = append(errs, fmt.Errorf("%s: test %d: %w", f.where(t.Pos), ti+1, err))
		}
	}
	return errors.Join(errs...)
}

// celOnly returns t without the expectations cel-go cannot check: segments computed by
// hand-written modules, and slots with a variant shown for such a segment (wasm/ruleset runs
// the modules and checks every expectation).
func celOnly(m *Manifest, t *TestDef) *TestDef {
	if len(m.Modules) == 0 {
		return t
	}
	c := *t
	c.Expect, c.ExpectSlots = map[string]bool{}, map[string]int{}
	for name, v := range t.Expect {
		if i := m.Segment(name); i < 0 || m.Segments[i].Module == "" {
			c.Expect[name] = v
		}
	}
	for name, v := range t.ExpectSlots {
		keep := true
		for _, s := range m.Slots {
			for _, vi := range s.Variants {
				if s.Name == name && m.Segments[vi.Segment].Module != "" {
					keep = false
				}
			}
		}
		if keep {
			c.ExpectSlots[name] = v
		}
	}
	return &c
}

// CheckTest compares a result with a test's expectations.
func CheckTest(m *Manifest, t *TestDef, res *Result) error {
	var bad []string
	for _, name := range sortedKeys(t.Expect) {
		i := m.Segment(name)
		if i < 0 {
			bad = append(bad, fmt.Sprintf("unknown segment %q in expect", name))
			continue
		}
		if got := res.IsMember(i); got != t.Expect[name] {
			why := ""
			if res.IsError(i) {
				why = " (its rule raised an error)"
			}
			bad = append(bad, fmt.Sprintf("%s is %v, want %v%s", name, got, t.Expect[name], why))
		}
	}
	for _, name := range sortedKeys(t.ExpectSlots) {
		si := -1
		for i, s := range m.Slots {
			if s.Name == name {
				si = i
			}
		}
		if si < 0 {
			bad = append(bad, fmt.Sprintf("unknown segment or slot %q in expect", name))
			continue
		}
		if got := int(res.Variants[si]); got != t.ExpectSlots[name] {
			bad = append(bad, fmt.Sprintf("slot %s shows variant %d, want %d (-1 = default)", name, got, t.ExpectSlots[name]))
		}
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sortStrings(ks)
	return ks
}

// TestFeatures is a FeatureSource over fixed values (a test's profile).
type TestFeatures map[profile.Feature]profile.Value

// Value implements FeatureSource.
func (p TestFeatures) Value(f profile.Feature, _ time.Time) (profile.Value, bool) {
	v, ok := p[f]
	return v, ok
}

// Sources turns a test's profile and request into evaluation inputs (req nil: no request).
func (t *TestDef) Sources() (TestFeatures, RequestSource, error) {
	p := TestFeatures{}
	for k, v := range t.Profile.Traits {
		p[profile.Feature{Kind: profile.FeatureTrait, Name: k}] = profile.ValueOf(v)
	}
	for k, v := range t.Profile.Counts {
		s, w, err := splitFeatureKey(k, 2)
		if err != nil {
			return nil, nil, err
		}
		p[profile.Feature{Kind: profile.FeatureCount, Name: s[0], Window: w}] = profile.IntValue(v)
	}
	for k, v := range t.Profile.Sums {
		s, w, err := splitFeatureKey(k, 3)
		if err != nil {
			return nil, nil, err
		}
		p[profile.Feature{Kind: profile.FeatureSum, Name: s[0], Prop: s[1], Window: w}] = profile.DoubleValue(v)
	}
	for k, v := range t.Profile.Since {
		p[profile.Feature{Kind: profile.FeatureSince, Name: k}] = profile.IntValue(v)
	}
	for k, v := range t.Profile.Scores {
		p[profile.Feature{Kind: profile.FeatureScore, Name: k}] = profile.DoubleValue(v)
	}
	if t.Request == nil {
		return p, nil, nil
	}
	return p, testRequest{t.Request}, nil
}

// testRequest adapts a TestRequest to RequestSource.
type testRequest struct{ r *TestRequest }

func (t testRequest) Path() string    { return t.r.Path }
func (t testRequest) Country() string { return t.r.Country }
func (t testRequest) Device() string  { return t.r.Device }
func (t testRequest) Hour() int       { return t.r.Hour }
func (t testRequest) Bucket() int     { return t.r.Bucket }
func (t testRequest) Query(n string) (string, bool) {
	v, ok := t.r.Query[n]
	return v, ok
}
func (t testRequest) Header(n string) (string, bool) {
	for k, v := range t.r.Headers {
		if strings.EqualFold(k, n) {
			return v, true
		}
	}
	return "", false
}
func (t testRequest) Cookie(n string) (string, bool) {
	v, ok := t.r.Cookies[n]
	return v, ok
}
