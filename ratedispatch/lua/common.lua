-- Helpers shared by the queue scripts (prepended to each one by ratedispatch._lua).

-- Redis's clock, in milliseconds: the only clock ratedispatch trusts.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Is entry `id` in the group's pending list, owned by `consumer`?  Every move checks this first,
-- so a stale index member or a late answer from a slow worker can never take an entry that
-- someone else holds.
local function owned_by(stream, group, id, consumer)
  local row = redis.call('XPENDING', stream, group, id, id, 1, consumer)
  return #row > 0
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
