-- An entry this consumer holds is to be tried again after a delay: it goes back to the waiting
-- consumer and into the retry index, due at now + delay.  Nothing happens unless the entry is
-- still ours: a worker that lost it (reclaimed during a long Redis outage) must not move it.
--
-- Its call counts in every limit term from its answer (settle_call), whoever holds the entry now.
--
-- KEYS[1] stream: the task stream
-- KEYS[2] retry: the retry index
-- KEYS[3] flight: the calls in flight
-- KEYS[4] terms: the limit terms' state
-- ARGV[1] group: the consumer group
-- ARGV[2] me: this worker's consumer
-- ARGV[3] waiting: the waiting consumer
-- ARGV[4] id: the entry
-- ARGV[5] member: its index member
-- ARGV[6] delay_ms: the backoff
-- ARGV[7] stamp: of the take that started its call
-- ARGV[8] cost: the units its call counts against each term
-- ARGV[9] answered_ago_ms: how long ago the call was answered (-1: no call was made)
-- ARGV[10] limits: the limit terms (ratedispatch/terms.py: Limits.encoded)
-- ARGV[11] prefix: the API's key prefix when it has a key_field (queue/keyed.lua), else ''
-- ARGV[12] key_limits: key_limits, encoded as `limits` ('': none)
-- ARGV[13] key: the task's key
-- Returns 1 when recorded, 0 when the entry was no longer ours.
--
-- include: queue/settling.lua
local stream, retry, flight, terms = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, me, waiting = ARGV[1], ARGV[2], ARGV[3]
local id, member = ARGV[4], ARGV[5]
local delay_ms = tonumber(ARGV[6])
local stamp, cost, answered_ago_ms, spec = ARGV[7], ARGV[8], ARGV[9], ARGV[10]

local now, held = settle_call(stream, group, me, id, flight, terms, spec, stamp, cost,
                              answered_ago_ms, {ARGV[11], ARGV[12], ARGV[13]})
if not held then
  return 0
end
-- JUSTID keeps the delivery count, which is the attempts made; the waiting consumer's entries
-- are never taken for abandoned, and hold none of this worker's capacity.  When no call was made
-- after all (its take came back too late for one), the attempt its take counted is given back.
if tonumber(answered_ago_ms) < 0 then
  redis.call('XCLAIM', stream, group, waiting, 0, id, 'JUSTID', 'RETRYCOUNT',
             math.max(tonumber(held) - 1, 0))
else
  redis.call('XCLAIM', stream, group, waiting, 0, id, 'JUSTID')
end
redis.call('ZADD', retry, now + delay_ms, member)
return 1
