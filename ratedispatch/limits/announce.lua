-- Record what a response said of the API's limits (limits/heard.lua), for the whole fleet, in
-- one step.  "r remain until t" leaves the fleet r more calls before t, less the calls in flight
-- (but the one that carried it, answered): those the API may not have counted yet.  A newer
-- announcement (by the take stamp of the call that carried it) replaces what is kept; an older
-- one, or one from a call of the same take, can only lower `left`, never raise it nor move the
-- reset; one whose reset has passed is dropped.  The quotas it states replace the carried ones
-- only when it is newer.  A quota without a window (X-RateLimit-Limit) is taken to last as long
-- as the longest reset heard with it, in whole seconds: a reset is never longer than its window,
-- and the first answer of a window tells nearly all of it.
--
-- KEYS[1] terms: the limit terms' state
-- KEYS[2] flight: the calls in flight
-- ARGV[1] limits: the limit terms (ratedispatch/terms.py: Limits.encoded; `h` with obey)
-- ARGV[2] as_of: the take stamp of the call whose response said it
-- ARGV[3] member: that call's member in the flight ('' when it has none)
-- ARGV[4] remaining: the calls the API said remain (-1: it did not say)
-- ARGV[5] reset_ms: the ms from the response until they are back (-1: it did not say)
-- ARGV[6] ago_ms: the ms from the response until the worker sent this
-- ARGV[7] quotas: the quotas it stated, `N/D_ms` joined by `,` (D_ms 0: the window not stated)
-- Returns {said, left, reset_in_ms, quotas, busy, limit}: what the fleet now keeps (said -1:
-- nothing said yet; reset_in_ms -1: no reset in force), and our own count of the term of LIMITS
-- with the first quota's window, busy of limit ({-1, -1} when none has it), for the worker to
-- compare with what the API said.
--
-- include: lua/clock.lua
-- include: limits/limits.lua
local terms, flight = KEYS[1], KEYS[2]
local as_of, member = ARGV[2], ARGV[3]
local remaining, reset_ms, ago_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()

local L = limits_open(nil, flight, terms, ARGV[1], 0, now)
local H = L.heard or heard_parse(redis.call('HGET', terms, 'api'))
limits_expire(L)
local newer = heard_older(H.as_of, as_of)
local reset_at = now - ago_ms + reset_ms

if remaining >= 0 and reset_ms >= 0 and reset_at > now then
  local others = L.flight
  if member ~= '' and redis.call('ZSCORE', flight, member) then
    others = others - flight_cost(member)
  end
  local left = remaining - math.max(others, 0)
  if newer or not heard_active(H, now) then
    H.said, H.left, H.reset_at, H.as_of = remaining, left, reset_at, as_of
    H.probed = false
  elseif left < H.left then
    H.left = left
  end
end

-- The quotas the fleet carries, and the windows it stops carrying.
local dropped = {}
if newer and ARGV[7] ~= '' then
  local quotas, carried = {}, {}
  local previous = #H.quotas == 1 and H.quotas[1].d or 0
  for n, d in string.gmatch(ARGV[7], '(%d+)/(%d+)') do
    n, d = tonumber(n), tonumber(d)
    if d == 0 and reset_ms >= 0 then
      d = math.max(previous, math.ceil(reset_ms / 1000) * 1000, 1000)
    end
    if d > 0 then
      quotas[#quotas + 1] = {n = n, d = d}
      carried[d] = true
    end
  end
  for _, quota in ipairs(H.quotas) do
    if not carried[quota.d] then dropped[quota.d] = true end
  end
  H.quotas = quotas
end

-- Our own count in the term of LIMITS with the first quota's window.
local busy, limit = -1, -1
local first = H.quotas[1]
if first ~= nil then
  limits_room(L, math.huge)
  for _, term in ipairs(L.terms) do
    if not term.carried and term.kind == 'w' and math.abs(term.d - first.d) * 10 <= first.d then
      busy, limit = term.n - term.room, term.n
    end
  end
end

-- A window no longer carried leaves no count behind (rare: the API changed its windows).
if next(dropped) ~= nil then
  for _, term in ipairs(L.terms) do
    if term.carried and dropped[term.d] then term.dirty = false end
  end
  for _, name in ipairs(redis.call('HKEYS', terms)) do
    local d = tonumber(string.match(name, '^q(%d+)$') or string.match(name, '^q(%d+):'))
    if d ~= nil and dropped[d] then L.hdel[#L.hdel + 1] = name end
  end
end

-- From the call's take to now: how long a probe waits for its word, smoothed.
local took = now - math.floor(tonumber(as_of) / 1000)
if took >= 0 and H.rtt == 0 then
  H.rtt = took
elseif took >= 0 then
  H.rtt = math.floor((3 * H.rtt + took) / 4 + 0.5)
end
H.heard_at = now
L.hset['api'] = heard_format(H)
L.heard = nil  -- written above, whatever the mode
limits_flush(L)

local reset_in = -1
if heard_active(H, now) then reset_in = H.reset_at - now end
return {H.said or -1, H.left, reset_in, heard_quotas_text(H.quotas), busy, limit}
