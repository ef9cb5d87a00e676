-- Close the limits for every worker: the API said 429.  The fixed-window counter (of the first
-- N/D term) is set full with the cooldown as its TTL, only ever lengthening what is there; a
-- paced term lets no unit go before the cooldown ends, and then one at a time, at its pace.
--
-- KEYS[1] rate: the fixed-window counter (RATE_KEY)
-- KEYS[2] terms: the limit terms' state
-- ARGV[1] limits: the limit terms (ratedispatch/terms.py: Limits.encoded)
-- ARGV[2] cooldown_ms: how long to close them for, at least
-- Returns the ms they are now closed for.
--
-- include: lua/clock.lua
-- include: limits/limits.lua
local rate, terms = KEYS[1], KEYS[2]
local cooldown_ms = tonumber(ARGV[2])
local now = now_ms()

local L = limits_open(rate, nil, terms, ARGV[1], 0, now)
local ms = cooldown_ms
for _, term in ipairs(L.terms) do
  if term.counter then
    ms = math.max(cooldown_ms, redis.call('PTTL', rate))
    redis.call('SET', rate, math.max(counter_used(rate, term.n), term.n), 'PX', ms)
  elseif term.kind == 'p' then
    paced_close(term, now + cooldown_ms)
  end
end
L.refresh = true
limits_flush(L)
return ms
