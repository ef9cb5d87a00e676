-- The take of an API with a key_field (queue/keyed.lua).  Like queue/take.lua it records the
-- successes of this consumer first, then starts up to `want` calls within every limit term and
-- hands their entries to this consumer, atomically; but the tasks wait by key, and the next call
-- goes to the best task among the keys that have room: strict priority first, then, within a
-- priority, the key served least so far (by cost / weight: a start-time fair queue), so the keys
-- with waiting tasks share the API's limits in turn.  Every step is a sorted-set read or write,
-- whatever the number of keys: a key whose own limits (key_limits) have no room sleeps until they
-- may, and is not looked at before.  There is no fast path: every entry read joins its key first.
--
-- KEYS[1] rate: the fixed-window counter (RATE_KEY)
-- KEYS[2] index: the priority index of the API before it had a key_field (its tasks move to key '')
-- KEYS[3] retry: the retry index
-- KEYS[4] stream: the task stream
-- KEYS[5] flight: the calls in flight
-- KEYS[6] terms: the limit terms' state
-- KEYS[7] results: the results stream (the task stream when results are off: never written)
-- ARGV[1] limits: the limit terms (ratedispatch/terms.py: Limits.encoded)
-- ARGV[2] max_in_flight: MAX_IN_FLIGHT (0: no cap)
-- ARGV[3] max_cost: the largest cost every term can grant
-- ARGV[4] want: the most calls to start (0: index `fresh` and take none)
-- ARGV[5] group: the consumer group
-- ARGV[6] me: this worker's consumer
-- ARGV[7] waiting: the waiting consumer, which holds every indexed entry
-- ARGV[8] promote_max: the most retries to move back into the index
-- ARGV[9] pending_bound: the most pending entries of one consumer to list
-- ARGV[10] drained: 1 when the read that found `fresh` emptied the stream
-- ARGV[11] keep: 1 when the caller would rather keep `fresh` (and read on) than index them
-- ARGV[12] deadline_ms: by when a call has ended after its take (the HTTP deadline, a margin)
-- ARGV[13] results_maxlen: the results stream's cap; 0: no results
-- ARGV[14] delete_acked: 1 to XDEL what is acknowledged
-- ARGV[15] lowest: the lowest entry id of the successes ('' when none)
-- ARGV[16] highest: the highest entry id of the successes ('' when none)
-- ARGV[17] succeeded: how many successes follow
-- ARGV[18] prefix: the API's key prefix (queue/keyed.lua)
-- ARGV[19] key_limits: key_limits, encoded as `limits` ('': none)
-- ARGV[20] key_max_cost: the largest cost every term of key_limits can grant
-- ARGV[21] weighted: 1 when key_weights are set (hash P weights)
-- ARGV[22..] successes_then_fresh: the successes (queue/successes.lua: SUCCESS_WIDTH values
--            each), then the index members of entries this consumer just read, best first
-- Returns {recorded, reply} as queue/take.lua does, with every reply but GRANTED_FRESH.
--
-- include: lua/clock.lua
-- include: lua/chunks.lua
-- include: queue/indexing.lua
-- include: queue/recording.lua
-- include: queue/keyed.lua
local GRANTED, FULL, EMPTY, READ_ON = 1, 0, 2, 4
-- Keys one take finds without room and puts to sleep (or entries it finds deleted), at most,
-- before it answers: the next take goes on from there.
local KEYED_STEPS = 64
-- Sleeping keys one take wakes, at most.
local KEYED_WAKE = 1000
local rate, index, retry, stream, flight, terms = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
                                                  KEYS[6]
local results = KEYS[7]
local spec = ARGV[1]
local max_in_flight = tonumber(ARGV[2])
local max_cost = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local group, me, waiting = ARGV[5], ARGV[6], ARGV[7]
local promote_max = tonumber(ARGV[8])
local pending_bound = tonumber(ARGV[9])
local drained = ARGV[10] == '1'
local keep = ARGV[11] == '1'
local deadline_ms = tonumber(ARGV[12])
local P, kspec = ARGV[18], ARGV[19]
local key_max_cost = tonumber(ARGV[20])
local weighted = ARGV[21] == '1'
local fresh = take_fresh()
local now, stamp = clock()

local recorded, answered, L = take_record(stream, results, group, me, rate, flight, terms, spec,
                                          max_in_flight, pending_bound, want, now)
keyed_record(P, kspec, now, answered)
local function done(reply)
  if L ~= nil then limits_flush(L) end
  return {recorded, reply}
end
if want <= 0 and #fresh == 0 then return done({EMPTY, 0}) end
if #fresh > 0 and keep and not drained then return done({READ_ON}) end
index_entries(stream, index, group, me, waiting, fresh, 'fresh', pending_bound, P)
if #fresh > 0 and not drained then
  -- More is unread, possibly of higher priority: index it before any slot is given away.
  return done({EMPTY, 0})
end

-- Retries whose backoff has passed rejoin their keys, under their original rank and id; so do
-- tasks indexed before the API had a key_field (under key '').
local due = redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, promote_max)
if #due > 0 then
  call_chunked({'ZREM', retry}, due, {})
  keyed_add(P, due)
end
local before = redis.call('ZRANGE', index, 0, promote_max - 1)
if #before > 0 then
  call_chunked({'ZREM', index}, before, {})
  keyed_add(P, before)
end

-- Keys whose own limits may have room again rejoin their rank, no earlier than its clock: a key
-- does not bank turns while it sleeps.
local clocks = keyed_clocks(P)
local woke = redis.call('ZRANGEBYSCORE', P .. 'sleeping', '-inf', now, 'LIMIT', 0, KEYED_WAKE)
if #woke > 0 then
  local saved = call_chunked({'HMGET', P .. 'fair'}, woke, {})
  for i, pair in ipairs(woke) do
    local r = member_rank(pair)
    redis.call('ZADD', P .. 'ready:' .. r, math.max(tonumber(saved[i]) or 0, clocks[r]),
               string.sub(pair, 2))
  end
  call_chunked({'ZREM', P .. 'sleeping'}, woke, {})
  call_chunked({'HDEL', P .. 'fair'}, woke, {})
end
if want <= 0 then return done({EMPTY, 0}) end

L = L or limits_open(rate, flight, terms, spec, max_in_flight, now)
limits_expire(L)
local units, calls = limits_room(L, want * L.costliest)
local weights, opened = {}, {}
local function weight_of(k)
  if not weighted then return 1 end
  if weights[k] == nil then
    local w = tonumber(redis.call('HGET', P .. 'weights', k))
    weights[k] = (w ~= nil and w > 0) and w or 1
  end
  return weights[k]
end
local function key_limits(k)
  if opened[k] == nil then
    opened[k] = keyed_limits(P, k, kspec, now)
    limits_expire(opened[k])
  end
  return opened[k]
end

-- Hand key k's best task of rank r (`best`, whose virtual time was `vt`) to this consumer, and
-- put the key back behind the others by its cost; returns the entry's fields, or nil when it was
-- deleted from the stream meanwhile (XTRIM, XDEL: its claim drops it from the pending list).
local taken, by_rank, by_key, clock_moved = {}, {}, {}, false
local function hand_over(k, r, best, vt, cost)
  local kindex = keyed_index(P, k, r)
  redis.call('ZPOPMIN', kindex)
  by_rank[r] = (by_rank[r] or 0) + 1
  by_key[k] = (by_key[k] or 0) + 1
  local finish = vt + cost / weight_of(k)
  clocks[r] = math.max(clocks[r], vt)
  clock_moved = true
  local ready = P .. 'ready:' .. r
  if redis.call('EXISTS', kindex) == 1 then
    redis.call('ZADD', ready, finish, k)
  else
    redis.call('ZREM', ready, k)
    -- Ahead of the clock: should the key come back before the clock passes it, it rejoins here.
    redis.call('ZADD', P .. 'finished', finish, r .. k)
  end
  local id = member_id(best)
  local claimed = redis.call('XCLAIM', stream, group, me, 0, id)[1]
  if not claimed then return nil end
  taken[#taken + 1] = {id, claimed[2], best, cost, k}
  return claimed[2]
end

-- Steps that hand nothing over (a key put to sleep, an entry deleted meanwhile) are bounded.
local wait_api, r, idle_steps = nil, 0, 0
while #taken < want and r <= 2 and idle_steps < KEYED_STEPS do
  local ready = P .. 'ready:' .. r
  local top = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  if #top == 0 then
    r = r + 1
  else
    local k, vt = top[1], tonumber(top[2])
    local best = redis.call('ZRANGE', keyed_index(P, k, r), 0, 0)[1]
    local cost = best and member_cost(best)
    if not best then
      redis.call('ZREM', ready, k)  -- its tasks went another way (an operator's edit)
    elseif cost > max_cost or (kspec ~= '' and cost > key_max_cost) then
      -- No term could ever grant it: handed over alone, uncharged, to be dead-lettered.
      if #taken > 0 then break end
      hand_over(k, r, best, vt, 0)
      break
    elseif cost > units or calls < 1 then
      wait_api = limits_wait(L, cost)
      break
    else
      local KL = kspec ~= '' and key_limits(k) or nil
      if KL ~= nil and limits_room(KL, cost) < cost then
        local pair = r .. k
        redis.call('ZREM', ready, k)
        redis.call('ZADD', P .. 'sleeping', now + limits_wait(KL, cost), pair)
        redis.call('HSET', P .. 'fair', pair, vt)
        idle_steps = idle_steps + 1
      elseif limits_count(L, {cost}, 1) == 0 then
        wait_api = limits_wait(L, cost)
        break
      elseif hand_over(k, r, best, vt, cost) then
        units, calls = units - cost, calls - 1
        if KL ~= nil then
          limits_charge(KL, {member_id(best)}, {cost}, stamp, deadline_ms)
          KL.charged = true
        end
      else
        limits_uncount(L, cost)
        idle_steps = idle_steps + 1
      end
    end
  end
end

if clock_moved then
  redis.call('HSET', P .. 'clock', '0', clocks[0], '1', clocks[1], '2', clocks[2])
  -- A finish time the clock has passed says nothing any more: a key that comes back joins at
  -- the clock.  (The ranks' clocks differ: each pair is dropped once its own rank's passes it,
  -- and until then it may outlive that by a little.)
  redis.call('ZREMRANGEBYSCORE', P .. 'finished', '-inf',
             math.min(clocks[0], clocks[1], clocks[2]))
end
for rank, n in pairs(by_rank) do redis.call('HINCRBY', P .. 'waiting', rank, -n) end
if next(by_key) ~= nil then
  for k, n in pairs(by_key) do redis.call('ZINCRBY', P .. 'backlog', -n, k) end
  redis.call('ZREMRANGEBYSCORE', P .. 'backlog', '-inf', 0)
end
for _, KL in pairs(opened) do
  limits_flush(KL)
  -- A key's limits must outlive its calls in flight (else a long call's key would look idle and
  -- get its room back): they last past the call's deadline until it can no longer count in any
  -- term.  A dead worker's call leaves the flight at a take of that key; if none comes, the
  -- flight goes with them.
  if KL.charged then
    limits_keep(KL.hash, deadline_ms + KL.idle)
    limits_keep(KL.flight_key, deadline_ms + KL.idle)
  end
end

if #taken > 0 then
  local members, ids, charged = {}, {}, {}
  for i, t in ipairs(taken) do members[i] = t[3] end
  local lo, hi = id_range(members)
  local counts = held_by(stream, group, me, lo, hi, pending_bound)
  local grants = {}
  for _, t in ipairs(taken) do
    grants[#grants + 1] = {t[1], t[2], counts[t[1]] or 1, t[3]}
    if t[4] > 0 then
      ids[#ids + 1] = t[1]
      charged[#charged + 1] = t[4]
    end
  end
  limits_charge(L, ids, charged, stamp, deadline_ms)
  return done({GRANTED, grants, stamp})
end
if wait_api ~= nil then return done({FULL, wait_api}) end
if r <= 2 then return done({FULL, 0}) end  -- more keys to look at: the next take goes on
-- Nothing any key with room could take: what waits is asleep or backing off.  EMPTY, not FULL:
-- the caller waits for that or for new tasks, whichever comes first (a task of another key
-- must not wait for a sleeping key).
local wait = nil
local asleep = redis.call('ZRANGE', P .. 'sleeping', 0, 0, 'WITHSCORES')
if #asleep > 0 then
  wait = math.max(tonumber(asleep[2]) - now, 1)
else
  -- No key has tasks waiting: the counts are 0, whatever an operator's edit made of them.
  redis.call('DEL', P .. 'waiting', P .. 'backlog')
end
local nxt = redis.call('ZRANGE', retry, 0, 0, 'WITHSCORES')
if #nxt > 0 then wait = math.min(wait or math.huge, math.max(tonumber(nxt[2]) - now, 0)) end
return done({EMPTY, wait or -1})
