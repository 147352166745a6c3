// Package schedule remembers when each user's segments must be re-evaluated with no new event:
// a user in `count("add_to_cart", "30m") > 0` leaves that segment 30 minutes after the event,
// and the origin has to notice on time.
//
// Due times are kept per partition (the worker that owns a partition owns its users, so an expiry
// never races an event of the same user) and per user only the earliest is kept. The Redis
// implementation keeps them in one sorted set per partition, so they survive an origin restart and
// move with the partition to another origin; the memory implementation is the embedded default.
// Workers poll Due often (every 100 ms), which keeps exits within a second of their due time.
//
// Due does not forget a user: it takes it for Lease, and the worker says Done once the user's
// re-evaluation is published and recorded. A worker that dies in between (crash, lost lease)
// leaves the user taken; once the lease has run out, Due returns it again to whoever holds the
// partition, so an exit is late by at most Lease after a crash, never lost. Before, Due removed
// the users it returned, and a crash before their re-evaluation lost those exits for good.
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
	// Due takes and returns up to max users of the partition whose time is at or before now:
	// first those taken more than Lease ago and never done, then the due ones, which leave the
	// schedule of due times (a later At for the user records a new one).
	Due(ctx context.Context, partition int, now time.Time, max int) ([]Taken, error)
	// Done says the user's re-evaluation, taken by Due, is published and recorded.
	Done(ctx context.Context, partition int, users ...string) error
	// Cancel forgets the user's due time and any take of it (the profile was erased).
	Cancel(ctx context.Context, partition int, user string) error
}

// Taken is a user Due returned, with the time its re-evaluation was due: for a take that ran
// out, the time of that take (the original due time is not kept; it was at most one poll
// earlier).
type Taken struct {
	User string
	At   time.Time
}

// Lease is how long a user Due returned stays taken without Done before Due returns it again.
// It is longer than a worker takes for one Due's users and shorter than a partition handover
// after a crash (the lease TTL, 10 s by default, plus a third): the new holder finds the dead
// worker's takes already due again.
const Lease = 10 * time.Second

// Batcher is implemented by schedules that record many due times in one round trip.
type Batcher interface {
	// AtMany is At for each users[i] and dues[i].
	AtMany(ctx context.Context, partition int, users []string, dues []time.Time) error
}
