-- An API with a key_field keeps its waiting tasks by key (tenant, user, account), so that a take
-- finds the best task among the keys that have room without scanning them (queue/keyed_take.lua),
-- and serves the keys of one priority in turn.  Every name is under the API's prefix P
-- (`<RATE_KEY>:keyed.`: no API's name has a '.'), so that one hash tag in its RATE_KEY keeps them
-- all in one Cluster slot:
--
--   P key:<k>:deferred:<r>  sorted set: key k's tasks of priority rank r, as the index holds them
--   P key:<k>:terms, :flight  key k's own limits (key_limits), as limits/limits.lua keeps an API's
--   P ready:<r>             sorted set: the keys with tasks of rank r that may have room, scored by
--                           their virtual time (a start-time fair queue: serving a task adds
--                           cost / weight, so the least served key comes first)
--   P sleeping              sorted set: "<r><k>" of keys whose own limits had no room, by when
--                           they may have; their virtual time waits in hash P fair
--   P clock                 hash: each rank's virtual clock, the virtual time of the last turn
--                           served there (turns are served in order, so it only grows)
--   P finished              sorted set: "<r><k>" of pairs that ran out of tasks, by the virtual
--                           time their next turn would have had, while that is ahead of the clock:
--                           a pair that starts waiting joins at the later of the two, so a key
--                           that comes back after each turn goes behind the keys waiting theirs
--   P weights               hash: key_weights (each key's share; 1 when not there)
--   P backlog               sorted set: each key's waiting tasks (status: the busiest keys)
--   P waiting               hash: the waiting tasks of each rank
--
-- A pair (k, r) is in ready:<r> or in sleeping exactly while its index has tasks.  All of it goes
-- when the key is idle: its indexes and set members with its last task, its limits' keys when
-- they can no longer refuse anything (a few seconds past its longest term).
--
-- include: lua/chunks.lua
-- include: queue/members.lua
-- include: limits/limits.lua

local function keyed_index(P, k, r) return P .. 'key:' .. k .. ':deferred:' .. r end
local function keyed_flight(P, k) return P .. 'key:' .. k .. ':flight' end
local function keyed_terms(P, k) return P .. 'key:' .. k .. ':terms' end

-- The virtual clock of each rank.
local function keyed_clocks(P)
  local v = redis.call('HMGET', P .. 'clock', '0', '1', '2')
  return {[0] = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0}
end

-- A key's limits state outlives its last use by its longest term and this, then it is gone.
local KEYED_IDLE_MS = 1000

local function keyed_idle(kspec)
  local longest = 0
  for _, term in ipairs(limits_terms(kspec, false)) do longest = math.max(longest, term.d) end
  return longest + KEYED_IDLE_MS
end

-- Key k's limits, opened (limits_open says what answered_at is).
local function keyed_limits(P, k, kspec, now, answered_at)
  return limits_open(nil, keyed_flight(P, k), keyed_terms(P, k), kspec, 0, now, answered_at,
                     keyed_idle(kspec))
end

-- Answered calls count in their keys' limits too: `calls` as limits_answers takes them, each
-- with its key as a fifth value (nil: the API has no key_field).
local function keyed_record(P, kspec, now, calls)
  if kspec == '' then return end
  local by_key, order = {}, {}
  for _, call in ipairs(calls) do
    local k = call[5]
    if k ~= nil then
      if by_key[k] == nil then
        by_key[k] = {}
        order[#order + 1] = k
      end
      table.insert(by_key[k], call)
    end
  end
  for _, k in ipairs(order) do
    limits_record(keyed_flight(P, k), keyed_terms(P, k), kspec, now, by_key[k], keyed_idle(kspec))
  end
end

-- Add `members` (entries the waiting consumer now holds) to their keys' indexes.  A key with no
-- task of that rank before joins the rank's ready set at its clock, unless it sleeps.  Returns how
-- many were new to the indexes.
local function keyed_add(P, members)
  local groups, order = {}, {}
  for _, m in ipairs(members) do
    local k, r = member_key(m) or '', member_rank(m)
    local name = keyed_index(P, k, r)
    local group = groups[name]
    if group == nil then
      group = {k = k, r = r, scored = {}}
      groups[name] = group
      order[#order + 1] = name
    end
    group.scored[#group.scored + 1] = 0
    group.scored[#group.scored + 1] = m
  end
  local clocks, per_rank, total = nil, {}, 0
  for _, name in ipairs(order) do
    local group = groups[name]
    local had = redis.call('EXISTS', name) == 1
    local added = call_chunked({'ZADD', name}, group.scored, {}, 2)
    if added > 0 then
      redis.call('ZINCRBY', P .. 'backlog', added, group.k)
      per_rank[group.r] = (per_rank[group.r] or 0) + added
      total = total + added
    end
    local pair = group.r .. group.k
    if not had and not redis.call('ZSCORE', P .. 'sleeping', pair) then
      clocks = clocks or keyed_clocks(P)
      local finish = tonumber(redis.call('ZSCORE', P .. 'finished', pair))
      if finish ~= nil then redis.call('ZREM', P .. 'finished', pair) end
      redis.call('ZADD', P .. 'ready:' .. group.r, 'NX', math.max(clocks[group.r], finish or 0),
                 group.k)
    end
  end
  for r, n in pairs(per_rank) do redis.call('HINCRBY', P .. 'waiting', r, n) end
  return total
end
