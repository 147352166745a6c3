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
// user's next expiry where it was.
//
// It is used by the partition's worker goroutine only: no lock.
type recordCache struct {
	max int
	m   map[string]members.Record
	due map[string]time.Time
}

func newRecordCache(max int) *recordCache {
	return &recordCache{max: max, m: make(map[string]members.Record), due: make(map[string]time.Time)}
}

// dueRecorded reports whether the schedule already has a due time for user at or before t.
func (c *recordCache) dueRecorded(user string, t time.Time) bool {
	if c == nil {
		return false
	}
	d, ok := c.due[user]
	return ok && !d.After(t)
}

// recordDue remembers that the schedule has a due time for user at or before t.
func (c *recordCache) recordDue(user string, t time.Time) {
	if c == nil || c.max <= 0 {
		return
	}
	if d, ok := c.due[user]; ok && d.Before(t) {
		return
	}
	makeRoom(c.due, user, c.max)
	c.due[user] = t
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
