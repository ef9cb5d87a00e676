-- Lua's unpack() fails past about 8000 values ("too many results to unpack"), so a command whose
-- arguments come from a list of any length (a take of 10,000 grants, a batch of answers) is sent
-- in chunks of at most this many list items.
local CHUNK = 1000

-- redis.call(head..., items..., tail...) once for each chunk of `items`.  `step` items go
-- together (2 for score-member pairs), so that no pair is split.  Returns the replies joined:
-- the rows of array replies in order, or the sum of integer replies.
local function call_chunked(head, items, tail, step)
  local size = CHUNK - CHUNK % (step or 1)
  local rows, sum, arrays = {}, 0, false
  for first = 1, #items, size do
    local command = {}
    for _, v in ipairs(head) do command[#command + 1] = v end
    for i = first, math.min(first + size - 1, #items) do command[#command + 1] = items[i] end
    for _, v in ipairs(tail) do command[#command + 1] = v end
    local reply = redis.call(unpack(command))
    if type(reply) == 'table' then
      arrays = true
      for _, row in ipairs(reply) do rows[#rows + 1] = row end
    else
      sum = sum + reply
    end
  end
  if arrays then return rows end
  return sum
end
