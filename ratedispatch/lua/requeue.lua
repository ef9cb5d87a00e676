-- Put one dead letter back on the task stream as the producer wrote it, and delete the dead
-- letter, atomically: interrupted at any point, the task is in exactly one of the two streams.
--
-- KEYS: dead-letter stream, task stream
-- ARGV: dead letter id
-- Returns the new entry id, or false when there is no such dead letter.
local dead, stream, id = KEYS[1], KEYS[2], ARGV[1]
local found = redis.call('XRANGE', dead, id, id)
if #found == 0 then
  return false
end
local fields = found[1][2]
-- settle.lua appends exactly these five fields, in this order, after the original ones (and
-- `fields_dropped` before them when it had to cut a hostile entry short).
local added = {'original_id', 'reason', 'attempts', 'last_status', 'failed_at'}
local n = #fields
local matches = n >= 10
for i = 1, 5 do
  if matches and fields[n - 10 + 2 * i - 1] ~= added[i] then
    matches = false
  end
end
local keep = n
if matches then
  keep = n - 10
  if keep >= 2 and fields[keep - 1] == 'fields_dropped' then
    keep = keep - 2
  end
end
if keep == 0 then
  return redis.error_reply('dead letter ' .. id .. ' has no original fields to requeue')
end
local original = {}
for i = 1, keep do
  original[i] = fields[i]
end
local new_id = redis.call('XADD', stream, '*', unpack(original))
redis.call('XDEL', dead, id)
return new_id
