-- What recording one call's outcome (retry.lua, bury.lua) does first.
--
-- include: lua/clock.lua
-- include: queue/held.lua
-- include: limits/limits.lua
-- include: queue/keyed.lua

-- The call for entry `id` started at `stamp` (costing `cost`) leaves the flight and counts in
-- every limit term from its answer, or from nowhere when none was made (limits_record), whoever
-- holds the entry now: the API saw the call either way.  Returns the time, and the entry's
-- delivery count if this consumer (`me`) still holds it, else nil: a worker that lost it
-- (reclaimed during a long Redis outage) must not move it.  `keyed` is {prefix, key_limits, key}
-- (queue/keyed.lua): the call counts in its key's limits too.
local function settle_call(stream, group, me, id, flight, terms, spec, stamp, cost, ago_ms, keyed)
  local now = now_ms()
  local calls = {{id, stamp, tonumber(cost), tonumber(ago_ms), keyed[3]}}
  limits_record(flight, terms, spec, now, calls)
  keyed_record(keyed[1], keyed[2], now, calls)
  return now, held_by(stream, group, me, id, id, 1)[id]
end
