-- Take over entries of consumers that stopped answering.  XCLAIM's min-idle-time is the guard:
-- an entry a live worker touched (claimed for a call, or settled) within min_idle is left alone.
-- JUSTID keeps the delivery count: the attempts made, the interrupted one included.  Entries that
-- no longer exist in the stream (trimmed) leave the pending list here (Redis 7).
--
-- KEYS[1] stream: the task stream
-- ARGV[1] group: the consumer group
-- ARGV[2] me: this worker's consumer, the new owner
-- ARGV[3] min_idle_ms: RECLAIM_IDLE_SECONDS in ms
-- ARGV[4..] ids: the entries to take over
-- Returns {{{id, fields}, ...}, dropped}
local stream = KEYS[1]
local group, me, min_idle_ms = ARGV[1], ARGV[2], ARGV[3]

local claimed, dropped = {}, 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local got = redis.call('XCLAIM', stream, group, me, min_idle_ms, id, 'JUSTID')
  if #got > 0 then
    local entry = redis.call('XRANGE', stream, id, id)
    if #entry > 0 then
      claimed[#claimed + 1] = entry[1]
    else
      redis.call('XACK', stream, group, id)
      dropped = dropped + 1
    end
  elseif #redis.call('XPENDING', stream, group, id, id, 1) == 0 then
    dropped = dropped + 1
  end
end
return {claimed, dropped}
