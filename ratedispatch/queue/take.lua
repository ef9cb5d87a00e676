-- Take up to `want` slots for the best tasks and hand those tasks to this consumer, atomically.
--
-- `fresh` are index members of entries this consumer just read from the stream (best first).
-- When nothing waits anywhere (no index, no backoff) and nothing competes with them for the
-- window (the read drained the stream, or everything still unread fits in the window's room),
-- the slots go to them directly, without a trip through the index: the fast path, a handful of
-- commands for a whole batch.  Otherwise they join the index first, and the slots go to the
-- best members of the index, once the read has drained the stream (else the caller reads on
-- first); ZPOPMIN is the exclusive claim, so no two workers get one entry.  A caller that can
-- read on at once asks to keep its entries (`keep`): they stay with it, indexed neither,
-- and come back with the rest of its next read, so the index never holds part of a backlog
-- that another worker could give a slot from while better tasks are still unread.
-- A slot is counted, and held in the slot log, only for an entry that could really be handed
-- over; the reply carries the take's stamp, which names those slots in the log (slot_member).
--
-- The attempts of an entry are its delivery count in the pending list: a fresh entry read by
-- XREADGROUP is at 1, indexing a fresh entry sets it to 0, and each XCLAIM by a take adds one.
--
-- KEYS[1] rate: the fixed-window counter (RATE_KEY)
-- KEYS[2] index: the priority index
-- KEYS[3] retry: the retry index
-- KEYS[4] stream: the task stream
-- KEYS[5] slots: the slot log
-- ARGV[1] limit: RATE_LIMIT
-- ARGV[2] window_ms: RATE_WINDOW_SECONDS in ms
-- ARGV[3] want: the most slots to take (0: index `fresh` and take none)
-- ARGV[4] group: the consumer group
-- ARGV[5] me: this worker's consumer
-- ARGV[6] waiting: the waiting consumer, which holds every indexed entry
-- ARGV[7] promote_max: the most retries to move back into the index
-- ARGV[8] pending_bound: the most pending entries of one consumer to list
-- ARGV[9] drained: 1 when the read that found `fresh` emptied the stream
-- ARGV[10] keep: 1 when the caller would rather keep `fresh` (and read on) than index them
-- ARGV[11] deadline_ms: the latest a call can end after its take (the HTTP deadline)
-- ARGV[12..] fresh: index members of entries this consumer just read, best first
-- Returns a reply whose first element is its code (queue/entries.py: TakeReply):
--   {GRANTED_FRESH = 3, {id, ...}, stamp}                             fast path
--   {GRANTED = 1, {{id, fields, attempt, member}, ...}, stamp}        index entries granted
--   {FULL = 0, wait_ms}                    no room; a slot may be had in wait_ms
--   {EMPTY = 2, wait_ms}                   nothing waiting; the next retry is due in wait_ms
--                                          (-1: none)
--   {READ_ON = 4}                          `fresh` kept by the caller: read on
--
-- include: lua/clock.lua
-- include: lua/chunks.lua
-- include: queue/indexing.lua
-- include: limits/limit.lua
local GRANTED, FULL, EMPTY, GRANTED_FRESH, READ_ON = 1, 0, 2, 3, 4
local rate, index, retry, stream, slots = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local limit = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local group, me, waiting = ARGV[4], ARGV[5], ARGV[6]
local promote_max = tonumber(ARGV[7])
local pending_bound = tonumber(ARGV[8])
local drained = ARGV[9] == '1'
local keep = ARGV[10] == '1'
local deadline_ms = tonumber(ARGV[11])
local fresh = {}
for i = 12, #ARGV do fresh[#fresh + 1] = ARGV[i] end
local now, stamp = clock()

-- Would every entry not yet read fit in the window's room along with `fresh`?  Then no task
-- can lose its slot to a lower priority one by being read later.  What is not yet read is in
-- the stream, so a room above the stream's length (XLEN, constant time) answers it without the
-- group's lag (XINFO GROUPS, which lists every group with a dozen fields).
local function all_fit()
  local room = limit_room(rate, slots, limit, now) - #fresh
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

if #fresh > 0 and redis.call('EXISTS', index, retry) == 0 and (drained or all_fit()) then
  local granted, wait = 0, -1
  if want > 0 then
    granted, wait = limit_take(rate, slots, limit, window_ms, math.min(want, #fresh), now)
  end
  local ids, rest = {}, {}
  for i, member in ipairs(fresh) do
    if i <= granted then ids[#ids + 1] = member_id(member) else rest[#rest + 1] = member end
  end
  index_entries(stream, index, group, me, waiting, rest, 'fresh', pending_bound)
  if granted == 0 and want > 0 then
    return {FULL, wait}
  end
  slots_hold(slots, ids, now, stamp, deadline_ms, window_ms)
  return {GRANTED_FRESH, ids, stamp}
end

if #fresh > 0 and keep and not drained then
  return {READ_ON}
end
index_entries(stream, index, group, me, waiting, fresh, 'fresh', pending_bound)
if #fresh > 0 and not drained then
  -- More is unread, possibly of higher priority: index it before any slot is given away.
  return {EMPTY, 0}
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

local n = math.min(want, redis.call('ZCARD', index))
if n <= 0 then
  if want <= 0 then return {EMPTY, 0} end
  local nxt = redis.call('ZRANGE', retry, 0, 0, 'WITHSCORES')
  if #nxt > 0 then
    return {EMPTY, math.max(tonumber(nxt[2]) - now, 0)}
  end
  return {EMPTY, -1}
end

local granted, wait = limit_take(rate, slots, limit, window_ms, n, now)
if granted == 0 then
  return {FULL, wait}
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
local grants, ids = {}, {}
for _, member in ipairs(members) do
  local id = member_id(member)
  if claimed[id] then
    grants[#grants + 1] = {id, claimed[id], counts[id] or 1, member}
    ids[#ids + 1] = id
  end
end
counter_give_back(rate, granted - #grants)
if #grants == 0 then
  return {EMPTY, 0}
end
slots_hold(slots, ids, now, stamp, deadline_ms, window_ms)
return {GRANTED, grants, stamp}
