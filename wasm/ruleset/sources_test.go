package ruleset

import (
	"time"

	"github.com/segedge/segedge/core/profile"
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
