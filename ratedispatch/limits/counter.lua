-- The fixed-window counter at RATE_KEY: the units started in the current window of the first
-- N/D term.  It opens with its first call and lasts D by the key's own TTL, so Redis keeps its
-- time; a 429 closes it (close.lua), which stops every worker at once.  On its own it would let
-- one window's last calls and the next window's first reach the API within D, up to twice the
-- limit: the term's log (window_log.lua) closes that gap.

-- The units the counter has used, and whether it needs repair: a value that is not a number,
-- or a key of another type, counts as a full window (which errs on the side of the limit).
local function counter_used(rate, limit)
  local raw = redis.pcall('GET', rate)
  if type(raw) == 'table' then
    if not string.find(tostring(raw.err), '^WRONGTYPE') then
      redis.call('GET', rate)  -- not the value's fault (OOM, say): raise it, as GET would
    end
    return limit, true
  end
  if not raw then return 0, false end
  local used = tonumber(raw)
  if used == nil then return limit, true end
  return used, false
end

-- The ms until the counter's window reopens.  A counter found without a TTL (an operator's SET,
-- a lost PEXPIRE) gets one, and one holding garbage becomes a full window: either would
-- otherwise close the API for ever.
local function counter_wait(rate, limit, window_ms, garbage)
  if garbage then
    redis.call('SET', rate, limit, 'PX', window_ms)
    return window_ms
  end
  local pttl = redis.call('PTTL', rate)
  if pttl == -1 then
    redis.call('PEXPIRE', rate, window_ms)
    return window_ms
  end
  return math.max(pttl, 0)
end

-- Count `units` started, before knowing that they fit: returns the count after, for the caller
-- to give back what does not fit (counter_give_back); nil when the counter held garbage and is
-- now a full window.  A new window gets its TTL here.
local function counter_charge(rate, limit, window_ms, units)
  local used = redis.pcall('INCRBY', rate, units)
  if type(used) == 'table' then
    local err = tostring(used.err)
    if not (string.find(err, 'not an integer', 1, true) or string.find(err, '^WRONGTYPE')) then
      redis.call('INCRBY', rate, units)  -- not the value's fault (OOM, say): raise it
    end
    redis.call('SET', rate, limit, 'PX', window_ms)
    return nil
  end
  if used == units then
    redis.call('PEXPIRE', rate, window_ms)
  end
  return used
end

-- Give back `units` counted by counter_charge in this script (so the key exists).
local function counter_give_back(rate, units)
  if units > 0 then redis.call('DECRBY', rate, units) end
end
