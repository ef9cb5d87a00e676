-- Acknowledge a batch of entries whose calls succeeded, with a result for each.  Only entries
-- this consumer still holds are acknowledged: one that was taken over during a long Redis outage
-- is its new owner's to record.
--
-- Each call leaves the flight and counts in every limit term from its answer (limits_record),
-- whoever holds the entry now: the API saw the call either way.
--
-- KEYS[1] stream: the task stream
-- KEYS[2] results: the results stream (the task stream when results are off: never written)
-- KEYS[3] flight: the calls in flight
-- KEYS[4] terms: the limit terms' state
-- ARGV[1] group: the consumer group
-- ARGV[2] me: this worker's consumer
-- ARGV[3] results_maxlen: the results stream's cap; 0: no results
-- ARGV[4] delete_acked: 1 to XDEL what is acknowledged
-- ARGV[5] lowest: the lowest entry id of the batch
-- ARGV[6] highest: the highest entry id of the batch
-- ARGV[7] pending_bound: the most pending entries of one consumer to list
-- ARGV[8] limits: the limit terms (ratedispatch/terms.py: Limits.encoded)
-- ARGV[9..] answers: (id, http_status, duration_ms, attempts, stamp of the take that started
--           its call, its cost, answered ms ago) for each entry
-- Returns {1 or 0 for each entry}: recorded, or no longer ours.
--
-- include: lua/clock.lua
-- include: lua/chunks.lua
-- include: queue/held.lua
-- include: limits/limits.lua
local stream, results, flight, terms = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, me = ARGV[1], ARGV[2]
local results_maxlen = tonumber(ARGV[3])
local delete_acked = ARGV[4] == '1'
local lowest, highest = ARGV[5], ARGV[6]
local pending_bound = tonumber(ARGV[7])
local spec = ARGV[8]
local ANSWERS, WIDTH = 9, 7

local held = held_by(stream, group, me, lowest, highest, pending_bound)
local ids, done, recorded, answered = {}, {}, {}, {}
for i = ANSWERS, #ARGV, WIDTH do
  local id = ARGV[i]
  answered[#answered + 1] = {id, ARGV[i + 4], tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])}
  if held[id] then
    ids[#ids + 1] = id
    done[#done + 1] = i
    recorded[#recorded + 1] = 1
  else
    recorded[#recorded + 1] = 0
  end
end
local now = now_ms()
limits_record(flight, terms, spec, now, answered)
if #ids == 0 then return recorded end
call_chunked({'XACK', stream, group}, ids, {})
if delete_acked then
  call_chunked({'XDEL', stream}, ids, {})
end
if results_maxlen > 0 then
  for _, i in ipairs(done) do
    redis.call('XADD', results, 'MAXLEN', '~', results_maxlen, '*', 'id', ARGV[i],
               'status', 'ok', 'http_status', ARGV[i + 1], 'attempts', ARGV[i + 3],
               'duration_ms', ARGV[i + 2], 'finished_at', now)
  end
end
return recorded
