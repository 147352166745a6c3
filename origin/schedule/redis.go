package schedule

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis keeps due times in one sorted set per partition, scored by Unix milliseconds.
type Redis struct {
	c      redis.UniversalClient
	prefix string
}

// NewRedis returns a schedule whose keys start with prefix ("seg:" in production).
func NewRedis(c redis.UniversalClient, prefix string) *Redis { return &Redis{c: c, prefix: prefix} }

func (r *Redis) key(p int) string { return r.prefix + "due:{p" + strconv.Itoa(p) + "}" }

// takenKey is the partition's users taken by Due and not done yet, scored by when the take
// runs out (Unix ms); same hash slot as key.
func (r *Redis) takenKey(p int) string { return r.prefix + "due-taken:{p" + strconv.Itoa(p) + "}" }

// takeDue returns, atomically, up to ARGV[2] users, each followed by the Unix ms it was due:
// first the takes that ran out at ARGV[1] (due = when taken: run-out time minus ARGV[4]), then
// due members of KEYS[1], moved to KEYS[2]; every one returned is taken until ARGV[3].
var takeDue = redis.NewScript(`
local max = tonumber(ARGV[2])
local out = {}
local ran = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, max, 'WITHSCORES')
for i = 1, #ran, 2 do
  out[#out + 1] = ran[i]
  out[#out + 1] = tostring(tonumber(ran[i + 1]) - tonumber(ARGV[4]))
end
local n = #out / 2
if n < max then
  local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, max - n, 'WITHSCORES')
  local users = {}
  for i = 1, #due, 2 do
    users[#users + 1] = due[i]
    out[#out + 1] = due[i]
    out[#out + 1] = due[i + 1]
  end
  if #users > 0 then redis.call('ZREM', KEYS[1], unpack(users)) end
end
for i = 1, #out, 2 do redis.call('ZADD', KEYS[2], ARGV[3], out[i]) end
return out`)

// At implements Schedule. ZADD LT keeps the earliest time (Redis 6.2+).
func (r *Redis) At(ctx context.Context, p int, user string, due time.Time) error {
	err := r.c.ZAddLT(ctx, r.key(p), redis.Z{Score: float64(due.UnixMilli()), Member: user}).Err()
	if err != nil {
		return fmt.Errorf("schedule re-evaluation: %w", err)
	}
	return nil
}

// AtMany implements Batcher: one ZADD LT for all of them.
func (r *Redis) AtMany(ctx context.Context, p int, users []string, dues []time.Time) error {
	if len(users) == 0 {
		return nil
	}
	zs := make([]redis.Z, len(users))
	for i, u := range users {
		zs[i] = redis.Z{Score: float64(dues[i].UnixMilli()), Member: u}
	}
	if err := r.c.ZAddLT(ctx, r.key(p), zs...).Err(); err != nil {
		return fmt.Errorf("schedule %d re-evaluations: %w", len(users), err)
	}
	return nil
}

// Due implements Schedule.
func (r *Redis) Due(ctx context.Context, p int, now time.Time, max int) ([]Taken, error) {
	flat, err := takeDue.Run(ctx, r.c, []string{r.key(p), r.takenKey(p)},
		now.UnixMilli(), max, now.Add(Lease).UnixMilli(), Lease.Milliseconds()).StringSlice()
	if err != nil && err != redis.Nil {
		return nil, fmt.Errorf("take due re-evaluations: %w", err)
	}
	out := make([]Taken, 0, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		ms, err := strconv.ParseFloat(flat[i+1], 64)
		if err != nil {
			return nil, fmt.Errorf("take due re-evaluations: due time %q: %w", flat[i+1], err)
		}
		out = append(out, Taken{User: flat[i], At: time.UnixMilli(int64(ms))})
	}
	return out, nil
}

// Done implements Schedule.
func (r *Redis) Done(ctx context.Context, p int, users ...string) error {
	if len(users) == 0 {
		return nil
	}
	members := make([]any, len(users))
	for i, u := range users {
		members[i] = u
	}
	if err := r.c.ZRem(ctx, r.takenKey(p), members...).Err(); err != nil {
		return fmt.Errorf("mark %d re-evaluations done: %w", len(users), err)
	}
	return nil
}

// Cancel implements Schedule.
func (r *Redis) Cancel(ctx context.Context, p int, user string) error {
	_, err := r.c.Pipelined(ctx, func(pl redis.Pipeliner) error {
		pl.ZRem(ctx, r.key(p), user)
		pl.ZRem(ctx, r.takenKey(p), user)
		return nil
	})
	if err != nil {
		return fmt.Errorf("cancel re-evaluation: %w", err)
	}
	return nil
}
