-- The first step of both takes (queue/take.lua, queue/keyed_take.lua): record the successes this
-- consumer sends along and settle their calls in the API's limits.  Both takes' headers put the
-- successes' inputs at the same places: ARGV[13..17], then the successes from SUCCESSES on.
--
-- include: queue/successes.lua
-- include: limits/limits.lua

-- Where the successes start in ARGV, after the inputs both takes name.
local SUCCESSES = 22

-- Returns the successes' `recorded` flags, their calls (for a key's limits too), and the API's
-- limits when answers opened them (nil otherwise: the caller opens them when it needs them).
local function take_record(stream, results, group, me, rate, flight, terms, spec, max_in_flight,
                           pending_bound, want, now)
  local succeeded = tonumber(ARGV[17])
  -- Under OOM, Redis refuses a script only at its first write that may add memory: once it has
  -- written anything, it lets it run whole.  Recording successes alone may run (it frees the
  -- memory of the entries it deletes), but a take that may start calls must not, so its first
  -- write is one that may add memory: this no-op (the field is there, or is set to the state a
  -- missing field reads as; limits_flush writes it in full).
  if succeeded > 0 and want > 0 then
    redis.call('HSETNX', terms, 'calls', '0::0:0:1')
  end
  local recorded, answered = successes_record(stream, results, group, me, tonumber(ARGV[13]),
                                           ARGV[14] == '1', ARGV[15], ARGV[16], pending_bound,
                                           SUCCESSES, succeeded, now)
  local answers, answered_at = limits_answers(now, answered)
  local L = nil
  if #answers > 0 then
    L = limits_open(rate, flight, terms, spec, max_in_flight, now, answered_at)
    limits_settle(L, answers)
    -- Calls succeeded: with RATE_ADAPT, the fleet may try a little more.
    if L.adapt ~= nil and adapt_up(L.adapt, now) then L.adapt.dirty = true end
  end
  return recorded, answered, L
end

-- The index members of the entries this consumer just read, after the successes.
local function take_fresh()
  local fresh = {}
  for i = SUCCESSES + tonumber(ARGV[17]) * SUCCESS_WIDTH, #ARGV do fresh[#fresh + 1] = ARGV[i] end
  return fresh
end
