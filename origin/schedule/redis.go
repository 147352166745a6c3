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

// popDue removes and returns the due members atomically, so two workers never both take a user.
var popDue = redis.NewScript(`
local users = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
if #users > 0 then redis.call('ZREM', KEYS[1], unpack(users)) end
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
	users, err := popDue.Run(ctx, r.c, []string{r.key(p)}, now.UnixMilli(), max).StringSlice()
	if err != nil && err != redis.Nil {
		return nil, fmt.Errorf("take due re-evaluations: %w", err)
	}
	return users, nil
}

// Cancel implements Schedule.
func (r *Redis) Cancel(ctx context.Context, p int, user string) error {
	if err := r.c.ZRem(ctx, r.key(p), user).Err(); err != nil {
		return fmt.Errorf("cancel re-evaluation: %w", err)
	}
	return nil
}
