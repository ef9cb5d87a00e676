-- The fixed-window counter (prepended by ratedispatch._lua to the scripts that take slots).
-- The window opens with its first slot and lasts window_ms by the key's own TTL, or, once full,
-- until window_ms after the slot that filled it: Redis keeps time, never a worker.

-- Take up to n slots (n >= 1); returns the slots granted and the window's PTTL.  Counting first
-- and giving back what does not fit costs one command less than reading first, on every take.
-- A counter found without a TTL (a new window, an operator's SET, a lost PEXPIRE) gets one:
-- otherwise it would close the API for ever.  A value that is not a number is replaced by a
-- full window, which errs on the side of the limit.
local function window_take(rate_key, limit, window_ms, n)
  local used = redis.pcall('INCRBY', rate_key, n)
  if type(used) == 'table' then
    redis.call('SET', rate_key, limit, 'PX', window_ms)
    return 0, window_ms
  end
  local pttl = redis.call('PTTL', rate_key)
  if pttl == -1 then
    redis.call('PEXPIRE', rate_key, window_ms)
    pttl = window_ms
  end
  local granted = math.max(0, math.min(n, limit - (used - n)))
  if granted < n then
    redis.call('DECRBY', rate_key, n - granted)
  end
  if granted > 0 and used - n + granted >= limit and pttl < window_ms then
    -- This slot filled the window: it now ends window_ms after this slot, not after the first
    -- one.  So no interval of window_ms holds more than `limit` slots across the boundary with
    -- the next window: its first slot comes window_ms after this last one.
    redis.call('PEXPIRE', rate_key, window_ms)
    pttl = window_ms
  end
  return granted, pttl
end

-- Give back n slots taken for entries that turned out to be gone (trimmed, deleted).
local function window_give_back(rate_key, n)
  if n > 0 and redis.call('EXISTS', rate_key) == 1 then
    redis.call('DECRBY', rate_key, n)
  end
end

-- A call of a full window has been answered: the window lasts at least hold_ms more, a window's
-- length from the answer (the caller counts the time since).  The API saw the call before it
-- answered, so the next window's calls reach it at least window_ms after every call of this one
-- that ended in time, however late each went out (a busy CPU, a new connection).  A window that
-- is not full needs nothing: it has room for no more than `limit`.
local function window_hold(rate_key, limit, hold_ms)
  if hold_ms <= 0 then return end
  local used = tonumber(redis.call('GET', rate_key) or '0') or limit
  if used >= limit and redis.call('PTTL', rate_key) < hold_ms then
    redis.call('PEXPIRE', rate_key, hold_ms)
  end
end
