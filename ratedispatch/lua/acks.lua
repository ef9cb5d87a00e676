-- Acknowledge a batch of entries whose calls succeeded, with a result for each.  Only entries
-- this consumer still holds are acknowledged: one that was taken over during a long Redis
-- outage is its new owner's to record.
--
-- The calls were answered, so a full window is held open for hold_ms more (window_hold): the
-- worker gives window_ms less the time since the last of them was answered.
--
-- KEYS: stream, results stream, rate
-- ARGV: group, me, results maxlen (0: no results), delete acked (1/0), lowest id, highest id,
--       pending bound, limit, hold_ms, then (id, http_status, duration_ms, attempts) for each
--       entry
-- Returns {1 or 0 for each entry}: recorded, or no longer ours.
local stream, results, rate = KEYS[1], KEYS[2], KEYS[3]
local group, me, maxlen = ARGV[1], ARGV[2], tonumber(ARGV[3])
window_hold(rate, tonumber(ARGV[8]), tonumber(ARGV[9]))
local held = held_by(stream, group, me, ARGV[5], ARGV[6], tonumber(ARGV[7]))
local ids, done, recorded = {}, {}, {}
for i = 10, #ARGV, 4 do
  local id = ARGV[i]
  if held[id] then
    ids[#ids + 1] = id
    done[#done + 1] = i
    recorded[#recorded + 1] = 1
  else
    recorded[#recorded + 1] = 0
  end
end
if #ids == 0 then return recorded end
redis.call('XACK', stream, group, unpack(ids))
if ARGV[4] == '1' then
  redis.call('XDEL', stream, unpack(ids))
end
if maxlen > 0 then
  local now = now_ms()
  for _, i in ipairs(done) do
    redis.call('XADD', results, 'MAXLEN', '~', maxlen, '*', 'id', ARGV[i], 'status', 'ok',
               'http_status', ARGV[i + 1], 'attempts', ARGV[i + 3], 'duration_ms', ARGV[i + 2],
               'finished_at', now)
  end
end
return recorded
