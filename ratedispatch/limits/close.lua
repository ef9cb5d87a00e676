-- Close the window for every worker: the API said 429.  The counter is set to the limit and its
-- TTL to the cooldown, only ever lengthening what is already there.
--
-- KEYS[1] rate: the fixed-window counter (RATE_KEY)
-- ARGV[1] limit: RATE_LIMIT
-- ARGV[2] cooldown_ms: how long to close it for, at least
-- Returns the PTTL the window now has.
--
-- include: limits/counter.lua
local rate = KEYS[1]
local limit = tonumber(ARGV[1])
local cooldown_ms = tonumber(ARGV[2])

local ms = math.max(cooldown_ms, redis.call('PTTL', rate))
redis.call('SET', rate, math.max(counter_used(rate, limit), limit), 'PX', ms)
return ms
