-- Index members are "<rank><ms:20 digits>-<seq:20 digits>", and "*<cost>" after that for a task
-- that costs more than 1, and "#<key>" last for a task of an API with a key_field (its key, maybe
-- empty): all scores are equal, so the sorted set orders them by priority rank, then by exact
-- entry id (queue/entries.py makes them).

-- The entry id of an index member.
local function member_id(member)
  local ms = (string.gsub(string.sub(member, 2, 21), '^0+', ''))
  local seq = (string.gsub(string.sub(member, 23, 42), '^0+', ''))
  if ms == '' then ms = '0' end
  if seq == '' then seq = '0' end
  return ms .. '-' .. seq
end

-- The cost of an index member's task: the units it counts against every limit term.  Read by
-- position, not by a pattern: a take reads it for every entry of a read batch.
local function member_cost(member)
  if string.byte(member, 43) ~= 42 then return 1 end  -- no '*'
  return tonumber(string.match(member, '^%d+', 44)) or 1
end

-- The key of an index member's task (queue/keyed.lua), or nil for an API without a key_field.
local function member_key(member)
  local at = string.find(member, '#', 43, true)
  if at == nil then return nil end
  return string.sub(member, at + 1)
end

-- The priority rank of an index member's task: 0 (high) to 2 (low).
local function member_rank(member)
  return string.byte(member, 1) - 48
end

-- The smallest and largest entry id of index members (their padded form sorts as text).
local function id_range(members)
  local lo, hi = members[1], members[1]
  for _, m in ipairs(members) do
    if string.sub(m, 2, 42) < string.sub(lo, 2, 42) then lo = m end
    if string.sub(m, 2, 42) > string.sub(hi, 2, 42) then hi = m end
  end
  return member_id(lo), member_id(hi)
end
