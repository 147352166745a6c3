// Package schedule remembers when each user's segments must be re-evaluated with no new event:
// a user in `count("add_to_cart", "30m") > 0` leaves that segment 30 minutes after the event,
// and the origin has to notice on time.
//
// Due times are kept per partition (the worker that owns a partition owns its users, so an expiry
// never races an event of the same user) and per user only the earliest is kept. The Redis
// implementation keeps them in one sorted set per partition, so they survive an origin restart and
// move with the partition to another origin; the memory implementation is the embedded default.
// Workers poll Due often (every 100 ms), which keeps exits within a second of their due time.
package schedule

import (
	"context"
	"time"
)

// Schedule stores due times.
type Schedule interface {
	// At records that user must be re-evaluated at due. If an earlier time is already recorded
	// for the user, that one stays.
	At(ctx context.Context, partition int, user string, due time.Time) error
	// Due removes and returns up to max users of the partition whose time is at or before now.
	Due(ctx context.Context, partition int, now time.Time, max int) ([]string, error)
	// Cancel forgets the user's due time (the profile was erased).
	Cancel(ctx context.Context, partition int, user string) error
}

// Batcher is implemented by schedules that record many due times in one round trip.
type Batcher interface {
	// AtMany is At for each users[i] and dues[i].
	AtMany(ctx context.Context, partition int, users []string, dues []time.Time) error
}
