// Package store defines the origin's profile store: where profiles live and how one event is
// applied to one profile, atomically and exactly once. Implementations: store/memory (the
// embedded default) and store/redis (Redis or Redis Cluster); store/storetest holds them both to
// the same behaviour.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
)

// ErrNotFound is returned by Get for a user with no profile (never seen, deleted or expired).
var ErrNotFound = errors.New("profile not found")

// Store keeps profiles. All methods are safe for concurrent use.
type Store interface {
	// Apply applies one event to its user's profile atomically, as profile.Spec.Plan and
	// profile.Profile.Apply define it, and returns the profile after the event. It is idempotent
	// by event id within the dedup window: applying an event id again returns the current profile
	// with applied=false and changes nothing. Every applied event pushes the profile's expiry to
	// now + retention.
	Apply(ctx context.Context, ev event.Event, spec *profile.Spec) (p *profile.Profile, applied bool, err error)
	// ApplyBatch applies evs in order, each exactly as Apply would (so two events of one user
	// see each other in order), and returns one result per event, res[i] for evs[i]. It exists
	// for throughput: the Redis store sends the whole batch in one pipeline. A failure of one
	// event is reported in its result and does not stop the others; err is for failures of the
	// batch as a whole (nothing or an unknown part applied: retry all — dedup makes that safe).
	ApplyBatch(ctx context.Context, evs []event.Event, spec *profile.Spec) (res []Result, err error)
	// Get returns the profile of a user, or ErrNotFound.
	Get(ctx context.Context, userID string) (*profile.Profile, error)
	// Delete forgets a user: the profile and its dedup record. Deleting an unknown user is not an
	// error.
	Delete(ctx context.Context, userID string) error
	// Scan lists user ids for background re-evaluation, like Redis SCAN: start with cursor "",
	// continue with the returned cursor until it is "" again. count is a hint. Every profile that
	// exists for the whole scan is returned at least once; one may be returned twice.
	Scan(ctx context.Context, cursor string, count int) (userIDs []string, next string, err error)
	// Sample returns up to n live profiles, for dry runs of a new ruleset: a bounded scan (not a
	// uniformly random sample), never more than n profiles. The profiles are read-only.
	Sample(ctx context.Context, n int) ([]*profile.Profile, error)
	// Close releases the store's resources.
	Close() error
}

// Result is the outcome of one event of ApplyBatch: what Apply would have returned.
type Result struct {
	Profile *profile.Profile
	Applied bool
	Err     error
}

// Options configure a store. Zero fields take the defaults.
type Options struct {
	// Retention is how long an idle profile is kept after its last applied event (default 90 days,
	// event.DefaultRetention).
	Retention time.Duration
	// DedupWindow is how long an event id is remembered for deduplication (default 24 hours); a
	// redelivery later than that would be applied again. Ids are forgotten with their profile,
	// so the effective window is at most Retention.
	DedupWindow time.Duration
	// Now is the clock (default time.Now); tests inject one.
	Now func() time.Time
	// CacheProfiles bounds the Redis store's in-process profile cache, in profiles (default
	// DefaultCacheProfiles; negative: no cache). An event of a cached user costs one round trip
	// (the compare-and-set); a user not cached is read first. A cached profile takes about 2 KB
	// with a small ruleset (one count, a score, a few traits), so the default holds ~120 MB at
	// most. The memory store ignores it.
	CacheProfiles int
}

// DefaultDedupWindow is the default Options.DedupWindow.
const DefaultDedupWindow = 24 * time.Hour

// DefaultCacheProfiles is the default Options.CacheProfiles.
const DefaultCacheProfiles = 65536

// WithDefaults fills the zero fields.
func (o Options) WithDefaults() Options {
	if o.Retention <= 0 {
		o.Retention = event.DefaultRetention
	}
	if o.DedupWindow <= 0 {
		o.DedupWindow = DefaultDedupWindow
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CacheProfiles == 0 {
		o.CacheProfiles = DefaultCacheProfiles
	}
	return o
}
