-- Take up to `want` slots for the best waiting tasks and claim those tasks for this consumer,
-- atomically: the ZPOPMIN is the exclusive claim, so no two workers get the same entry, and a
-- slot is counted only for an entry that could really be claimed.
--
-- KEYS: rate, deferred (priority index), retry (due-time index), stream, attempts
-- ARGV: limit, window_ms, want, group, me, waiting consumer, max retries to promote
-- Returns {1, {{id, fields, attempt, member}, ...}}  granted
--         {0, pttl_ms}                               window full; it reopens in pttl_ms
--         {2, wait_ms}                               nothing waiting; next retry due in wait_ms (-1: none)
local rate, deferred, retry, stream, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local limit, window_ms, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local group, me, waiting = ARGV[4], ARGV[5], ARGV[6]
local now = now_ms()

-- Retries whose backoff has passed rejoin the priority index, under their original rank and id.
local due = redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))
for _, member in ipairs(due) do
  redis.call('ZREM', retry, member)
  redis.call('ZADD', deferred, 0, member)
end

local room, pttl = window_room(rate, limit, window_ms)
if room <= 0 then
  return {0, pttl}
end

local granted = {}
local n = math.min(room, want)
while #granted < n do
  local popped = redis.call('ZPOPMIN', deferred)
  if #popped == 0 then break end
  local member = popped[1]
  local id = member_id(member)
  if owned_by(stream, group, id, waiting) then
    local claimed = redis.call('XCLAIM', stream, group, me, 0, id)
    -- Redis 7 drops an entry deleted from the stream (XTRIM, XDEL) from the pending list here.
    if #claimed > 0 and claimed[1] then
      local attempt = redis.call('HINCRBY', attempts, id, 1)
      granted[#granted + 1] = {id, claimed[1][2], attempt, member}
    else
      redis.call('HDEL', attempts, id)
    end
  end
end

if #granted > 0 then
  window_take(rate, #granted, window_ms)
  return {1, granted}
end

local nxt = redis.call('ZRANGE', retry, 0, 0, 'WITHSCORES')
if #nxt > 0 then
  return {2, math.max(tonumber(nxt[2]) - now, 0)}
end
return {2, -1}
