-- Put dead letters back on the task stream as their producers wrote them, many per call so that
-- a million letters are a thousand round trips. Each letter's XADD and XDEL follow each other in
-- one script: interrupted anywhere, even by an error later in the batch, a task is in exactly
-- one of the two streams. An id that is no dead letter is answered for, not fatal to the batch.
--
-- KEYS[1] dead: the dead-letter stream
-- KEYS[2] stream: the task stream
-- ARGV[1..] ids: dead-letter ids to requeue
-- Returns {{dead id, new id or false, why when false}, ...} in the order of the ids; why is
-- 'unknown', 'empty' (no original fields) or 'too_many_fields'
--
-- include: queue/dead_letter.lua
local dead, stream = KEYS[1], KEYS[2]
local ids = ARGV

local function requeue(id)
  -- pcall: an id Redis cannot parse (too large a number) is unknown, not an error for the batch
  local found = redis.pcall('XRANGE', dead, id, id)
  if found.err or #found == 0 then
    return {id, false, 'unknown'}
  end
  local original = original_of(found[1][2])
  if #original == 0 then
    return {id, false, 'empty'}
  end
  -- unpack() stops near 8000 values and an entry cannot be written in parts: a letter with
  -- more original fields than bury.lua ever keeps was not written by it and is left alone.
  if #original > 2 * MAX_LETTER_FIELDS then
    return {id, false, 'too_many_fields'}
  end
  local new_id = redis.call('XADD', stream, '*', unpack(original))
  redis.call('XDEL', dead, id)
  return {id, new_id}
end

local answers = {}
for i, id in ipairs(ids) do
  answers[i] = requeue(id)
end
return answers
