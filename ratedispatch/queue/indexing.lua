-- Indexing: entries this consumer holds go to the waiting consumer and their members into the
-- priority index (or their keys' indexes, queue/keyed.lua), together.
--
-- include: lua/chunks.lua
-- include: queue/members.lua
-- include: queue/held.lua
-- include: queue/keyed.lua

-- Index `members` of entries this consumer (`me`) holds; returns how many it held.  Their
-- delivery count becomes the attempts made: `count` is 'fresh' for entries never called (it
-- starts at 0), 'reread' for entries read again with XREADGROUP from id 0 (which counted one
-- delivery too many), and 'kept' for any other (reclaimed: it says the attempts already).
-- `prefix`: the API's key prefix when it has a key_field, else ''.
local function index_entries(stream, index, group, me, waiting, members, count, most, prefix)
  if #members == 0 then return 0 end
  local lo, hi = id_range(members)
  local held = held_by(stream, group, me, lo, hi, most)
  local ids, scored, kept = {}, {}, {}
  for _, m in ipairs(members) do
    local id = member_id(m)
    if held[id] then
      ids[#ids + 1] = id
      kept[#kept + 1] = m
      scored[#scored + 1] = 0
      scored[#scored + 1] = m
    end
  end
  if #ids == 0 then return 0 end
  if count == 'reread' then
    for _, id in ipairs(ids) do
      local attempts = math.max(tonumber(held[id]) - 1, 0)
      redis.call('XCLAIM', stream, group, waiting, 0, id, 'JUSTID', 'RETRYCOUNT', attempts)
    end
  elseif count == 'fresh' then
    call_chunked({'XCLAIM', stream, group, waiting, 0}, ids, {'JUSTID', 'RETRYCOUNT', 0})
  else
    call_chunked({'XCLAIM', stream, group, waiting, 0}, ids, {'JUSTID'})
  end
  if prefix ~= '' then
    keyed_add(prefix, kept)
  else
    call_chunked({'ZADD', index}, scored, {}, 2)
  end
  return #ids
end
