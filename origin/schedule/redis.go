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

// takeDue returns, atomically, up to ARGV[2] users: first the takes that ran out at ARGV[1],
// then due members of KEYS[1], moved to KEYS[2]; every one returned is taken until ARGV[3].
var takeDue = redis.NewScript(`
local max = tonumber(ARGV[2])
local users = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, max)
if #users < max then
  local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, max - #users)
  if #due > 0 then
    redis.call('ZREM', KEYS[1], unpack(due))
    for _, u in ipairs(due) do users[#users + 1] = u end
  end
end
for _, u in ipairs(users) do redis.call('ZADD', KEYS[2], ARGV[3], u) end
return users`)

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
func (r *Redis) Due(ctx context.Context, p int, now time.Time, max int) ([]string, error) {
	users, err := takeDue.Run(ctx, r.c, []string{r.key(p), r.takenKey(p)}, now.UnixMilli(), max, now.Add(Lease).UnixMilli()).StringSlice()
	if err != nil && err != redis.Nil {
		return nil, fmt.Errorf("take due re-evaluations: %w", err)
	}
	return users, nil
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
