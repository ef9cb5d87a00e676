-- Delete consumers of the group that hold no entries, so stopped workers do not pile up in
-- XINFO CONSUMERS.  A consumer's record is re-created by its next read, so deleting the record
-- of a live but idle worker is harmless; deleting one that holds entries would lose them, which
-- is why the check and the delete are one script.
--
-- KEYS[1] stream: the task stream
-- ARGV[1] group: the consumer group
-- ARGV[2..] names: the consumers to delete if they hold nothing
-- Returns how many were deleted.
local stream = KEYS[1]
local group = ARGV[1]

local deleted = 0
for i = 2, #ARGV do
  local name = ARGV[i]
  if #redis.call('XPENDING', stream, group, '-', '+', 1, name) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', stream, group, name)
    deleted = deleted + 1
  end
end
return deleted
