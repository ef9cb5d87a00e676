-- Where every limit term stands, for `status` and the gauges; reads only (under OOM too).
--
-- KEYS[1] rate: the fixed-window counter (RATE_KEY)
-- KEYS[2] flight: the calls in flight
-- KEYS[3] terms: the limit terms' state
-- ARGV[1] limits: the limit terms (ratedispatch/terms.py: Limits.encoded)
-- Returns {{used, limit, frees_in_ms}, ... one for each term, in order; then the counter's
-- {used, pttl} ({-1, -1} without an N/D term); then {calls in flight, units in flight}; then
-- what the API announced (limits/heard.lua), {said, left, reset_in_ms, quotas, heard_ms_ago}
-- ({} when nothing was heard); then the factor RATE_ADAPT found, {f} ({} without adapt); then a
-- row as for a term for each quota the fleet carries}.  Terms are shown as LIMITS states them:
-- with adapt, a term's limit is the effective one.
-- frees_in_ms is the soonest a busy unit may free, as a refused take would wait for it (a unit
-- in flight frees D after its answer: D from now at the soonest); -1 when none is busy.
--
-- include: lua/clock.lua
-- include: limits/limits.lua
local rate, flight, terms = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()

local L = limits_open(rate, flight, terms, ARGV[1], 1, now)
limits_expire(L)
limits_room(L, math.huge)
local rows, carried, counter = {}, {}, {-1, -1}
for _, term in ipairs(L.terms) do
  local out = term.carried and carried or rows
  if term.kind == 'w' then
    local frees = window_freeing(terms, term, 1, now) or -1
    if L.flight > 0 and (frees < 0 or frees > term.d) then frees = term.d end
    out[#out + 1] = {math.max(0, math.min(term.n, term.n - term.room)), term.n, frees}
    if term.counter then
      counter = {counter_used(rate, term.n), redis.call('PTTL', rate)}
    end
  else
    local level, frees = paced_level(term, now), -1
    if level > 0 then
      frees = math.ceil((term.tat - now) - (math.ceil(level - PACED_SLACK) - 1) * term.t)
    elseif L.flight > 0 then
      frees = math.ceil(term.t)  -- answered now, a unit drains in T
    end
    out[#out + 1] = {math.max(0, math.min(term.b, term.b - term.room)), term.b, frees}
  end
end
rows[#rows + 1] = counter
rows[#rows + 1] = {L.calls, L.flight}
local H = L.heard or heard_parse(redis.call('HGET', terms, 'api'))
if H.heard_at > 0 then
  local reset_in = heard_active(H, now) and H.reset_at - now or -1
  rows[#rows + 1] = {H.said or -1, H.left, reset_in, heard_quotas_text(H.quotas), now - H.heard_at}
else
  rows[#rows + 1] = {}
end
rows[#rows + 1] = L.adapt and {string.format('%.6f', L.adapt.f)} or {}
for _, row in ipairs(carried) do rows[#rows + 1] = row end
return rows
