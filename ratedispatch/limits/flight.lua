-- The calls in flight across the fleet, at RATE_KEY:flight: a sorted set with a member for each
-- call, scored with the Redis time (ms) by which its worker has given up on it: its take plus
-- the HTTP deadline and a margin.  (The worker ends each call within HTTP_TIMEOUT_SECONDS of
-- asking for its take, so a live worker's call is never dropped from here while it runs.)  A
-- call leaves when it is answered; the calls of a worker that died leave at their deadline, as
-- if answered then.  MAX_IN_FLIGHT counts the members; every term counts their units as busy.

-- The member of the call for entry `id` on the take at `stamp`: unique, since an entry is handed
-- to one worker at a time and a take is later than the one before it.  A cost above 1 is part
-- of the name, so that the units of a dead worker's call are known when it expires.
local function flight_member(id, stamp, cost)
  if cost == 1 then return id .. '@' .. stamp end
  return id .. '@' .. stamp .. '*' .. cost
end

local function flight_cost(member)
  return tonumber(string.match(member, '%*(%d+)$')) or 1
end

-- The calls whose deadline has passed: {member, deadline, ...}.
local function flight_expired(flight, now)
  return redis.call('ZRANGEBYSCORE', flight, '-inf', now, 'WITHSCORES')
end
