-- Record what happened to an entry this consumer holds: failed for good (`dead`), or to be tried
-- again after a delay (`retry`).  Successes are acknowledged in batches by acks.lua.  Nothing
-- happens unless the entry is still ours: a worker that lost it (reclaimed during a long Redis
-- outage) must not acknowledge it twice.
--
-- The slot taken for the entry (if any) is busy for a window from the call's answer, or is
-- freed if no call was made (slots_answered), whoever holds the entry now.
--
-- KEYS: stream, retry index, results stream, dead-letter stream, slots (the log)
-- ARGV: group, me, waiting consumer, id, mode, http_status, duration_ms, results maxlen (0: no
--       results), delete acked (1/0), retry delay ms, index member, reason, last status,
--       attempts, stamp of the take that gave its slot ('': none taken), answered ms ago (-1:
--       no call was made), window_ms
-- Returns 1 when recorded, 0 when the entry was no longer ours.
local stream, retry, results, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, me, waiting, id, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
slots_answered(KEYS[5], tonumber(ARGV[17]), {id, ARGV[15], ARGV[16]}, now)

if not held_by(stream, group, me, id, id, 1)[id] then
  return 0
end

if mode == 'retry' then
  -- Back to the waiting consumer: the entry is not idle-stale, and no concurrency slot waits.
  -- JUSTID keeps the delivery count, which is the attempts made.
  redis.call('XCLAIM', stream, group, waiting, 0, id, 'JUSTID')
  redis.call('ZADD', retry, now + tonumber(ARGV[10]), ARGV[11])
  return 1
end

local attempts = ARGV[14]

-- Lua's unpack() stops near 8000 values: a dead letter keeps at most this many original fields
-- (the parser refuses entries with more than 1000, so only a hostile entry comes near it).
local MAX_LETTER_FIELDS = 3900

local letter = {}
local entry = redis.call('XRANGE', stream, id, id)
if #entry > 0 then
  letter = entry[1][2]
end
if #letter > 2 * MAX_LETTER_FIELDS then
  local kept = {}
  for i = 1, 2 * MAX_LETTER_FIELDS do
    kept[i] = letter[i]
  end
  kept[#kept + 1] = 'fields_dropped'
  kept[#kept + 1] = tostring(#letter / 2 - MAX_LETTER_FIELDS)
  letter = kept
end
for _, v in ipairs({'original_id', id, 'reason', ARGV[12], 'attempts', attempts,
                    'last_status', ARGV[13], 'failed_at', now}) do
  letter[#letter + 1] = v
end
redis.call('XADD', dead, '*', unpack(letter))

redis.call('XACK', stream, group, id)
if ARGV[9] == '1' then
  redis.call('XDEL', stream, id)
end
if tonumber(ARGV[8]) > 0 then
  redis.call('XADD', results, 'MAXLEN', '~', ARGV[8], '*',
             'id', id, 'status', 'dead', 'http_status', ARGV[6], 'attempts', attempts,
             'duration_ms', ARGV[7], 'finished_at', now)
end
return 1
