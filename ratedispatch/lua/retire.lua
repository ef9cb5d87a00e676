-- Delete consumers of the group that hold no entries, so stopped workers do not pile up in
-- XINFO CONSUMERS.  A consumer's record is re-created by its next read, so deleting the record
-- of a live but idle worker is harmless; deleting one that holds entries would lose them, which
-- is why the check and the delete are one script.
--
-- KEYS: stream
-- ARGV: group, consumer names...
-- Returns how many were deleted.
local stream, group = KEYS[1], ARGV[1]
local deleted = 0
for i = 2, #ARGV do
  if #redis.call('XPENDING', stream, group, '-', '+', 1, ARGV[i]) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', stream, group, ARGV[i])
    deleted = deleted + 1
  end
end
return deleted
