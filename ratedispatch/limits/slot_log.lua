-- The slot log at RATE_KEY:slots: a sorted set with a member for each slot taken, scored with the
-- Redis time (ms) at which it may be used again: while its call is in flight, the latest that
-- call can end (the HTTP deadline) plus a window; once the call is answered, a window after the
-- answer.  A slot is given only while fewer than `limit` are busy, so no interval of a window's
-- length sees more than `limit` calls reach the API, since the API sees each call before it
-- answers.  Under a backlog each slot is used again a window after its own call's answer: the
-- next window's calls follow the last window's as they came, rather than all waiting for the
-- last of them.
--
-- include: lua/chunks.lua

-- A worker refused by the log sleeps until its first busy slot frees, and this much more, so
-- that it takes the slots freed meanwhile in one script call rather than one call each.
local SLOT_LINGER_MS = 2

-- How many slots of the log are busy at `now`.  Freed ones are left for slots_answered to drop:
-- it runs once for every slot taken, so the log never holds many more than the limit.  Counted
-- once per script (a take asks twice: is there room for all, then take), which is right because
-- a script takes slots only once, after asking.
local busy_counted = nil
local function slots_busy(slots, now)
  if busy_counted == nil then
    busy_counted = redis.call('ZCOUNT', slots, '(' .. now, '+inf')
  end
  return busy_counted
end

-- The ms until the first busy slot frees (called when all `limit` are busy).  A slot whose call
-- is still in flight frees a window after its answer, which is at the latest a window from now:
-- never sleep longer than that for it.
local function slots_wait(slots, window_ms, now)
  local first = redis.call('ZRANGEBYSCORE', slots, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return math.min(tonumber(first[2]) - now + SLOT_LINGER_MS, window_ms)
end

-- The log member of the slot taken for entry `id` by the take at `stamp`: unique, since an entry
-- is handed to one worker at a time and a take is later than the one before it.
local function slot_member(id, stamp)
  return id .. '@' .. stamp
end

-- Hold the slots taken for `ids` by the take at `now` while their calls are in flight: until the
-- latest the call can end (deadline_ms) plus a window.  A worker that dies holding them frees them
-- then; one that lives says when each call was answered (slots_answered).
local function slots_hold(slots, ids, now, stamp, deadline_ms, window_ms)
  if #ids == 0 then return end
  local busy_until = now + deadline_ms + window_ms
  local scored = {}
  for _, id in ipairs(ids) do
    scored[#scored + 1] = busy_until
    scored[#scored + 1] = slot_member(id, stamp)
  end
  call_chunked({'ZADD', slots}, scored, {}, 2)
end

-- Calls were answered: `answers` is {id, stamp, ago_ms, ...}, the entry of each call, the take
-- that gave its slot, and how long ago it was answered.  Each slot is busy for a window from its
-- answer (XX: a slot already freed stays free).  The worker measures ago_ms on its own clock just
-- before sending, so it is only ever too short, which keeps a slot busy longer, never less.
-- ago_ms < 0: no call was made (an invalid entry, or one out of attempts), the slot frees at
-- once.  An empty stamp: no slot was taken.  Slots whose time has come are dropped here.
local function slots_answered(slots, window_ms, answers, now)
  local scored, unused = {}, {}
  for i = 1, #answers, 3 do
    local stamp, ago = answers[i + 1], tonumber(answers[i + 2])
    if stamp ~= '' and ago < 0 then
      unused[#unused + 1] = slot_member(answers[i], stamp)
    elseif stamp ~= '' then
      scored[#scored + 1] = now - ago + window_ms
      scored[#scored + 1] = slot_member(answers[i], stamp)
    end
  end
  if #scored == 0 and #unused == 0 then return end
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  if #scored > 0 then call_chunked({'ZADD', slots, 'XX'}, scored, {}, 2) end
  if #unused > 0 then call_chunked({'ZREM', slots}, unused, {}) end
end
