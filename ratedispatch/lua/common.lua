-- Helpers shared by the queue scripts (prepended to each one by ratedispatch._lua).

-- Redis's clock, in milliseconds: the only clock ratedispatch trusts.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Index members are "<rank><ms:20 digits>-<seq:20 digits>": all scores are equal, so the sorted
-- set orders them by priority rank, then by exact entry id.  This turns a member back into its id.
local function member_id(member)
  local ms = (string.gsub(string.sub(member, 2, 21), '^0+', ''))
  local seq = (string.gsub(string.sub(member, 23), '^0+', ''))
  if ms == '' then ms = '0' end
  if seq == '' then seq = '0' end
  return ms .. '-' .. seq
end

-- The entries `consumer` holds in the id range `lo`..`hi`, as a set (id -> delivery count), in
-- one XPENDING.  Every move checks this first, so a late answer from a slow worker can never
-- move an entry someone else holds.  The reply holds only that consumer's entries in the range:
-- its calls in flight and what it just read, bounded by `most`.
local function held_by(stream, group, consumer, lo, hi, most)
  local held = {}
  for _, row in ipairs(redis.call('XPENDING', stream, group, lo, hi, most, consumer)) do
    held[row[1]] = row[4]
  end
  return held
end

-- The smallest and largest entry id of index members (their padded form sorts as text).
local function id_range(members)
  local lo, hi = members[1], members[1]
  for _, m in ipairs(members) do
    if string.sub(m, 2) < string.sub(lo, 2) then lo = m end
    if string.sub(m, 2) > string.sub(hi, 2) then hi = m end
  end
  return member_id(lo), member_id(hi)
end

-- Hand entries this consumer holds to the waiting consumer and put their members in the index,
-- together.  Their delivery count is the attempts made: `fresh` entries were never called, so
-- it starts at 0; `reread` ones were read again with XREADGROUP from id 0, which counted one
-- delivery too many; any other (`kept`: reclaimed) keeps what it says.
local function defer(stream, deferred, group, me, waiting, members, mode, most)
  if #members == 0 then return 0 end
  local lo, hi = id_range(members)
  local held = held_by(stream, group, me, lo, hi, most)
  local ids, scored = {}, {}
  for _, m in ipairs(members) do
    local id = member_id(m)
    if held[id] then
      ids[#ids + 1] = id
      scored[#scored + 1] = 0
      scored[#scored + 1] = m
    end
  end
  if #ids == 0 then return 0 end
  if mode == 'reread' then
    for _, id in ipairs(ids) do
      local count = math.max(tonumber(held[id]) - 1, 0)
      redis.call('XCLAIM', stream, group, waiting, 0, id, 'JUSTID', 'RETRYCOUNT', count)
    end
  else
    local claim = {'XCLAIM', stream, group, waiting, 0}
    for _, id in ipairs(ids) do claim[#claim + 1] = id end
    claim[#claim + 1] = 'JUSTID'
    if mode == 'fresh' then
      claim[#claim + 1] = 'RETRYCOUNT'
      claim[#claim + 1] = 0
    end
    redis.call(unpack(claim))
  end
  redis.call('ZADD', deferred, unpack(scored))
  return #ids
end
