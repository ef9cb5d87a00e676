-- What recording one call's outcome (retry.lua, bury.lua) does first.
--
-- include: lua/clock.lua
-- include: queue/held.lua
-- include: limits/slot_log.lua

-- The slot taken for entry `id` at `stamp` is busy a window from its call's answer, or frees
-- at once when no call was made (slots_answered), whoever holds the entry now: the API saw the
-- call either way.  Returns the time, and whether this consumer (`me`) still holds the entry:
-- a worker that lost it (reclaimed during a long Redis outage) must not move it.
local function settle_slot(stream, group, me, id, slots, window_ms, stamp, answered_ago_ms)
  local now = now_ms()
  slots_answered(slots, window_ms, {id, stamp, answered_ago_ms}, now)
  return now, held_by(stream, group, me, id, id, 1)[id] ~= nil
end
