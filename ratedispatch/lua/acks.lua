-- Acknowledge a batch of entries whose calls succeeded, with a result for each.  Only entries
-- this consumer still holds are acknowledged: one that was taken over during a long Redis
-- outage is its new owner's to record.
--
-- Each call's slot is busy for a window from its answer (slots_answered), whoever holds the
-- entry now: the API saw the call either way.
--
-- KEYS: stream, results stream, slots (the log)
-- ARGV: group, me, results maxlen (0: no results), delete acked (1/0), lowest id, highest id,
--       pending bound, window_ms, then (id, http_status, duration_ms, attempts, stamp of the
--       take that gave its slot, answered ms ago) for each entry
-- Returns {1 or 0 for each entry}: recorded, or no longer ours.
local stream, results, slots = KEYS[1], KEYS[2], KEYS[3]
local group, me, maxlen = ARGV[1], ARGV[2], tonumber(ARGV[3])
local held = held_by(stream, group, me, ARGV[5], ARGV[6], tonumber(ARGV[7]))
local ids, done, recorded, answers = {}, {}, {}, {}
for i = 9, #ARGV, 6 do
  local id = ARGV[i]
  answers[#answers + 1] = id
  answers[#answers + 1] = ARGV[i + 4]
  answers[#answers + 1] = ARGV[i + 5]
  if held[id] then
    ids[#ids + 1] = id
    done[#done + 1] = i
    recorded[#recorded + 1] = 1
  else
    recorded[#recorded + 1] = 0
  end
end
local now = now_ms()
slots_answered(slots, tonumber(ARGV[8]), answers, now)
if #ids == 0 then return recorded end
redis.call('XACK', stream, group, unpack(ids))
if ARGV[4] == '1' then
  redis.call('XDEL', stream, unpack(ids))
end
if maxlen > 0 then
  for _, i in ipairs(done) do
    redis.call('XADD', results, 'MAXLEN', '~', maxlen, '*', 'id', ARGV[i], 'status', 'ok',
               'http_status', ARGV[i + 1], 'attempts', ARGV[i + 3], 'duration_ms', ARGV[i + 2],
               'finished_at', now)
  end
end
return recorded
