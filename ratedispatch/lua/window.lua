-- The limit, kept two ways (prepended by ratedispatch._lua to the scripts that take slots).
-- Redis keeps time for both, never a worker.
--
-- The fixed-window counter at RATE_KEY counts the calls started in the current window: it opens
-- with its first slot and lasts window_ms by the key's own TTL.  A 429 closes it (close.lua).
-- On its own it would let a window's last calls and the next window's first ones reach the API
-- within one window's length: up to twice the limit.
--
-- The slot log at RATE_KEY:slots closes that gap.  It is a sorted set with a member for each
-- slot taken, scored with the Redis time (ms) at which it may be used again: while its call is
-- in flight, the latest that call can end (the HTTP deadline) plus a window; once the call is
-- answered, a window after the answer.  A slot is given only while fewer than `limit` are busy,
-- so no interval of a window's length sees more than `limit` calls reach the API, since the API
-- sees each call before it answers.  Under a backlog each slot is used again a window after its
-- own call's answer: the next window's calls follow the last window's as they came, rather than
-- all waiting for the last of them.

-- A worker refused by the log sleeps until its first busy slot frees, and this much more, so
-- that it takes the slots freed meanwhile in one script call rather than one call each.
local SLOT_LINGER_MS = 2

-- Redis's clock once for a whole take: in ms, and in microseconds as a stamp for its slots.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
         t[1] .. string.format('%06d', tonumber(t[2]))
end

-- How many slots of the log are busy at `now`.  Freed ones are left for slots_answered to
-- drop: it runs once for every slot taken, so the log never holds many more than the limit.
-- Counted once per script (a take asks twice: is there room for all, then take), which is
-- right because a script takes slots only once, after asking.
local busy_counted = nil
local function slots_busy(slots, now)
  if busy_counted == nil then
    busy_counted = redis.call('ZCOUNT', slots, '(' .. now, '+inf')
  end
  return busy_counted
end

-- How many slots could be given now: the room left in both the counter and the log.
local function window_room(rate, slots, limit, now)
  local raw, used = redis.call('GET', rate), 0
  if raw then used = tonumber(raw) or limit end  -- not a number: as good as full
  return math.min(limit - used, limit - slots_busy(slots, now))
end

-- The ms until a slot may be had when all `limit` are busy in the log: until the first one
-- frees, or the counter reopens if it is full too and reopens later.  A slot whose call is
-- still in flight frees a window after its answer, which is at the latest a window from now:
-- never sleep longer than that for it.
local function slots_wait(rate, slots, limit, window_ms, now)
  local first = redis.call('ZRANGEBYSCORE', slots, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  local wait = math.min(tonumber(first[2]) - now + SLOT_LINGER_MS, window_ms)
  local used = tonumber(redis.call('GET', rate) or '0') or limit
  if used >= limit then
    wait = math.max(wait, redis.call('PTTL', rate))
  end
  return wait
end

-- Take up to n slots (n >= 1) at `now`; returns the slots granted and, when none was, the ms
-- until one may be (the log's first slot to free, or the counter's PTTL).  The caller holds
-- the granted slots in the log (slots_hold) for the entries it really hands over, and gives
-- back the rest.  Counting first and giving back what does not fit costs one command less
-- than reading first.  A counter found without a TTL (a new window, an operator's SET, a lost
-- PEXPIRE) gets one: otherwise it would close the API for ever.  A value that is not a number
-- is replaced by a full window, which errs on the side of the limit.
local function window_take(rate, slots, limit, window_ms, n, now)
  local busy = slots_busy(slots, now)
  if busy >= limit then
    return 0, slots_wait(rate, slots, limit, window_ms, now)
  end
  n = math.min(n, limit - busy)
  local used = redis.pcall('INCRBY', rate, n)
  if type(used) == 'table' then
    redis.call('SET', rate, limit, 'PX', window_ms)
    return 0, window_ms
  end
  local pttl = redis.call('PTTL', rate)
  if pttl == -1 then
    redis.call('PEXPIRE', rate, window_ms)
    pttl = window_ms
  end
  local granted = math.max(0, math.min(n, limit - (used - n)))
  if granted < n then
    redis.call('DECRBY', rate, n - granted)
  end
  return granted, pttl
end

-- Give back n counter slots taken for entries that turned out to be gone (trimmed, deleted).
local function window_give_back(rate, n)
  if n > 0 and redis.call('EXISTS', rate) == 1 then
    redis.call('DECRBY', rate, n)
  end
end

-- The log member of the slot taken for entry `id` by the take at `stamp`: unique, since an
-- entry is handed to one worker at a time and a take is later than the one before it.
local function slot_member(id, stamp)
  return id .. '@' .. stamp
end

-- Hold the slots taken for `ids` by the take at `now` while their calls are in flight: until
-- the latest the call can end (deadline_ms) plus a window.  A worker that dies holding them
-- frees them then; one that lives says when each call was answered (slots_answered).
local function slots_hold(slots, ids, now, stamp, deadline_ms, window_ms)
  if #ids == 0 then return end
  local busy_until = now + deadline_ms + window_ms
  local scored = {}
  for _, id in ipairs(ids) do
    scored[#scored + 1] = busy_until
    scored[#scored + 1] = slot_member(id, stamp)
  end
  redis.call('ZADD', slots, unpack(scored))
end

-- Calls were answered: `answers` is {id, stamp, ago_ms, ...}, the entry of each call, the take
-- that gave its slot, and how long ago it was answered.  Each slot is busy for a window from its answer (XX: a slot already
-- freed stays free).  The worker measures ago_ms on its own clock just before sending, so it
-- is only ever too short, which keeps a slot busy longer, never less.  ago_ms < 0: no call was
-- made (an invalid entry, or one out of attempts), the slot frees at once.  An empty stamp:
-- no slot was taken.  Slots whose time has come are dropped here.
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
  if #scored > 0 then redis.call('ZADD', slots, 'XX', unpack(scored)) end
  if #unused > 0 then redis.call('ZREM', slots, unpack(unused)) end
end
