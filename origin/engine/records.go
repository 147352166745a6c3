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
	if _, ok := c.due[user]; !ok && len(c.due) >= c.max {
		for u := range c.due {
			delete(c.due, u)
			if len(c.due) < c.max-c.max/16 {
				break
			}
		}
	}
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

// put remembers r as the store's record of user, evicting arbitrary entries (Go's map
// iteration starts at a random place) when the cache is full.
func (c *recordCache) put(user string, r members.Record) {
	if c == nil || c.max <= 0 {
		return
	}
	if _, ok := c.m[user]; !ok && len(c.m) >= c.max {
		for u := range c.m {
			delete(c.m, u)
			if len(c.m) < c.max-c.max/16 {
				break
			}
		}
	}
	c.m[user] = r
}
