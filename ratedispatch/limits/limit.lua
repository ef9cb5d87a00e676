-- The limit at RATE_KEY, kept two ways: the fixed-window counter and the slot log beside it.  A
-- slot is given only when both have room.  Redis keeps time for both, never a worker.
--
-- include: limits/counter.lua
-- include: limits/slot_log.lua

-- How many slots could be given now: the room left in both the counter and the log.
local function limit_room(rate, slots, limit, now)
  return math.min(limit - counter_used(rate, limit), limit - slots_busy(slots, now))
end

-- Take up to n slots (n >= 1) at `now`; returns the slots granted and, when none was, the ms
-- until one may be: the log's first slot to free, or the counter's PTTL when it is full too and
-- reopens later.  The caller holds the granted slots in the log (slots_hold) for the entries it
-- really hands over, and gives back the rest (counter_give_back).
local function limit_take(rate, slots, limit, window_ms, n, now)
  local busy = slots_busy(slots, now)
  if busy >= limit then
    local wait = slots_wait(slots, window_ms, now)
    if counter_used(rate, limit) >= limit then
      wait = math.max(wait, redis.call('PTTL', rate))
    end
    return 0, wait
  end
  return counter_take(rate, limit, window_ms, math.min(n, limit - busy))
end
