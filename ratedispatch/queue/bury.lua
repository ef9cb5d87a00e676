-- Dead-letter an entry this consumer holds, keeping every original field, with a result.  Nothing
-- happens unless the entry is still ours: a worker that lost it (reclaimed during a long Redis
-- outage) must not record it twice.
--
-- Its call (if any) counts in every limit term from its answer, and if none was made it only
-- leaves the flight (settle_call), whoever holds the entry now.
--
-- KEYS[1] stream: the task stream
-- KEYS[2] results: the results stream (the task stream when results are off: never written)
-- KEYS[3] dead: the dead-letter stream
-- KEYS[4] flight: the calls in flight
-- KEYS[5] terms: the limit terms' state
-- ARGV[1] group: the consumer group
-- ARGV[2] me: this worker's consumer
-- ARGV[3] id: the entry
-- ARGV[4] reason: why, a sentence an operator can act on
-- ARGV[5] last_status: the HTTP status or exception name of the last attempt
-- ARGV[6] http_status: the last HTTP status ('' when none)
-- ARGV[7] attempts: the calls made
-- ARGV[8] duration_ms: the last call's duration
-- ARGV[9] results_maxlen: the results stream's cap; 0: no results
-- ARGV[10] delete_acked: 1 to XDEL the entry once acknowledged
-- ARGV[11] stamp: of the take that started its call ('': none was started)
-- ARGV[12] cost: the units its call counts against each term
-- ARGV[13] answered_ago_ms: how long ago the call was answered (-1: no call was made)
-- ARGV[14] limits: the limit terms (ratedispatch/terms.py: Limits.encoded)
-- ARGV[15] prefix: the API's key prefix when it has a key_field (queue/keyed.lua), else ''
-- ARGV[16] key_limits: key_limits, encoded as `limits` ('': none)
-- ARGV[17] key: the task's key
-- Returns 1 when recorded, 0 when the entry was no longer ours.
--
-- include: queue/dead_letter.lua
-- include: queue/settling.lua
local stream, results, dead, flight, terms = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, me, id = ARGV[1], ARGV[2], ARGV[3]
local reason, last_status, http_status = ARGV[4], ARGV[5], ARGV[6]
local attempts, duration_ms = ARGV[7], ARGV[8]
local results_maxlen = tonumber(ARGV[9])
local delete_acked = ARGV[10] == '1'
local stamp, cost, answered_ago_ms, spec = ARGV[11], ARGV[12], ARGV[13], ARGV[14]

local now, held = settle_call(stream, group, me, id, flight, terms, spec, stamp, cost,
                              answered_ago_ms, {ARGV[15], ARGV[16], ARGV[17]})
if not held then
  return 0
end

local fields = {}
local entry = redis.call('XRANGE', stream, id, id)
if #entry > 0 then fields = entry[1][2] end
local letter = letter_of(fields, {id, reason, attempts, last_status, now})
redis.call('XADD', dead, '*', unpack(letter))

redis.call('XACK', stream, group, id)
if delete_acked then
  redis.call('XDEL', stream, id)
end
if results_maxlen > 0 then
  redis.call('XADD', results, 'MAXLEN', '~', results_maxlen, '*',
             'id', id, 'status', 'dead', 'http_status', http_status, 'attempts', attempts,
             'duration_ms', duration_ms, 'finished_at', now)
end
return 1
