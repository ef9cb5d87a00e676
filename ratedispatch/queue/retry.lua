-- An entry this consumer holds is to be tried again after a delay: it goes back to the waiting
-- consumer and into the retry index, due at now + delay.  Nothing happens unless the entry is
-- still ours: a worker that lost it (reclaimed during a long Redis outage) must not move it.
--
-- The slot taken for its call is busy for a window from the call's answer (slots_answered),
-- whoever holds the entry now.
--
-- KEYS[1] stream: the task stream
-- KEYS[2] retry: the retry index
-- KEYS[3] slots: the slot log
-- ARGV[1] group: the consumer group
-- ARGV[2] me: this worker's consumer
-- ARGV[3] waiting: the waiting consumer
-- ARGV[4] id: the entry
-- ARGV[5] member: its index member
-- ARGV[6] delay_ms: the backoff
-- ARGV[7] stamp: of the take that gave its slot
-- ARGV[8] answered_ago_ms: how long ago the call was answered
-- ARGV[9] window_ms: RATE_WINDOW_SECONDS in ms
-- Returns 1 when recorded, 0 when the entry was no longer ours.
--
-- include: queue/settling.lua
local stream, retry, slots = KEYS[1], KEYS[2], KEYS[3]
local group, me, waiting = ARGV[1], ARGV[2], ARGV[3]
local id, member = ARGV[4], ARGV[5]
local delay_ms = tonumber(ARGV[6])
local stamp, answered_ago_ms = ARGV[7], ARGV[8]
local window_ms = tonumber(ARGV[9])

local now, held = settle_slot(stream, group, me, id, slots, window_ms, stamp, answered_ago_ms)
if not held then
  return 0
end
-- JUSTID keeps the delivery count, which is the attempts made; the waiting consumer's entries
-- are never taken for abandoned, and hold none of this worker's capacity.
redis.call('XCLAIM', stream, group, waiting, 0, id, 'JUSTID')
redis.call('ZADD', retry, now + delay_ms, member)
return 1
