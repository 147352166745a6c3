-- Apply one event to one profile, atomically. See redis.go for the layout.
-- KEYS[1] profile hash, KEYS[2] dedup sorted set (event id -> applied at, ms); same hash tag.
-- ARGV: 1 event id, 2 now ms, 3 ts ms, 4 dedup window ms, 5 ttl ms, 6 event type,
--       7 trait count, then per trait: field, encoded value ('' deletes),
--       then series count, then per series: field, bucket index, delta, min index,
--       then score count, then per score: field, weight, half-life ms.
-- Returns {applied (0/1), HGETALL of the profile}.
-- All profile fields the event touches are read with one HMGET and written with one HSET, to
-- keep the number of redis.call()s (the script's main cost) small.
local h, d = KEYS[1], KEYS[2]
local now, ts = tonumber(ARGV[2]), tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local seen = redis.call('ZSCORE', d, ARGV[1])
if seen and tonumber(seen) > now - window then
  return {0, redis.call('HGETALL', h)}
end

-- Parse the arguments and list the fields to read.
local read = {'v', 'c', 'l:' .. ARGV[6]}
local traits, series, scores = {}, {}, {}
local i = 8
for _ = 1, tonumber(ARGV[7]) do
  traits[#traits + 1] = {ARGV[i], ARGV[i + 1]}
  read[#read + 1] = ARGV[i]
  i = i + 2
end
local n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  series[#series + 1] = {ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])}
  read[#read + 1] = ARGV[i]
  i = i + 4
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  scores[#scores + 1] = {ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])}
  read[#read + 1] = ARGV[i]
  i = i + 3
end
local old = redis.call('HMGET', h, unpack(read))

local version = (tonumber(old[1]) or 0) + 1
local set = {'v', version, 'u', ARGV[2]}
local del = {}
if not old[2] then
  set[#set + 1] = 'c'
  set[#set + 1] = ARGV[2]
end
if not old[3] or ts > tonumber(old[3]) then
  set[#set + 1] = read[3]
  set[#set + 1] = ARGV[3]
end
local r = 4

for _, t in ipairs(traits) do
  local o = old[r]
  r = r + 1
  local oldts = o and tonumber(string.match(o, '^(-?%d+)|'))
  if not oldts or ts >= oldts then
    set[#set + 1] = t[1]
    set[#set + 1] = ARGV[3] .. '|' .. t[2]
  end
end

for _, s in ipairs(series) do
  local f, idx, delta, minidx = s[1], s[2], s[3], s[4]
  local o = old[r]
  r = r + 1
  local out = {}
  local done = idx < minidx
  if o then
    for bs, vs in string.gmatch(o, '(-?%d+):([^,]+)') do
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
    del[#del + 1] = f
  else
    set[#set + 1] = f
    set[#set + 1] = table.concat(out, ',')
  end
end

for _, s in ipairs(scores) do
  local f, w, hl = s[1], s[2], s[3]
  local o = old[r]
  r = r + 1
  local v, asof
  if o then
    local vs, as = string.match(o, '^([^|]+)|(-?%d+)')
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
  set[#set + 1] = f
  set[#set + 1] = string.format('%.17g|%d|%d', v, asof, hl)
end

redis.call('HSET', h, unpack(set))
if #del > 0 then
  redis.call('HDEL', h, unpack(del))
end

-- Dedup record: prune ids older than the window every 16th event (ZSCORE above compares
-- with the window anyway, so a stale id never blocks an event).
if version % 16 == 0 then
  redis.call('ZREMRANGEBYSCORE', d, '-inf', '(' .. string.format('%d', now - window))
end
redis.call('ZADD', d, now, ARGV[1])

local ttl = tonumber(ARGV[5])
redis.call('PEXPIRE', h, ttl)
redis.call('PEXPIRE', d, ttl)
return {1, redis.call('HGETALL', h)}
