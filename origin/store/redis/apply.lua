-- Apply one event to one profile, atomically. See redis.go for the layout.
-- KEYS[1] profile hash, KEYS[2] dedup sorted set (event id -> applied at, ms); same hash tag.
-- ARGV: 1 event id, 2 now ms, 3 ts ms, 4 dedup window ms, 5 ttl ms, 6 event type,
--       7 trait count, then per trait: field, encoded value ('' deletes),
--       then series count, then per series: field, bucket index, delta, min index,
--       then score count, then per score: field, weight, half-life ms.
-- Returns {applied (0/1), HGETALL of the profile}.
local h, d = KEYS[1], KEYS[2]
local now, ts = tonumber(ARGV[2]), tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local seen = redis.call('ZSCORE', d, ARGV[1])
if seen and tonumber(seen) > now - window then
  return {0, redis.call('HGETALL', h)}
end
redis.call('ZREMRANGEBYSCORE', d, '-inf', '(' .. string.format('%d', now - window))
redis.call('ZADD', d, now, ARGV[1])

redis.call('HINCRBY', h, 'v', 1)
redis.call('HSETNX', h, 'c', ARGV[2])
redis.call('HSET', h, 'u', ARGV[2])
local lf = 'l:' .. ARGV[6]
local last = redis.call('HGET', h, lf)
if not last or ts > tonumber(last) then
  redis.call('HSET', h, lf, ARGV[3])
end

local i = 8
for _ = 1, tonumber(ARGV[7]) do
  local f, val = ARGV[i], ARGV[i + 1]
  i = i + 2
  local old = redis.call('HGET', h, f)
  local oldts = old and tonumber(string.match(old, '^(-?%d+)|'))
  if not oldts or ts >= oldts then
    redis.call('HSET', h, f, ARGV[3] .. '|' .. val)
  end
end

local n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  local f, idx, delta, minidx = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  i = i + 4
  local out = {}
  local done = idx < minidx
  local old = redis.call('HGET', h, f)
  if old then
    for bs, vs in string.gmatch(old, '(-?%d+):([^,]+)') do
      local b = tonumber(bs)
      if b >= minidx then
        if not done and b > idx then
          out[#out + 1] = string.format('%d:%.17g', idx, delta)
          done = true
        end
        if b == idx then
          vs = string.format('%.17g', tonumber(vs) + delta)
          done = true
        end
        out[#out + 1] = bs .. ':' .. vs
      end
    end
  end
  if not done then
    out[#out + 1] = string.format('%d:%.17g', idx, delta)
  end
  if #out == 0 then
    redis.call('HDEL', h, f)
  else
    redis.call('HSET', h, f, table.concat(out, ','))
  end
end

n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  local f, w, hl = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local v, asof
  local old = redis.call('HGET', h, f)
  if old then
    local vs, as = string.match(old, '^([^|]+)|(-?%d+)')
    v, asof = tonumber(vs), tonumber(as)
  end
  if not v or not asof then
    v, asof = w, ts
  elseif ts >= asof then
    if ts > asof then
      v = v * math.pow(2, -(ts - asof) / hl)
    end
    v = v + w
    asof = ts
  else
    v = v + w * math.pow(2, -(asof - ts) / hl)
  end
  redis.call('HSET', h, f, string.format('%.17g|%d|%d', v, asof, hl))
end

local ttl = tonumber(ARGV[5])
redis.call('PEXPIRE', h, ttl)
redis.call('PEXPIRE', d, math.max(ttl, window))
return {1, redis.call('HGETALL', h)}
