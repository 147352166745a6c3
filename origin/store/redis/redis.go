// Package redis is the profile store on Redis or Redis Cluster (github.com/redis/go-redis/v9).
//
// Layout. A user's state lives in two keys that share the hash tag {u:<user id>}, so they sit on
// one Cluster slot and one Lua script can touch both:
//
//	<prefix>{u:<id>}:p   hash: the profile
//	<prefix>{u:<id>}:d   sorted set: event ids applied within the dedup window, scored by apply time (ms)
//
// Profile hash fields (all times Unix ms):
//
//	v               version
//	c, u            created, updated (server time)
//	l:<type>        last-seen ts of the event type
//	t:<name>        trait: "<ts>|<value>", value "b1"/"b0", "i<int>", "d<float>", "s<string>", or "" (deleted)
//	n:<res>:<type>  count buckets: "<idx>:<n>,<idx>:<n>,…" sorted by bucket index (ts / res)
//	s:<res>:<type>:<prop>  sum buckets, same form
//	o:<name>        score: "<value>|<as of>|<half-life ms>"
//	e               id of the last event written (with v and c, what the compare-and-set compares)
//
// Who does what. Go computes, Redis stores: for each event Go takes the user's current profile
// (from an in-process cache of recently applied users, see users, or read from Redis), computes
// the next one exactly as the memory store does (profile.Spec.Plan, profile.Profile.With: a new
// profile, the old one unchanged) and encodes only the fields the event touched. One short Lua script (cas.lua) per event then
// checks the dedup record and that the stored profile is still the one Go computed from (v, c,
// e), and only then writes those fields, records the event id and pushes the TTL of both keys
// to the retention. A batch goes out in one pipeline; when the stored profile was not the
// expected one (another origin wrote the user, it expired or was deleted) the script returns it
// and Go recomputes the user's remaining events from it in another round (apply.go). Batches
// of this process take turns per user, so that only another process makes a write fail.
package redis

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"

	goredis "github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/origin/store"
)

// Store is the Redis profile store.
type Store struct {
	c      goredis.UniversalClient
	prefix string
	opts   store.Options
	owned  bool
	users  *users // batches in flight and the profile cache
}

var _ store.Store = (*Store)(nil)

// CacheStats are counts since the store was made: users of batches that found their profile in
// the cache (Hits) or read it from Redis (Misses), and writes Redis refused because the profile
// was not the one the origin computed from (Stale: another origin wrote it, it expired or was
// deleted; the event is then recomputed).
type CacheStats struct{ Hits, Misses, Stale uint64 }

// CacheStats returns the cache's counts so far.
func (s *Store) CacheStats() CacheStats {
	return CacheStats{Hits: s.users.hits.Load(), Misses: s.users.misses.Load(), Stale: s.users.stale.Load()}
}

// New returns a store on client c whose keys all start with prefix (e.g. "segedge:"; it must not
// contain '{'). Close does not close c.
func New(c goredis.UniversalClient, prefix string, opts store.Options) (*Store, error) {
	if strings.ContainsAny(prefix, "{}") {
		return nil, fmt.Errorf("redis store: key prefix %q must not contain braces (they would break the per-user hash tag)", prefix)
	}
	opts = opts.WithDefaults()
	return &Store{c: c, prefix: prefix, opts: opts, users: newUsers(opts.CacheProfiles)}, nil
}

// Open connects to the Redis at url (one server, or a Redis Cluster as
// redis+cluster://host:port,host:port,…; see ParseURL) and returns a store that closes the
// client on Close.
func Open(ctx context.Context, url, prefix string, opts store.Options) (*Store, error) {
	o, err := ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis store: %w", err)
	}
	c := o.NewClient()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("redis store: ping: %w", err)
	}
	s, err := New(c, prefix, opts)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	s.owned = true
	return s, nil
}

func (s *Store) keys(userID string) []string {
	base := s.prefix + "{u:" + userID + "}:"
	return []string{base + "p", base + "d"}
}

// Get implements store.Store. It reads Redis (never the cache: the profile may have been written
// by another origin) and caches what it read. The profile is shared with the cache: read-only.
func (s *Store) Get(ctx context.Context, userID string) (*profile.Profile, error) {
	m, err := s.c.HGetAll(ctx, s.keys(userID)[0]).Result()
	if err != nil {
		return nil, fmt.Errorf("get profile of user %s: %w", ops.UserRef(userID), err)
	}
	if len(m) == 0 {
		s.users.forget(userID)
		return nil, store.ErrNotFound
	}
	st, err := decodeState(userID, hashPairs(m))
	if err != nil {
		return nil, fmt.Errorf("get profile of user %s: %w", ops.UserRef(userID), err)
	}
	s.users.cache(userID, st)
	return st.p, nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, userID string) error {
	s.users.forget(userID)
	if err := s.c.Del(ctx, s.keys(userID)...).Err(); err != nil {
		return fmt.Errorf("delete profile of user %s: %w", ops.UserRef(userID), err)
	}
	return nil
}

// scanMinHint is the least COUNT passed to SCAN; scanBudget bounds the keys one Scan call
// makes Redis look at (so one call stays a few milliseconds of Redis time).
const (
	scanMinHint = 512
	scanBudget  = 64 << 10
)

// Scan implements store.Store with SCAN over the profile keys. On Redis Cluster it scans every
// master in turn, in the order of their addresses.
//
// The cursor is "0:<SCAN cursor>" on one server, and "<master address>|<SCAN cursor>|<masters>"
// on a Cluster, where <masters> is a hash of the addresses of all the masters (mastersHash). It
// names the master by its address, not by its place in the list, and carries the list's hash,
// because the list is read again at each call: after a failover (a replica's address is now a
// master's), a shrink or a growth, a place would name another master, whose SCAN would resume at
// a cursor of another node, or none at all — and "no next master" reads as the end of the scan,
// so the rescan (origin/engine/rescan.go) would mark its partitions done with users never
// visited. When the masters changed, Scan returns an error instead: the rescan pass then fails
// and starts again from "" at its next round. Cursors live only within a pass, never stored.
func (s *Store) Scan(ctx context.Context, cursor string, count int) ([]string, string, error) {
	ms, err := s.masters(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("scan profiles: %w", err)
	}
	node, cur, err := ms.decodeCursor(cursor)
	if err != nil {
		return nil, "", fmt.Errorf("scan profiles: %w", err)
	}
	// SCAN's COUNT is how many keys Redis looks at, matching or not. On a database shared with
	// other data (or other prefixes) most keys do not match, so one call with COUNT = count would
	// mostly return nothing and a scan would take (keys / count) round trips: look at more keys
	// per call, and keep going within this call until count ids are found or scanBudget keys
	// were looked at.
	match := globEscape(s.prefix) + "{u:*}:p"
	hint := int64(max(count, scanMinHint))
	var ids []string
	next := cur
	for looked := int64(0); ; looked += hint {
		keys, n, err := ms.clients[node].Scan(ctx, next, match, hint).Result()
		if err != nil {
			return nil, "", fmt.Errorf("scan profiles: %w", err)
		}
		for _, k := range keys {
			id, ok := strings.CutPrefix(k, s.prefix+"{u:")
			if id, ok2 := strings.CutSuffix(id, "}:p"); ok && ok2 {
				ids = append(ids, id)
			}
		}
		next = n
		if next == 0 || len(ids) >= count || looked+hint >= scanBudget {
			break
		}
	}
	switch {
	case next != 0:
		return ids, ms.encodeCursor(node, next), nil
	case node+1 < len(ms.clients):
		return ids, ms.encodeCursor(node+1, 0), nil
	default:
		return ids, "", nil
	}
}

// scanNodes are the servers Scan walks: the one server, or the Cluster's masters ordered by
// address (addrs[i] is clients[i]'s) with the hash of that list.
type scanNodes struct {
	clients []goredis.Cmdable
	addrs   []string // nil on one server
	hash    string
}

// masters returns the servers to SCAN.
func (s *Store) masters(ctx context.Context) (scanNodes, error) {
	cc, ok := s.c.(*goredis.ClusterClient)
	if !ok {
		return scanNodes{clients: []goredis.Cmdable{s.c}}, nil
	}
	var mu sync.Mutex
	var clients []*goredis.Client
	err := cc.ForEachMaster(ctx, func(_ context.Context, c *goredis.Client) error {
		mu.Lock()
		clients = append(clients, c)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return scanNodes{}, fmt.Errorf("list cluster masters: %w", err)
	}
	slices.SortFunc(clients, func(a, b *goredis.Client) int { return strings.Compare(a.Options().Addr, b.Options().Addr) })
	ms := scanNodes{clients: make([]goredis.Cmdable, len(clients)), addrs: make([]string, len(clients))}
	for i, c := range clients {
		ms.clients[i], ms.addrs[i] = c, c.Options().Addr
	}
	ms.hash = mastersHash(ms.addrs)
	return ms, nil
}

// mastersHash names a list of master addresses in a cursor (FNV-1a, 32 bits, hex): short, and
// two lists that differ get the same name only by a 1 in 4 billion chance.
func mastersHash(addrs []string) string {
	h := fnv.New32a()
	for _, a := range addrs {
		h.Write([]byte(a))
		h.Write([]byte{','})
	}
	return strconv.FormatUint(uint64(h.Sum32()), 16)
}

// encodeCursor is the cursor of SCAN cursor cur on node.
func (ms scanNodes) encodeCursor(node int, cur uint64) string {
	if ms.addrs == nil {
		return strconv.Itoa(node) + ":" + strconv.FormatUint(cur, 10)
	}
	return ms.addrs[node] + "|" + strconv.FormatUint(cur, 10) + "|" + ms.hash
}

// decodeCursor returns the node and SCAN cursor a cursor of encodeCursor names; "" is the start.
// It fails when the cursor names a master that is not one now, or was made when the masters
// were others (see Scan).
func (ms scanNodes) decodeCursor(cursor string) (node int, cur uint64, err error) {
	if cursor == "" {
		return 0, 0, nil
	}
	if ms.addrs == nil {
		ns, cs, ok := strings.Cut(cursor, ":")
		node, err1 := strconv.Atoi(ns)
		cur, err2 := strconv.ParseUint(cs, 10, 64)
		if !ok || err1 != nil || err2 != nil || node != 0 {
			return 0, 0, fmt.Errorf("bad cursor %q", cursor)
		}
		return node, cur, nil
	}
	parts := strings.Split(cursor, "|")
	if len(parts) != 3 {
		return 0, 0, fmt.Errorf("bad cursor %q for a Redis Cluster", cursor)
	}
	cur, err = strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("bad cursor %q for a Redis Cluster", cursor)
	}
	node = slices.Index(ms.addrs, parts[0])
	if node < 0 || parts[2] != ms.hash {
		return 0, 0, fmt.Errorf("cursor %q: the cluster's masters changed since the scan began (now %s); scan again from the start",
			cursor, strings.Join(ms.addrs, ","))
	}
	return node, cur, nil
}

// Close closes the client if the store opened it.
func (s *Store) Close() error {
	if s.owned {
		return s.c.Close()
	}
	return nil
}

func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
