-- Take over entries of consumers that stopped answering.  XCLAIM's min-idle-time is the guard:
-- an entry a live worker touched (claimed for a call, or settled) within min_idle is left alone.
-- Entries that no longer exist in the stream (trimmed) leave the pending list here (Redis 7), and
-- their attempt counters with them.
--
-- KEYS: stream, attempts
-- ARGV: group, me, min_idle_ms, ids...
-- Returns {{{id, fields}, ...}, dropped}
local stream, attempts = KEYS[1], KEYS[2]
local group, me, min_idle = ARGV[1], ARGV[2], ARGV[3]
local claimed, dropped = {}, 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local got = redis.call('XCLAIM', stream, group, me, min_idle, id)
  if #got > 0 and got[1] then
    claimed[#claimed + 1] = got[1]
  elseif #redis.call('XPENDING', stream, group, id, id, 1) == 0 then
    redis.call('HDEL', attempts, id)
    dropped = dropped + 1
  end
end
return {claimed, dropped}
