-- Close the limits for every worker: the API said 429.  No call starts until the cooldown ends
-- (the terms hash's `calls` field says until when, only ever later); then each paced term lets
-- one unit go at a time, at its pace.  The fixed-window counter (of the first N/D term) is set
-- full too when its window would end within the cooldown, so that `status` shows it closed; a
-- longer window (`20000/1d`) is left alone: closing it would stop the fleet for the rest of it.
--
-- A key's limits (queue/keyed.lua: a 429 to a call that carried the key's own token) close the
-- same way; they have no counter.
--
-- KEYS[1] rate: the fixed-window counter (RATE_KEY; for a key's limits, its terms again)
-- KEYS[2] terms: the limit terms' state
-- ARGV[1] limits: the limit terms (ratedispatch/terms.py: Limits.encoded)
-- ARGV[2] cooldown_ms: how long to close them for, at least
-- ARGV[3] counter: 1 when KEYS[1] is the counter, 0 for a key's limits
-- ARGV[4] lower: 1 when the 429 also lowers the factor RATE_ADAPT found (limits/adapt.lua)
-- Returns {the ms they are now closed for (a longer cooldown already set stays), that factor
-- (1 without adapt)}.  A cooldown of 0 closes nothing: with adapt, a 429 without Retry-After
-- only lowers the factor.
--
-- include: lua/clock.lua
-- include: limits/limits.lua
-- include: queue/keyed.lua
local rate, terms = KEYS[1], KEYS[2]
local cooldown_ms = tonumber(ARGV[2])
local idle = nil
if ARGV[3] ~= '1' then
  rate, idle = nil, keyed_idle(ARGV[1])  -- a key's limits go soon after they stop mattering
end
local now = now_ms()
local L = limits_open(rate, nil, terms, ARGV[1], 0, now, nil, idle)
if ARGV[4] == '1' and L.adapt ~= nil then
  L.adapt.dirty = adapt_down(L.adapt, now)
end
L.closed = math.max(L.closed, now + cooldown_ms)
L.calls_dirty = true
for _, term in ipairs(L.terms) do
  local pttl = cooldown_ms > 0 and term.counter and redis.call('PTTL', rate)
  if pttl and pttl <= cooldown_ms then
    redis.call('SET', rate, math.max(counter_used(rate, term.n), term.n), 'PX', cooldown_ms)
  elseif term.kind == 'p' and cooldown_ms > 0 then
    paced_close(term, now + cooldown_ms)
  end
end
L.refresh = true
limits_flush(L)
return {math.max(L.closed - now, 0), L.adapt and string.format('%.6f', L.adapt.f) or '1'}
