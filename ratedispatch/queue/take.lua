-- Record the calls of this consumer that succeeded since its last take, then start up to `want`
-- calls for the best tasks, within every limit term, and hand those tasks to this consumer,
-- atomically.  One script for both: the limits are read and written once for the two, and the
-- capacity of the calls that ended goes straight to the calls that start.
--
-- Each success is acknowledged (and deleted, with DELETE_ACKED) with a result if this consumer
-- still holds its entry (queue/successes.lua); its call leaves the flight and counts in every
-- limit term from its answer (limits_settle), before any room is looked at.
--
-- `fresh` are index members of entries this consumer just read from the stream (best first).
-- When nothing waits anywhere (no index, no backoff) and nothing competes with them for the
-- limits (the read drained the stream, or everything still unread fits in the limits' room),
-- the calls go to them directly, without a trip through the index: the fast path, a handful of
-- commands for a whole batch.  Otherwise they join the index first, and the calls go to the
-- best members of the index, once the read has drained the stream (else the caller reads on
-- first); ZPOPMIN is the exclusive claim, so no two workers get one entry.  A caller that can
-- read on at once asks to keep its entries (`keep`): they stay with it, indexed neither,
-- and come back with the rest of its next read, so the index never holds part of a backlog
-- that another worker could give a slot from while better tasks are still unread.
-- A task's cost (queue/members.lua: member_cost) is counted against every limit term, and only
-- for an entry that could really be handed over; the reply carries the take's stamp, which names
-- those calls in the flight (limits/flight.lua: flight_member).  A task whose cost no term can
-- ever grant (above `max_cost`) is handed over alone, uncharged, for its worker to dead-letter:
-- else it would block the index for ever.
--
-- The attempts of an entry are its delivery count in the pending list: a fresh entry read by
-- XREADGROUP is at 1, indexing a fresh entry sets it to 0, and each XCLAIM by a take adds one.
--
-- KEYS[1] rate: the fixed-window counter (RATE_KEY)
-- KEYS[2] index: the priority index
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
-- ARGV[18] prefix: '' (an API with a key_field takes with queue/keyed_take.lua)
-- ARGV[19] key_limits: unused here
-- ARGV[20] key_max_cost: unused here
-- ARGV[21] weighted: unused here
-- ARGV[22..] successes_then_fresh: the successes (queue/successes.lua: SUCCESS_WIDTH values
--            each), then the index members of entries this consumer just read, best first
-- Returns {recorded, reply}: recorded holds 1 or 0 for each success (recorded, or no longer
-- ours); the reply's first element is its code (queue/entries.py: TakeReply):
--   {GRANTED_FRESH = 3, {id, ...}, stamp}                             fast path
--   {GRANTED = 1, {{id, fields, attempt, member}, ...}, stamp}        index entries granted
--   {FULL = 0, wait_ms}                    no room; the best task may fit in wait_ms
--   {EMPTY = 2, wait_ms}                   nothing waiting; the next retry is due in wait_ms
--                                          (-1: none)
--   {READ_ON = 4}                          `fresh` kept by the caller: read on
--
-- include: lua/clock.lua
-- include: lua/chunks.lua
-- include: queue/indexing.lua
-- include: queue/recording.lua
local GRANTED, FULL, EMPTY, GRANTED_FRESH, READ_ON = 1, 0, 2, 3, 4
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
local fresh = take_fresh()
local now, stamp = clock()

-- The limits, opened by the successes' answers or once they are needed; whatever the script
-- changed in them is written back before it returns (done).
local recorded, _, L = take_record(stream, results, group, me, rate, flight, terms, spec,
                                   max_in_flight, pending_bound, want, now)
local expired = false
local function limits()
  if not expired then
    L = L or limits_open(rate, flight, terms, spec, max_in_flight, now)
    limits_expire(L)
    expired = true
  end
  return L
end
local function done(reply)
  if L ~= nil then limits_flush(L) end
  return {recorded, reply}
end
if want <= 0 and #fresh == 0 then return done({EMPTY, 0}) end

-- The costs of index members, in order, the units of the first `most` of them, and the largest.
local function costs_of(members, most)
  local costs, wanted, costliest = {}, 0, 1
  for i, member in ipairs(members) do
    costs[i] = member_cost(member)
    if i <= most then wanted = wanted + costs[i] end
    costliest = math.max(costliest, costs[i])
  end
  return costs, wanted, costliest
end

-- Would every entry not yet read fit in the room of every term along with `fresh`?  Then no
-- task can lose its place to a lower priority one by being read later.  An unread entry is
-- taken to cost as much as the costliest task a take has met (it is not known before it is
-- read: a costlier one than ever before can still be passed over, once).  What is not yet read
-- is in the stream, so a room above the stream's length (XLEN, constant time) answers it
-- without the group's lag (XINFO GROUPS, which lists every group with a dozen fields).  The
-- counter is not read: the first term counts every unit its window started, and more, except
-- after an operator's edit, which the take then finds, indexing `fresh`.
local function all_fit(costs)
  local used, each = 0, limits().costliest
  for _, cost in ipairs(costs) do used = used + cost end
  local unread = redis.call('XLEN', stream)
  local units, calls = limits_room(L, used + unread * each)
  local room = math.min(math.floor((units - used) / each), calls - #costs)
  if room >= unread then return true end
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local fields = {}
    for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
    if fields['name'] == group then
      local lag = tonumber(fields['lag'])  -- unknown after some deletions: then it does not
      return lag ~= nil and room >= lag
    end
  end
  return false
end

local fresh_costs, fresh_wanted, fresh_costliest = costs_of(fresh, want)
if fresh_costliest > 1 and fresh_costliest > limits().costliest then
  L.costliest = fresh_costliest
  L.calls_dirty = true
end
if #fresh > 0 and redis.call('EXISTS', index, retry) == 0 and (drained or all_fit(fresh_costs))
then
  local granted = 0
  if want > 0 then
    local units, calls = limits_room(limits(), fresh_wanted)
    granted = limits_count(L, fresh_costs, limits_fit(fresh_costs, want, units, calls))
  end
  local ids, rest = {}, {}
  for i, member in ipairs(fresh) do
    if i <= granted then ids[#ids + 1] = member_id(member) else rest[#rest + 1] = member end
  end
  index_entries(stream, index, group, me, waiting, rest, 'fresh', pending_bound, '')
  if granted == 0 and want > 0 then
    return done({FULL, limits_wait(L, fresh_costs[1])})
  end
  if granted > 0 then limits_charge(L, ids, fresh_costs, stamp, deadline_ms) end
  return done({GRANTED_FRESH, ids, stamp})
end

if #fresh > 0 and keep and not drained then
  return done({READ_ON})
end
index_entries(stream, index, group, me, waiting, fresh, 'fresh', pending_bound, '')
if #fresh > 0 and not drained then
  -- More is unread, possibly of higher priority: index it before any slot is given away.
  return done({EMPTY, 0})
end

-- Retries whose backoff has passed rejoin the priority index, under their original rank and id.
local due = redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, promote_max)
if #due > 0 then
  local scored = {}
  for _, member in ipairs(due) do
    scored[#scored + 1] = 0
    scored[#scored + 1] = member
  end
  call_chunked({'ZREM', retry}, due, {})
  call_chunked({'ZADD', index}, scored, {}, 2)
end

if want <= 0 then return done({EMPTY, 0}) end
local best = redis.call('ZRANGE', index, 0, want - 1)
if #best == 0 then
  local nxt = redis.call('ZRANGE', retry, 0, 0, 'WITHSCORES')
  if #nxt > 0 then
    return done({EMPTY, math.max(tonumber(nxt[2]) - now, 0)})
  end
  return done({EMPTY, -1})
end

local costs, wanted = costs_of(best, want)
local granted
if costs[1] > max_cost then
  granted = 1  -- no term could ever grant it: handed over uncharged, to be dead-lettered
else
  local units, calls = limits_room(limits(), wanted)
  granted = limits_count(L, costs, limits_fit(costs, want, units, calls))
  if granted == 0 then
    return done({FULL, limits_wait(L, costs[1])})
  end
end

local popped = redis.call('ZPOPMIN', index, granted)
local members, popped_ids = {}, {}
for i = 1, #popped, 2 do
  members[#members + 1] = popped[i]
  popped_ids[#popped_ids + 1] = member_id(popped[i])
end
-- Only pending entries are claimed; Redis 7 also drops one deleted from the stream (XTRIM, XDEL)
-- from the pending list here.  Each claim adds one to the entry's delivery count.
local claimed = {}
for _, row in ipairs(call_chunked({'XCLAIM', stream, group, me, 0}, popped_ids, {})) do
  if row then claimed[row[1]] = row[2] end
end
local lo, hi = id_range(members)
local counts = held_by(stream, group, me, lo, hi, pending_bound)
local grants, ids, charged, vanished = {}, {}, {}, 0
for i, member in ipairs(members) do
  local id = member_id(member)
  if claimed[id] then
    grants[#grants + 1] = {id, claimed[id], counts[id] or 1, member}
    ids[#ids + 1] = id
    charged[#charged + 1] = costs[i]
  else
    vanished = vanished + costs[i]
  end
end
if costs[1] > max_cost then
  return done({GRANTED, grants, stamp})
end
limits_uncount(L, vanished)
limits_charge(L, ids, charged, stamp, deadline_ms)
if #grants == 0 then
  return done({EMPTY, 0})
end
return done({GRANTED, grants, stamp})
