-- The fixed-window counter at RATE_KEY: the calls started in the current window.  It opens with
-- its first slot and lasts window_ms by the key's own TTL, so Redis keeps its time.  A 429 closes
-- it (close.lua).  On its own it would let a window's last calls and the next window's first
-- ones reach the API within one window's length, up to twice the limit: the slot log beside it
-- (slot_log.lua) closes that gap.

-- The slots the counter has used; a value that is not a number is as good as full.
local function counter_used(rate, limit)
  local raw = redis.call('GET', rate)
  if not raw then return 0 end
  return tonumber(raw) or limit
end

-- Count up to n (n >= 1) slots; returns how many fit and the window's PTTL.  Counting first and
-- giving back what does not fit costs one command less than reading first.  A counter found
-- without a TTL (a new window, an operator's SET, a lost PEXPIRE) gets one: otherwise it would
-- close the API for ever.  A value that is not a number (or a key of another type) is replaced
-- by a full window, which errs on the side of the limit.
local function counter_take(rate, limit, window_ms, n)
  local used = redis.pcall('INCRBY', rate, n)
  if type(used) == 'table' then
    local err = tostring(used.err)
    if not (string.find(err, 'not an integer', 1, true) or string.find(err, '^WRONGTYPE')) then
      -- Not the value's fault (OOM, say): raise it, as the unprotected call would.
      redis.call('INCRBY', rate, n)
    end
    redis.call('SET', rate, limit, 'PX', window_ms)
    return 0, window_ms
  end
  local pttl = redis.call('PTTL', rate)
  if pttl == -1 then
    redis.call('PEXPIRE', rate, window_ms)
    pttl = window_ms
  end
  local granted = math.max(0, math.min(n, limit - (used - n)))
  if granted < n then
    redis.call('DECRBY', rate, n - granted)
  end
  return granted, pttl
end

-- Give back n slots counted for entries that turned out to be gone (trimmed, deleted).
local function counter_give_back(rate, n)
  if n > 0 and redis.call('EXISTS', rate) == 1 then
    redis.call('DECRBY', rate, n)
  end
end
