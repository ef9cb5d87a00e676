-- Take up to `want` slots for the best tasks and hand those tasks to this consumer, atomically.
--
-- `fresh` are index members of entries this consumer just read from the stream (best first).
-- When nothing waits anywhere (no index, no backoff) and nothing competes with them for the
-- window (the read drained the stream, or everything still unread fits in the window's room),
-- the slots go to them directly, without a trip through the index: the fast path, a handful of
-- commands for a whole batch.  Otherwise they join the index first, and the slots go to the
-- best members of the index, once the read has drained the stream (else the caller reads on
-- first); ZPOPMIN is the exclusive claim, so no two workers get one entry.  A caller that can
-- read on at once asks to keep its entries (drained 'k'): they stay with it, indexed neither,
-- and come back with the rest of its next read, so the index never holds part of a backlog
-- that another worker could give a slot from while better tasks are still unread.
-- A slot is counted, and held in the slot log, only for an entry that could really be handed
-- over; the reply carries the take's stamp, which names those slots in the log (slot_member).
--
-- The attempts of an entry are its delivery count in the pending list: a fresh entry read by
-- XREADGROUP is at 1, deferring a fresh entry sets it to 0, and each XCLAIM by a take adds one.
--
-- KEYS: rate, deferred (priority index), retry (due-time index), stream, slots (the log)
-- ARGV: limit, window_ms, want, group, me, waiting consumer, max retries to promote,
--       pending bound, drained (1: the read that found `fresh` emptied the stream; 0: it did
--       not; k: it did not, and the caller keeps `fresh` unless they can be called now),
--       call deadline ms, fresh members...
-- Returns {3, {id, ...}, stamp}                     fresh entries granted (fast path)
--         {1, {{id, fields, attempt, member}, ...}, stamp}   index entries granted
--         {0, wait_ms}                              no room; a slot may be had in wait_ms
--         {2, wait_ms}                              nothing waiting; next retry due in wait_ms
--                                                   (-1: none)
--         {4}                                       `fresh` kept by the caller: read on
local rate, deferred, retry, stream, slots = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local limit, window_ms, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local group, me, waiting = ARGV[4], ARGV[5], ARGV[6]
local promote_max, most, drained = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9] == '1'
local keep, deadline_ms = ARGV[9] == 'k', tonumber(ARGV[10])
local fresh = {}
for i = 11, #ARGV do fresh[#fresh + 1] = ARGV[i] end
local now, stamp = clock()

-- Would every entry not yet read fit in the window's room along with `fresh`?  Then no task
-- can lose its slot to a lower priority one by being read later.  What is not yet read is in
-- the stream, so a room above the stream's length (XLEN, constant time) answers it without the
-- group's lag (XINFO GROUPS, which lists every group with a dozen fields).
local function all_fit()
  local room = window_room(rate, slots, limit, now) - #fresh
  if room >= redis.call('XLEN', stream) then return true end
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

if #fresh > 0 and redis.call('EXISTS', deferred, retry) == 0 and (drained or all_fit()) then
  local granted, wait = 0, -1
  if want > 0 then
    granted, wait = window_take(rate, slots, limit, window_ms, math.min(want, #fresh), now)
  end
  local ids, rest = {}, {}
  for i, member in ipairs(fresh) do
    if i <= granted then ids[#ids + 1] = member_id(member) else rest[#rest + 1] = member end
  end
  defer(stream, deferred, group, me, waiting, rest, 'fresh', most)
  if granted == 0 and want > 0 then
    return {0, wait}
  end
  slots_hold(slots, ids, now, stamp, deadline_ms, window_ms)
  return {3, ids, stamp}
end

if #fresh > 0 and keep then
  return {4}
end
defer(stream, deferred, group, me, waiting, fresh, 'fresh', most)
if #fresh > 0 and not drained then
  -- More is unread, possibly of higher priority: index it before any slot is given away.
  return {2, 0}
end

-- Retries whose backoff has passed rejoin the priority index, under their original rank and id.
local due = redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, promote_max)
if #due > 0 then
  local scored = {}
  for _, member in ipairs(due) do
    scored[#scored + 1] = 0
    scored[#scored + 1] = member
  end
  redis.call('ZREM', retry, unpack(due))
  redis.call('ZADD', deferred, unpack(scored))
end

local n = math.min(want, redis.call('ZCARD', deferred))
if n <= 0 then
  if want <= 0 then return {2, 0} end
  local nxt = redis.call('ZRANGE', retry, 0, 0, 'WITHSCORES')
  if #nxt > 0 then
    return {2, math.max(tonumber(nxt[2]) - now, 0)}
  end
  return {2, -1}
end

local granted, wait = window_take(rate, slots, limit, window_ms, n, now)
if granted == 0 then
  return {0, wait}
end

local popped = redis.call('ZPOPMIN', deferred, granted)
local members, claim = {}, {'XCLAIM', stream, group, me, 0}
for i = 1, #popped, 2 do
  members[#members + 1] = popped[i]
  claim[#claim + 1] = member_id(popped[i])
end
-- Only pending entries are claimed; Redis 7 also drops one deleted from the stream (XTRIM, XDEL)
-- from the pending list here.  Each claim adds one to the entry's delivery count.
local claimed = {}
for _, row in ipairs(redis.call(unpack(claim))) do
  if row then claimed[row[1]] = row[2] end
end
local lo, hi = id_range(members)
local counts = held_by(stream, group, me, lo, hi, most)
local grants, ids = {}, {}
for _, member in ipairs(members) do
  local id = member_id(member)
  if claimed[id] then
    grants[#grants + 1] = {id, claimed[id], counts[id] or 1, member}
    ids[#ids + 1] = id
  end
end
window_give_back(rate, granted - #grants)
if #grants == 0 then
  return {2, 0}
end
slots_hold(slots, ids, now, stamp, deadline_ms, window_ms)
return {1, grants, stamp}
