-- Store one event's profile change, computed by the Go side, exactly once and only onto the state
-- it was computed from (compare-and-set). See redis.go for the layout and apply.go for the Go side.
--
-- KEYS[1] profile hash, KEYS[2] dedup sorted set (event id -> applied at, ms); same hash tag.
-- ARGV: 1 event id, 2 now ms, 3 dedup window ms, 4 ttl ms,
--       5 expected v, 6 expected c, 7 expected e (a missing field is expected as '0', '', ''),
--       8 number n of fields to delete, 9 .. 8+n those fields, then field, value pairs to set.
--
-- Returns:
--   'applied'                 the fields were written; the event id is recorded
--   'duplicate'               the event id was applied within the window; nothing written, the
--                             profile is the expected one
--   {'duplicate', HGETALL}    the same, but the profile is not the expected one: here it is
--   {'stale', HGETALL}        a new event, but the profile is not the expected one (another writer,
--                             expiry, delete): nothing written; Go recomputes from this profile
--
-- The id is checked before the profile so that a redelivered event is never written twice, even
-- onto a profile Go did not expect. The profile's identity is (v, c, e): the version, the
-- creation time (a deleted and re-created profile restarts its version) and the id of the last
-- event written (two writers cannot both write version v+1 over version v unnoticed).
local h, d = KEYS[1], KEYS[2]
local id, now = ARGV[1], tonumber(ARGV[2])

local seen = redis.call('ZSCORE', d, id)
local cur = redis.call('HMGET', h, 'v', 'c', 'e')
local expected = (tonumber(cur[1]) or 0) == tonumber(ARGV[5])
  and (cur[2] or '') == ARGV[6] and (cur[3] or '') == ARGV[7]
if seen and tonumber(seen) > now - tonumber(ARGV[3]) then
  if expected then
    return 'duplicate'
  end
  return {'duplicate', redis.call('HGETALL', h)}
end
if not expected then
  return {'stale', redis.call('HGETALL', h)}
end

local ndel = tonumber(ARGV[8])
if ndel > 0 then
  redis.call('HDEL', h, unpack(ARGV, 9, 8 + ndel))
end
redis.call('HSET', h, unpack(ARGV, 9 + ndel))

-- Dedup record: prune ids older than the window every 16th version (ZSCORE above compares
-- with the window anyway, so a stale id never blocks an event).
if (tonumber(ARGV[5]) + 1) % 16 == 0 then
  redis.call('ZREMRANGEBYSCORE', d, '-inf', '(' .. string.format('%d', now - tonumber(ARGV[3])))
end
redis.call('ZADD', d, now, id)
redis.call('PEXPIRE', h, ARGV[4])
redis.call('PEXPIRE', d, ARGV[4])
return 'applied'
