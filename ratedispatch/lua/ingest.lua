-- Move entries this consumer has read (or reclaimed) into the priority index: their pending
-- entry passes to the `waiting` consumer, which no reclaimer ever takes from, and their member
-- joins the index.  Both happen together or not at all.
--
-- KEYS: stream, deferred
-- ARGV: group, me, waiting consumer, then id, member pairs
-- Returns {moved, size of the index}
local stream, deferred = KEYS[1], KEYS[2]
local group, me, waiting = ARGV[1], ARGV[2], ARGV[3]
local moved = 0
for i = 4, #ARGV, 2 do
  local id, member = ARGV[i], ARGV[i + 1]
  if owned_by(stream, group, id, me) then
    local claimed = redis.call('XCLAIM', stream, group, waiting, 0, id, 'JUSTID')
    if #claimed > 0 then
      redis.call('ZADD', deferred, 0, member)
      moved = moved + 1
    end
  end
end
return {moved, redis.call('ZCARD', deferred)}
