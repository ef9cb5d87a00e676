-- Calls that succeeded, recorded by the take that follows them (take.lua): only entries this
-- consumer still holds are acknowledged, each with a result; one taken over meanwhile (a long
-- Redis outage) is its new owner's to record.
--
-- include: lua/chunks.lua
-- include: queue/held.lua

-- The values ARGV holds for each success: id, http_status, duration_ms, attempts, the stamp of
-- the take that started its call, its cost, how many ms ago it was answered, and its key (for an
-- API with a key_field: queue/keyed.lua).
local SUCCESS_WIDTH = 8

-- Record the `count` successes in ARGV from `first` on (ids `lowest`..`highest`).  Returns 1 or
-- 0 for each (recorded, or no longer ours), and {id, stamp, cost, ago_ms, key} for each call, for
-- the limits (limits/limits.lua: limits_answers; queue/keyed.lua: keyed_record): whoever holds
-- the entry now, the API saw the call.
local function successes_record(stream, results, group, me, results_maxlen, delete_acked,
                                lowest, highest, pending_bound, first, count, now)
  if count == 0 then return {}, {} end
  local held = held_by(stream, group, me, lowest, highest, pending_bound)
  local ids, done, recorded, calls = {}, {}, {}, {}
  for i = first, first + (count - 1) * SUCCESS_WIDTH, SUCCESS_WIDTH do
    local id = ARGV[i]
    calls[#calls + 1] = {id, ARGV[i + 4], tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6]),
                         ARGV[i + 7]}
    if held[id] then
      ids[#ids + 1] = id
      done[#done + 1] = i
      recorded[#recorded + 1] = 1
    else
      recorded[#recorded + 1] = 0
    end
  end
  if #ids == 0 then return recorded, calls end
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
  return recorded, calls
end
