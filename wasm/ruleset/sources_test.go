package ruleset

import (
	"time"

	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/rules"
)

// testProfile is a FeatureSource over a map.
type testProfile map[profile.Feature]profile.Value

func (p testProfile) Value(f profile.Feature, _ time.Time) (profile.Value, bool) {
	v, ok := p[f]
	return v, ok
}

// testRequest is a RequestSource over fixed values.
type testRequest struct {
	path, country, device string
	hour, bucket          int
	query, header, cookie map[string]string
}

func (r *testRequest) Path() string    { return r.path }
func (r *testRequest) Country() string { return r.country }
func (r *testRequest) Device() string  { return r.device }
func (r *testRequest) Hour() int       { return r.hour }
func (r *testRequest) Bucket() int     { return r.bucket }
func (r *testRequest) Query(n string) (string, bool) {
	v, ok := r.query[n]
	return v, ok
}
func (r *testRequest) Header(n string) (string, bool) {
	v, ok := r.header[n]
	return v, ok
}
func (r *testRequest) Cookie(n string) (string, bool) {
	v, ok := r.cookie[n]
	return v, ok
}

// indexedProfile is an IndexedFeatureSource: values resolved once per manifest, by input index.
type indexedProfile struct {
	testProfile
	vals []profile.Value
	ok   []bool
}

func newIndexed(p testProfile, inputs []rules.Input) *indexedProfile {
	ix := &indexedProfile{testProfile: p}
	for _, in := range inputs {
		v, ok := p[in.Feature]
		ix.vals, ix.ok = append(ix.vals, v), append(ix.ok, ok && in.Request == "")
	}
	return ix
}

func (p *indexedProfile) FeatureAt(i int, _ profile.Feature, _ time.Time) (profile.Value, bool) {
	return p.vals[i], p.ok[i]
}
