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
//
// Every event is applied by ONE Lua script (apply.lua, run with EVALSHA and loaded once): dedup,
// traits, buckets (pruned of those no window can reach), last-seen, scores, version, and the
// TTL of both keys pushed to the retention. Go computes what the event changes
// (profile.Spec.Plan); the script applies it with the same arithmetic as profile.Profile.Apply.
package redis

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/origin/store"
)

//go:embed apply.lua
var applySource string

var applyScript = goredis.NewScript(applySource)

// Store is the Redis profile store.
type Store struct {
	c      goredis.UniversalClient
	prefix string
	opts   store.Options
	owned  bool
}

var _ store.Store = (*Store)(nil)

// New returns a store on client c whose keys all start with prefix (e.g. "segedge:"; it must not
// contain '{'). Close does not close c.
func New(c goredis.UniversalClient, prefix string, opts store.Options) (*Store, error) {
	if strings.ContainsAny(prefix, "{}") {
		return nil, fmt.Errorf("redis store: key prefix %q must not contain braces (they would break the per-user hash tag)", prefix)
	}
	return &Store{c: c, prefix: prefix, opts: opts.WithDefaults()}, nil
}

// Open connects to the Redis at url (redis://, rediss://, or redis-cluster-style comma-separated
// addresses via goredis.ParseClusterURL when the scheme is "redis+cluster") and returns a store
// that closes the client on Close.
func Open(ctx context.Context, url, prefix string, opts store.Options) (*Store, error) {
	var c goredis.UniversalClient
	if rest, ok := strings.CutPrefix(url, "redis+cluster://"); ok {
		o, err := goredis.ParseClusterURL("redis://" + rest)
		if err != nil {
			return nil, fmt.Errorf("redis store: parse %q: %w", url, err)
		}
		c = goredis.NewClusterClient(o)
	} else {
		o, err := goredis.ParseURL(url)
		if err != nil {
			return nil, fmt.Errorf("redis store: parse %q: %w", url, err)
		}
		c = goredis.NewClient(o)
	}
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

// Apply implements store.Store.
func (s *Store) Apply(ctx context.Context, ev event.Event, spec *profile.Spec) (*profile.Profile, bool, error) {
	args, err := s.applyArgs(ev, spec)
	if err != nil {
		return nil, false, err
	}
	res, err := applyScript.Run(ctx, s.c, s.keys(ev.UserID), args...).Slice()
	if err != nil {
		return nil, false, fmt.Errorf("apply event %q to user %s: %w", ev.ID, ops.UserRef(ev.UserID), err)
	}
	return decodeApplyReply(ev, res)
}

// ApplyBatch implements store.Store: every event's EVALSHA goes out in one pipeline, so a batch
// costs one round trip instead of one per event. Redis runs the pipelined scripts in the order
// sent, so events of one user are applied in batch order. If Redis has lost the script (a
// restart, SCRIPT FLUSH), the events that got NOSCRIPT are sent again with EVAL, still in order;
// the failed ones form a suffix of the batch (the cache does not come back by itself), so no
// later event of a user overtakes an earlier one.
func (s *Store) ApplyBatch(ctx context.Context, evs []event.Event, spec *profile.Spec) ([]store.Result, error) {
	res := make([]store.Result, len(evs))
	if len(evs) == 0 {
		return res, nil
	}
	type call struct {
		i    int
		keys []string
		args []any
		cmd  *goredis.Cmd
	}
	calls := make([]call, 0, len(evs))
	for i, ev := range evs {
		args, err := s.applyArgs(ev, spec)
		if err != nil {
			res[i].Err = err
			continue
		}
		calls = append(calls, call{i: i, keys: s.keys(ev.UserID), args: args})
	}
	run := func(cs []call, eval bool) error {
		_, err := s.c.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for j := range cs {
				if eval {
					cs[j].cmd = applyScript.Eval(ctx, p, cs[j].keys, cs[j].args...)
				} else {
					cs[j].cmd = applyScript.EvalSha(ctx, p, cs[j].keys, cs[j].args...)
				}
			}
			return nil
		})
		return err
	}
	err := run(calls, false)
	if err != nil {
		// A pipeline error is the first failed command's; a connection error fails every command.
		retry := -1
		for j, c := range calls {
			if c.cmd.Err() != nil && goredis.HasErrorPrefix(c.cmd.Err(), "NOSCRIPT") {
				retry = j
				break
			}
		}
		if retry >= 0 {
			err = run(calls[retry:], true)
		}
	}
	if err != nil {
		failed := 0
		for _, c := range calls {
			if c.cmd.Err() != nil && !errors.Is(c.cmd.Err(), goredis.Nil) {
				failed++
			}
		}
		if failed == len(calls) {
			return nil, fmt.Errorf("apply %d events: %w", len(evs), err)
		}
	}
	for _, c := range calls {
		ev := evs[c.i]
		reply, err := c.cmd.Slice()
		if err != nil {
			res[c.i].Err = fmt.Errorf("apply event %q to user %s: %w", ev.ID, ops.UserRef(ev.UserID), err)
			continue
		}
		res[c.i].Profile, res[c.i].Applied, res[c.i].Err = decodeApplyReply(ev, reply)
	}
	return res, nil
}

// applyArgs builds apply.lua's ARGV for one event.
func (s *Store) applyArgs(ev event.Event, spec *profile.Spec) ([]any, error) {
	if ev.UserID == "" || ev.ID == "" {
		return nil, fmt.Errorf("apply event %q: missing event or user id", ev.ID)
	}
	u := spec.Plan(ev, s.opts.Now())
	args := make([]any, 0, 8+2*len(u.Traits)+4*len(u.Series)+3*len(u.Scores))
	args = append(args, ev.ID, u.Now.UnixMilli(), u.TS.UnixMilli(), s.opts.DedupWindow.Milliseconds(),
		s.opts.Retention.Milliseconds(), u.Type, len(u.Traits))
	for _, t := range u.Traits {
		args = append(args, "t:"+t.Name, encodeValue(t.Value))
	}
	args = append(args, len(u.Series))
	for _, su := range u.Series {
		args = append(args, su.Key.String(), su.Idx, strconv.FormatFloat(su.Delta, 'g', -1, 64), su.MinIdx)
	}
	args = append(args, len(u.Scores))
	for _, sc := range u.Scores {
		args = append(args, "o:"+sc.Name, strconv.FormatFloat(sc.Weight, 'g', -1, 64), sc.HalfLife.Milliseconds())
	}
	return args, nil
}

// decodeApplyReply reads apply.lua's {applied, HGETALL} reply.
func decodeApplyReply(ev event.Event, res []any) (*profile.Profile, bool, error) {
	if len(res) != 2 {
		return nil, false, fmt.Errorf("apply event %q: unexpected script reply %v", ev.ID, res)
	}
	applied, _ := res[0].(int64)
	fields, _ := res[1].([]any)
	p, err := decodeProfile(ev.UserID, fields)
	if err != nil {
		return nil, false, fmt.Errorf("apply event %q: %w", ev.ID, err)
	}
	return p, applied == 1, nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, userID string) (*profile.Profile, error) {
	m, err := s.c.HGetAll(ctx, s.keys(userID)[0]).Result()
	if err != nil {
		return nil, fmt.Errorf("get profile of user %s: %w", ops.UserRef(userID), err)
	}
	if len(m) == 0 {
		return nil, store.ErrNotFound
	}
	fields := make([]any, 0, 2*len(m))
	for k, v := range m {
		fields = append(fields, k, v)
	}
	p, err := decodeProfile(userID, fields)
	if err != nil {
		return nil, fmt.Errorf("get profile of user %s: %w", ops.UserRef(userID), err)
	}
	return p, nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, userID string) error {
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
// master in turn; the cursor is "<master index>:<SCAN cursor>".
func (s *Store) Scan(ctx context.Context, cursor string, count int) ([]string, string, error) {
	node, cur := 0, uint64(0)
	if cursor != "" {
		ns, cs, ok := strings.Cut(cursor, ":")
		var err1, err2 error
		node, err1 = strconv.Atoi(ns)
		cur, err2 = strconv.ParseUint(cs, 10, 64)
		if !ok || err1 != nil || err2 != nil || node < 0 {
			return nil, "", fmt.Errorf("scan profiles: bad cursor %q", cursor)
		}
	}
	clients, err := s.masters(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("scan profiles: %w", err)
	}
	if node >= len(clients) {
		return nil, "", nil
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
		keys, n, err := clients[node].Scan(ctx, next, match, hint).Result()
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
		return ids, strconv.Itoa(node) + ":" + strconv.FormatUint(next, 10), nil
	case node+1 < len(clients):
		return ids, strconv.Itoa(node+1) + ":0", nil
	default:
		return ids, "", nil
	}
}

// masters returns the clients to SCAN: the one client, or every Cluster master ordered by
// address so that a cursor's master index means the same master from call to call.
func (s *Store) masters(ctx context.Context) ([]goredis.Cmdable, error) {
	cc, ok := s.c.(*goredis.ClusterClient)
	if !ok {
		return []goredis.Cmdable{s.c}, nil
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
		return nil, fmt.Errorf("list cluster masters: %w", err)
	}
	slices.SortFunc(clients, func(a, b *goredis.Client) int { return strings.Compare(a.Options().Addr, b.Options().Addr) })
	out := make([]goredis.Cmdable, len(clients))
	for i, c := range clients {
		out[i] = c
	}
	return out, nil
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

func encodeValue(v profile.Value) string {
	switch v.Kind {
	case profile.KindBool:
		if v.Bool {
			return "b1"
		}
		return "b0"
	case profile.KindInt:
		return "i" + strconv.FormatInt(v.Int, 10)
	case profile.KindDouble:
		return "d" + strconv.FormatFloat(v.Double, 'g', -1, 64)
	case profile.KindString:
		return "s" + v.Str
	default:
		return ""
	}
}

var errBadValue = errors.New("bad encoded value")

func decodeValue(s string) (profile.Value, error) {
	if s == "" {
		return profile.Value{}, nil
	}
	body := s[1:]
	switch s[0] {
	case 'b':
		return profile.BoolValue(body == "1"), nil
	case 'i':
		i, err := strconv.ParseInt(body, 10, 64)
		if err != nil {
			return profile.Value{}, errBadValue
		}
		return profile.IntValue(i), nil
	case 'd':
		f, err := strconv.ParseFloat(body, 64)
		if err != nil {
			return profile.Value{}, errBadValue
		}
		return profile.DoubleValue(f), nil
	case 's':
		return profile.StringValue(body), nil
	}
	return profile.Value{}, errBadValue
}

func ms(s string) (time.Time, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(n).UTC(), nil
}

// decodeProfile builds a profile from HGETALL's field/value pairs.
func decodeProfile(userID string, kv []any) (*profile.Profile, error) {
	p := profile.New(userID)
	for i := 0; i+1 < len(kv); i += 2 {
		f, _ := kv[i].(string)
		v, _ := kv[i+1].(string)
		if err := decodeField(p, f, v); err != nil {
			return nil, fmt.Errorf("decode profile of user %s field %q: %w", ops.UserRef(userID), f, err)
		}
	}
	return p, nil
}

func decodeField(p *profile.Profile, f, v string) error {
	var err error
	switch {
	case f == "v":
		p.Version, err = strconv.ParseInt(v, 10, 64)
	case f == "c":
		p.Created, err = ms(v)
	case f == "u":
		p.Updated, err = ms(v)
	case strings.HasPrefix(f, "l:"):
		var t time.Time
		if t, err = ms(v); err == nil {
			if p.LastSeen == nil {
				p.LastSeen = map[string]time.Time{}
			}
			p.LastSeen[f[2:]] = t
		}
	case strings.HasPrefix(f, "t:"):
		tss, enc, ok := strings.Cut(v, "|")
		if !ok {
			return errBadValue
		}
		var tr profile.Trait
		if tr.TS, err = ms(tss); err != nil {
			return err
		}
		if tr.Value, err = decodeValue(enc); err != nil {
			return err
		}
		if p.Traits == nil {
			p.Traits = map[string]profile.Trait{}
		}
		p.Traits[f[2:]] = tr
	case strings.HasPrefix(f, "n:") || strings.HasPrefix(f, "s:"):
		key, err := profile.ParseSeriesKey(f)
		if err != nil {
			return err
		}
		series := &profile.Series{}
		for part := range strings.SplitSeq(v, ",") {
			is, vs, ok := strings.Cut(part, ":")
			idx, err1 := strconv.ParseInt(is, 10, 64)
			val, err2 := strconv.ParseFloat(vs, 64)
			if !ok || err1 != nil || err2 != nil {
				return errBadValue
			}
			series.Buckets = append(series.Buckets, profile.Bucket{Idx: idx, V: val})
		}
		if p.Series == nil {
			p.Series = map[profile.SeriesKey]*profile.Series{}
		}
		p.Series[key] = series
	case strings.HasPrefix(f, "o:"):
		parts := strings.Split(v, "|")
		if len(parts) != 3 {
			return errBadValue
		}
		val, err1 := strconv.ParseFloat(parts[0], 64)
		asOf, err2 := ms(parts[1])
		hl, err3 := strconv.ParseInt(parts[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return errBadValue
		}
		if p.Scores == nil {
			p.Scores = map[string]profile.Score{}
		}
		p.Scores[f[2:]] = profile.Score{Value: val, AsOf: asOf, HalfLife: time.Duration(hl) * time.Millisecond}
	}
	return err
}
