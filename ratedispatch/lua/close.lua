-- Close the window for every worker: the API said 429.  The counter is set to the limit and its
-- TTL to the cooldown, only ever lengthening what is already there.
--
-- KEYS: rate
-- ARGV: limit, cooldown_ms
-- Returns the PTTL the window now has.
local rate, limit, ms = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local pttl = redis.call('PTTL', rate)
if pttl > ms then ms = pttl end
local used = tonumber(redis.call('GET', rate) or '0') or limit
if used < limit then used = limit end
redis.call('SET', rate, used, 'PX', ms)
return ms
