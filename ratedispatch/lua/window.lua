-- The fixed-window counter (prepended by ratedispatch._lua to the scripts that take slots).
-- The window opens with its first slot and lasts window_ms by the key's own TTL: Redis keeps
-- time, never a worker.

-- How many slots are left in the window, and its PTTL.  A counter found without a TTL (an
-- operator's SET, a lost PEXPIRE) gets one: otherwise it would close the API for ever.  A value
-- that is not a number is replaced by a full window, which errs on the side of the limit.
local function window_room(rate_key, limit, window_ms)
  local raw = redis.call('GET', rate_key)
  local used = 0
  if raw then
    used = tonumber(raw)
    if used == nil then
      redis.call('SET', rate_key, limit, 'PX', window_ms)
      return 0, window_ms
    end
  end
  local pttl = redis.call('PTTL', rate_key)
  if pttl == -1 then
    redis.call('PEXPIRE', rate_key, window_ms)
    pttl = window_ms
  end
  return limit - used, pttl
end

-- Count n slots as taken; the first slot of a window starts its clock.
local function window_take(rate_key, n, window_ms)
  redis.call('INCRBY', rate_key, n)
  if redis.call('PTTL', rate_key) == -1 then
    redis.call('PEXPIRE', rate_key, window_ms)
  end
end
