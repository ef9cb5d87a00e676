-- An API lost its key_field while tasks waited by key (queue/keyed.lua): move up to `most` keys'
-- tasks into its priority index, where its takes now look, so that none is left behind.  Run by
-- a starting worker until it returns 0.
--
-- KEYS[1] index: the priority index
-- ARGV[1] prefix: the key prefix the API had (`<RATE_KEY>:keyed.`)
-- ARGV[2] most: the most (key, rank) pairs to move in this call
-- Returns how many pairs it moved.
--
-- include: lua/chunks.lua
-- include: queue/keyed.lua
local index = KEYS[1]
local P, most = ARGV[1], tonumber(ARGV[2])

-- Every (key, rank) pair with tasks is in a ready set or asleep.
local pairs_found = {}
for r = 0, 2 do
  local room = most - #pairs_found
  if room <= 0 then break end
  local ready = P .. 'ready:' .. r
  for _, k in ipairs(redis.call('ZRANGE', ready, 0, room - 1)) do
    pairs_found[#pairs_found + 1] = {k, r}
    redis.call('ZREM', ready, k)
  end
end
if #pairs_found < most then
  local sleeping = P .. 'sleeping'
  for _, pair in ipairs(redis.call('ZRANGE', sleeping, 0, most - #pairs_found - 1)) do
    pairs_found[#pairs_found + 1] = {string.sub(pair, 2), member_rank(pair)}
    redis.call('ZREM', sleeping, pair)
    redis.call('HDEL', P .. 'fair', pair)
  end
end
for _, pair in ipairs(pairs_found) do
  local kindex = keyed_index(P, pair[1], pair[2])
  local members = redis.call('ZRANGE', kindex, 0, -1)
  local scored = {}
  for _, m in ipairs(members) do
    scored[#scored + 1] = 0
    -- Without its key: the API's takes read a member's cost, and nothing after it.
    local at = string.find(m, '#', 43, true)
    scored[#scored + 1] = string.sub(m, 1, at and at - 1 or #m)
  end
  if #scored > 0 then call_chunked({'ZADD', index}, scored, {}, 2) end
  redis.call('DEL', kindex)
end
local left = redis.call('EXISTS', P .. 'ready:0', P .. 'ready:1', P .. 'ready:2', P .. 'sleeping')
if left == 0 then
  redis.call('DEL', P .. 'backlog', P .. 'waiting', P .. 'clock', P .. 'fair')
end
return #pairs_found
