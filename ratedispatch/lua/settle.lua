-- Record what happened to an entry this consumer holds: done (`ok`), failed for good (`dead`),
-- or to be tried again after a delay (`retry`).  Nothing happens unless the entry is still ours:
-- a worker that lost it (reclaimed during a long Redis outage) must not acknowledge it twice.
--
-- KEYS: stream, attempts, retry index, results stream, dead-letter stream
-- ARGV: group, me, waiting consumer, id, mode, http_status, duration_ms, results maxlen (0: no
--       results), delete acked (1/0), retry delay ms, index member, reason, last status,
--       attempts ('' : from the attempts hash)
-- Returns 1 when recorded, 0 when the entry was no longer ours.
local stream, attempts_key, retry, results, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, me, waiting, id, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

if not owned_by(stream, group, id, me) then
  return 0
end
local now = now_ms()

if mode == 'retry' then
  -- Back to the waiting consumer: the entry is not idle-stale, and no concurrency slot waits.
  redis.call('XCLAIM', stream, group, waiting, 0, id, 'JUSTID')
  redis.call('ZADD', retry, now + tonumber(ARGV[10]), ARGV[11])
  return 1
end

local attempts = ARGV[14]
if attempts == '' then
  attempts = redis.call('HGET', attempts_key, id) or '0'
end

-- Lua's unpack() stops near 8000 values: a dead letter keeps at most this many original fields
-- (the parser refuses entries with more than 1000, so only a hostile entry comes near it).
local MAX_LETTER_FIELDS = 3900

if mode == 'dead' then
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
end

redis.call('XACK', stream, group, id)
if ARGV[9] == '1' then
  redis.call('XDEL', stream, id)
end
redis.call('HDEL', attempts_key, id)
if tonumber(ARGV[8]) > 0 then
  redis.call('XADD', results, 'MAXLEN', '~', ARGV[8], '*',
             'id', id, 'status', mode, 'http_status', ARGV[6], 'attempts', attempts,
             'duration_ms', ARGV[7], 'finished_at', now)
end
return 1
