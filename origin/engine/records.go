package engine

import (
	"time"

	"github.com/segedge/segedge/origin/members"
)

// DefaultRecordCache is the default Config.RecordCache.
const DefaultRecordCache = 1 << 15

// recordCache is a partition worker's copy of its users' membership records as last read from
// or written to the members store. Only the origin that holds a partition's lease writes its
// users' records, and only from the partition's worker, so while the lease is held the copy is
// what the store has: reading the records back for every batch cost a Redis round trip before
// the deltas could go out, and about 8 % of the origin's CPU at 10k events/s. A worker starts
// with an empty cache each time it takes the partition (another origin may have written
// meanwhile), and a record enters it only once the store has it.
//
// It also remembers the due time last recorded for each user (the schedule keeps the earliest
// one), so that a batch does not write a due time the schedule already has: most events leave a
// user's next expiry where it was. That memory is trusted for DefaultDueTrust only: the schedule
// can lose a due time behind the worker's back (Redis flushed, or restored from an older
// snapshot), and a due time that is never written again means the user never leaves their
// time-window segments. After the trust period the user's next event writes it again (the
// schedule keeps the earliest time, so writing one it has changes nothing): at most one write
// per active user and trust period, instead of one per event.
//
// It is used by the partition's worker goroutine only: no lock.
type recordCache struct {
	max int
	m   map[string]members.Record
	due map[string]dueMemo
	// now is the worker's clock (Config.Now); trust is how long a due time it wrote is trusted.
	now   func() time.Time
	trust time.Duration
}

// DefaultDueTrust is how long a partition worker trusts that the schedule still has a due time
// it wrote (recordCache).
const DefaultDueTrust = time.Minute

// dueMemo is a due time the worker wrote and until when it trusts the schedule to have it, as
// Unix nanoseconds (16 bytes a user instead of two time.Time's 48).
type dueMemo struct{ at, until int64 }

// newRecordCache returns a cache of at most max users (none if max <= 0) that reads the time
// from now.
func newRecordCache(max int, now func() time.Time) *recordCache {
	return &recordCache{max: max, m: make(map[string]members.Record), due: make(map[string]dueMemo), now: now, trust: DefaultDueTrust}
}

// dueRecorded reports whether the schedule has a due time for user at or before t, as far as
// the worker trusts its memory.
func (c *recordCache) dueRecorded(user string, t time.Time) bool {
	if c == nil {
		return false
	}
	d, ok := c.due[user]
	return ok && d.at <= t.UnixNano() && c.now().UnixNano() < d.until
}

// recordDue remembers that the schedule has just been given a due time for user at t: it has
// one at or before t.
func (c *recordCache) recordDue(user string, t time.Time) {
	if c == nil || c.max <= 0 {
		return
	}
	makeRoom(c.due, user, c.max)
	c.due[user] = dueMemo{at: t.UnixNano(), until: c.now().Add(c.trust).UnixNano()}
}

// forgetDue is called when the schedule no longer has user's due time (taken as due, cancelled).
func (c *recordCache) forgetDue(user string) {
	if c != nil {
		delete(c.due, user)
	}
}

func (c *recordCache) get(user string) (members.Record, bool) {
	if c == nil {
		return members.Record{}, false
	}
	r, ok := c.m[user]
	return r, ok
}

// put remembers r as the store's record of user.
func (c *recordCache) put(user string, r members.Record) {
	if c == nil || c.max <= 0 {
		return
	}
	makeRoom(c.m, user, c.max)
	c.m[user] = r
}

// makeRoom evicts arbitrary entries of m (Go's map iteration starts at a random place), a
// sixteenth of max at a time, when adding key would take it past max entries.
func makeRoom[V any](m map[string]V, key string, max int) {
	if _, ok := m[key]; ok || len(m) < max {
		return
	}
	for k := range m {
		delete(m, k)
		if len(m) < max-max/16 {
			return
		}
	}
}
