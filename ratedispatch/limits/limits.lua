-- Every limit term at once (RATEDISPATCH_LIMITS) and MAX_IN_FLIGHT: a call starts only when each
-- has room for its cost.  A take opens the limits (limits_open, limits_expire), asks how many of
-- its candidates fit (limits_fit, then limits_count for the counter), and charges the calls it
-- hands over (limits_charge) or says how long to wait (limits_wait); a script that records
-- answers settles their calls (limits_settle).  Writes gather in the limits object and reach
-- Redis at the end, in a few commands (limits_flush).
--
-- The terms come as text, `w,N,D_ms` or `p,N,D_ms,B` each, joined by `;` (ratedispatch/terms.py).
-- Their state is one hash at RATE_KEY:terms, a field for each term: a window term's named by its
-- D, `w<D>` (a new N goes on counting the calls already made), with its buckets beside it; a
-- paced term's by N/D, `p<N>/<D>`.  Field `calls` is
-- `<units in flight>:<due>:<ttl_at>:<closed until>:<costliest>`: due is no later than the first
-- in-flight deadline; closed until, after a 429, when any call may start again; costliest, the
-- largest cost a take has met.  A few fields each, packed: a script pays for
-- every field it reads or writes.
--
-- include: lua/chunks.lua
-- include: limits/counter.lua
-- include: limits/window_log.lua
-- include: limits/pacing.lua
-- include: limits/flight.lua
-- include: limits/heard.lua
-- include: limits/adapt.lua

-- When only MAX_IN_FLIGHT refuses, a call may end at any moment: look again this soon.
local FLIGHT_POLL_MS = 5
-- The hash outlives its last refresh by twice its longest term and this much.
local LIMITS_IDLE_MS = 3600000

-- The terms of `spec`, and its markers: `h` (obey what the API announces: heard.lua) and `a`
-- (adapt to its 429s: adapt.lua).
local function limits_terms(spec, counter)
  local terms, marks = {}, {}
  for text in string.gmatch(spec, '[^;]+') do
    local kind, n, d, b = string.match(text, '^([wp]),(%d+),(%d+),?(%d*)$')
    if text == 'h' or text == 'a' then
      marks[text] = true
    elseif kind == nil then
      error('not a limit term: ' .. text)
    else
      local term = {kind = kind, n = tonumber(n), d = tonumber(d)}
      if kind == 'w' then
        term.w = math.ceil(term.d / WINDOW_BUCKETS)
        term.field = 'w' .. d
        term.prefix = term.field .. ':'
        term.counter = counter  -- the first N/D term keeps the fixed-window counter at RATE_KEY
        counter = false
      else
        term.b = tonumber(b)
        term.t = term.d / term.n
        term.field = 'p' .. n .. '/' .. d
      end
      terms[#terms + 1] = term
    end
  end
  return terms, marks
end

-- Read the state of every term.  `answered_at`: the times of the answers this script records,
-- whose bucket fields are read too, so that they can be written back in the one HSET.  Without
-- `rate` there is no fixed-window counter (a key's limits: queue/keyed.lua).  `idle_ms`: how long
-- the hash outlives an idle spell beyond its terms (LIMITS_IDLE_MS when nil).  With the spec's
-- markers, what the API announced (L.heard) and the factor adapt found (L.adapt) are read first:
-- the quotas the API stated are terms too, whose state is read with the others'.
local function limits_open(rate, flight, hash, spec, cap, now, answered_at, idle_ms)
  local terms, marks = limits_terms(spec, rate ~= nil)
  local L = {rate = rate, flight_key = flight, hash = hash, cap = cap, now = now,
             terms = terms, known = {}, hset = {}, hincr = {}, hdel = {},
             idle = idle_ms or LIMITS_IDLE_MS}
  local said = {}
  if marks.h or marks.a then said = redis.call('HMGET', hash, 'api', 'adapt') end
  if marks.h then
    L.heard = heard_parse(said[1])
    heard_probe(L.heard, now)
    for _, quota in ipairs(L.heard.quotas) do terms[#terms + 1] = heard_term(quota) end
  end
  local fields = {'calls'}
  for _, term in ipairs(L.terms) do fields[#fields + 1] = term.field end
  local seen = {}
  for _, term in ipairs(L.terms) do
    for _, at in ipairs(term.kind == 'w' and answered_at or {}) do
      local name = term.prefix .. window_bucket(term, at)
      if not seen[name] then
        seen[name] = true
        fields[#fields + 1] = name
      end
    end
  end
  local values = redis.call('HMGET', hash, unpack(fields))
  for i = 2 + #L.terms, #fields do L.known[fields[i]] = tonumber(values[i]) or 0 end
  local calls = {}
  for part in string.gmatch((values[1] or '') .. ':', '([^:]*):') do calls[#calls + 1] = part end
  L.flight = math.max(tonumber(calls[1]) or 0, 0)
  L.due = tonumber(calls[2])
  if values[1] == false and flight ~= nil then
    L.due = 0  -- no state (gone, or never there): count the calls in flight afresh
  end
  L.ttl_at = tonumber(calls[3]) or 0
  L.closed = tonumber(calls[4]) or 0
  L.costliest = tonumber(calls[5]) or 1
  if marks.a then
    L.adapt = adapt_parse(said[2], terms)
    adapt_scale(L.adapt, terms, L.costliest)
  end
  for _, term in ipairs(terms) do
    -- A stated quota below the costliest task's cost must still let that task go, alone.
    if term.carried then term.n = math.max(term.n, L.costliest) end
  end
  -- Refresh the hash's TTL now and then, not at every write: it only has to outlive an idle spell.
  if L.now >= L.ttl_at then
    L.refresh = true
    L.ttl_at = L.now + math.floor(L.idle / 2)
    L.calls_dirty = true
  end
  for i, term in ipairs(L.terms) do
    local value = values[i + 1] or ''
    if term.kind == 'w' then
      local lo, sum = string.match(value, '^(%-?%d+):(%-?%d+)$')
      term.lo, term.sum = tonumber(lo), math.max(tonumber(sum) or 0, 0)
    else
      term.tat = tonumber(value) or 0
    end
  end
  return L
end

-- A call of `units` reached the API no later than `at` (its answer, or its deadline): each term
-- counts it from then.
local function limits_answered(L, at, units)
  for _, term in ipairs(L.terms) do
    if term.kind == 'p' then
      paced_answered(term, at, units)
    else
      local name = window_field(term, at, L.now)
      if name ~= nil then
        if L.hset[name] ~= nil or L.known[name] ~= nil then
          L.hset[name] = (L.hset[name] or L.known[name]) + units
        else
          L.hincr[name] = (L.hincr[name] or 0) + units
        end
        term.sum = term.sum + units
        term.dirty = true
      end
    end
  end
end

-- Calls past their deadline belong to workers that died: answered, as far as any term can
-- tell, at their deadline.  Looked for only once `due` has passed (about once a deadline), not
-- at every take; then the units in flight are also counted afresh from the calls there are, so
-- a sum an operator's edit left wrong (a deleted hash, say) is mended within a deadline.
local function limits_expire(L)
  if (L.due == nil and L.flight == 0) or (L.due ~= nil and L.due > L.now) then return end
  local expired = flight_expired(L.flight_key, L.now)
  for i = 1, #expired, 2 do
    limits_answered(L, tonumber(expired[i + 1]), flight_cost(expired[i]))
  end
  L.expired = #expired / 2
  local live = redis.call('ZRANGEBYSCORE', L.flight_key, '(' .. L.now, '+inf', 'WITHSCORES')
  L.flight, L.due = 0, nil
  for i = 1, #live, 2 do
    L.flight = L.flight + flight_cost(live[i])
    L.due = math.min(L.due or math.huge, tonumber(live[i + 1]))
  end
  L.calls = #live / 2
  L.calls_dirty = true
end

-- The room of each term for a take that could use `wanted` units (math.huge: all of it): whole
-- units, and calls under MAX_IN_FLIGHT.  A window term's stale buckets are dropped only when
-- counting them would refuse something, or once every D: its sum only ever counts too many.
-- The counter is not read here: limits_count charges it last, counting first.
local function limits_room(L, wanted)
  local units = math.huge
  for _, term in ipairs(L.terms) do
    if term.kind == 'w' then
      local stale = term.lo == nil or window_cutoff(term, L.now) - term.lo > WINDOW_BUCKETS
      if stale or term.n - L.flight - term.sum < wanted then
        window_advance(L.hash, term, L.now, L)
      end
      term.room = term.n - L.flight - term.sum
    else
      term.room = paced_room(term, L.flight, L.now)
    end
    units = math.min(units, term.room)
  end
  if heard_active(L.heard, L.now) then units = math.min(units, L.heard.left) end
  if L.closed > L.now then units = 0 end  -- a 429's cooldown
  local calls = math.huge
  if L.cap > 0 then
    if L.calls == nil then L.calls = redis.call('ZCARD', L.flight_key) end
    calls = L.cap - L.calls
  end
  return math.max(units, 0), math.max(calls, 0)
end

-- How many of `costs` (in order) fit in `units` and `calls`, at most `most`: the best tasks go
-- first, so a task that does not fit is not passed over for cheaper ones behind it.
local function limits_fit(costs, most, units, calls)
  local k, sum = 0, 0
  while k < most and k < calls and k < #costs and sum + costs[k + 1] <= units do
    k = k + 1
    sum = sum + costs[k]
  end
  return k
end

-- Charge the counter for the first `k` of `costs`, counting first and giving back what does not
-- fit (one command fewer than reading first); returns how many it took.
local function limits_count(L, costs, k)
  for _, term in ipairs(L.terms) do
    if term.counter and k > 0 then
      local units = 0
      for i = 1, k do units = units + costs[i] end
      local used = counter_charge(L.rate, term.n, term.d, units)
      if used == nil then
        term.used = term.n  -- garbage, now a full window
        return 0
      end
      local took, sum = limits_fit(costs, k, term.n - (used - units), math.huge), 0
      for i = 1, took do sum = sum + costs[i] end
      counter_give_back(L.rate, units - sum)
      term.used = used - (units - sum)
      return took
    end
  end
  return k
end

-- Give the counter back the units of calls that were not handed over after all.
local function limits_uncount(L, units)
  for _, term in ipairs(L.terms) do
    if term.counter then counter_give_back(L.rate, units) end
  end
end

-- The ms until a call of `need` units may fit: the latest of the refusing terms' waits.
local function limits_wait(L, need)
  local _, calls = limits_room(L, need)
  local wait = 1
  for _, term in ipairs(L.terms) do
    if term.room < need then
      if term.kind == 'w' then
        wait = math.max(wait, window_wait(L.hash, term, term.n - term.room, L.flight, need, L.now))
      else
        wait = math.max(wait, paced_wait(term, L.flight, need, L.now))
      end
    end
    if term.counter then
      if term.used == nil then term.used, term.garbage = counter_used(L.rate, term.n) end
      if term.n - term.used < need then
        wait = math.max(wait, counter_wait(L.rate, term.n, term.d, term.garbage))
      end
    end
  end
  if heard_active(L.heard, L.now) and L.heard.left < need then
    wait = math.max(wait, L.heard.reset_at - L.now)
  end
  if calls < 1 then wait = math.max(wait, FLIGHT_POLL_MS) end
  if L.closed > L.now then wait = math.max(wait, L.closed - L.now) end
  return wait
end

-- The calls for `ids` (costing `costs`) start: in flight until the take's deadline.
local function limits_charge(L, ids, costs, stamp, deadline_ms)
  if #ids == 0 then return end
  local deadline, scored, units = L.now + deadline_ms, {}, 0
  for i, id in ipairs(ids) do
    scored[#scored + 1] = deadline
    scored[#scored + 1] = flight_member(id, stamp, costs[i])
    units = units + costs[i]
  end
  call_chunked({'ZADD', L.flight_key}, scored, {}, 2)
  L.flight = L.flight + units
  L.calls_dirty = true
  if L.due == nil or L.due > deadline then L.due = deadline end
  if heard_active(L.heard, L.now) then
    L.heard.left = L.heard.left - units
    L.heard.dirty = true
  end
end

-- Calls were answered: `answers` is {member, units, at} for each (at: nil when no call was made,
-- an invalid entry or one out of attempts).  Each leaves the flight, and each call made counts
-- in every term from its answer.  Usually all are still in the flight, which one ZREM tells.
-- When some are not (an answer sent twice, a call given up on at its deadline), which ones is
-- not known: every answer then counts in the terms, one perhaps twice, and the fewest units
-- leave the flight; both err on the side of the limits, and the next deadline check counts
-- the flight afresh.
local function limits_settle(L, answers)
  local members, units = {}, {}
  for i, answer in ipairs(answers) do
    members[i] = answer[1]
    units[i] = answer[2]
  end
  local removed = call_chunked({'ZREM', L.flight_key}, members, {})
  if removed == 0 then return end
  if removed < #members then table.sort(units) end
  for i = 1, removed do L.flight = L.flight - units[i] end
  for _, answer in ipairs(answers) do
    if answer[3] ~= nil then limits_answered(L, answer[3], answer[2]) end
  end
  L.flight = math.max(L.flight, 0)
  L.calls_dirty = true
end

-- Keep `key` (if it is there) at least `ms` longer: a longer TTL stays, never cut short.
local function limits_keep(key, ms)
  local ttl = redis.call('PTTL', key)
  if ttl ~= -2 and ttl < ms then redis.call('PEXPIRE', key, ms) end
end

-- Write what the script changed: one HSET, an HINCRBY for a bucket not read, one HDEL.
local function limits_flush(L)
  if L.calls_dirty then
    L.hset['calls'] = string.format('%d:%s:%d:%d:%d', L.flight, L.due or '', L.ttl_at, L.closed,
                                    L.costliest)
  end
  for _, term in ipairs(L.terms) do
    if term.dirty and term.kind == 'w' then
      L.hset[term.field] = string.format('%d:%d', term.lo or 0, term.sum)
    elseif term.dirty then
      L.hset[term.field] = string.format('%.4f', term.tat)
    end
  end
  if L.heard ~= nil and L.heard.dirty then L.hset['api'] = heard_format(L.heard) end
  if L.adapt ~= nil and L.adapt.dirty then L.hset['adapt'] = adapt_format(L.adapt) end
  local pairs_list = {}
  for field, value in pairs(L.hset) do
    pairs_list[#pairs_list + 1] = field
    pairs_list[#pairs_list + 1] = value
  end
  if (L.expired or 0) > 0 then redis.call('ZREMRANGEBYSCORE', L.flight_key, '-inf', L.now) end
  if #L.hdel > 0 then call_chunked({'HDEL', L.hash}, L.hdel, {}) end
  if #pairs_list > 0 then call_chunked({'HSET', L.hash}, pairs_list, {}, 2) end
  for field, units in pairs(L.hincr) do redis.call('HINCRBY', L.hash, field, units) end
  if L.refresh then
    local longest, ahead = 0, math.max(0, L.closed - L.now)
    for _, term in ipairs(L.terms) do
      longest = math.max(longest, term.d)
      if term.kind == 'p' then ahead = math.max(ahead, term.tat - L.now) end
    end
    -- Never shorter than it is: a key's limits are kept past its calls' deadlines.
    limits_keep(L.hash, math.ceil(2 * longest + ahead + L.idle))
  end
end

-- Calls answered: `calls` is {id, stamp, cost, ago_ms} for each call answered ago_ms before
-- `now` (an empty stamp: none was started for it; ago_ms < 0: none was made after all).  Returns
-- their answers for limits_settle, and the times of those made (limits_open reads their
-- buckets).  The worker measures ago_ms just before it sends the script, so it is only ever too
-- short: each call counts from a moment no earlier than the API saw it.
local function limits_answers(now, calls)
  local answers, times = {}, {}
  for _, call in ipairs(calls) do
    if call[2] ~= '' then
      local at = nil
      if call[4] >= 0 then
        -- A ms later than measured: both are whole ms, rounded down.
        at = now - call[4] + 1
        times[#times + 1] = at
      end
      answers[#answers + 1] = {flight_member(call[1], call[2], call[3]), call[3], at}
    end
  end
  return answers, times
end

-- An answer script's whole part in the limits (limits_answers says what `calls` holds).
local function limits_record(flight, hash, spec, now, calls, idle_ms)
  local answers, times = limits_answers(now, calls)
  if #answers == 0 then return end
  local L = limits_open(nil, flight, hash, spec, 0, now, times, idle_ms)
  limits_settle(L, answers)
  limits_flush(L)
end
