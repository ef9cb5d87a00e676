-- RATEDISPATCH_RATE_ADAPT: for an API that says nothing of its limits but 429, the fleet finds
-- them as TCP finds a path's capacity (AIMD).  Every term of LIMITS is scaled by one factor f,
-- kept in field `adapt` of the limits hash as
-- `<f>:<raised_at>:<lowered_at>:<refused_at>:<ceiling>`: a 429 multiplies f by ADAPT_DOWN, at
-- most once per window of the first term (the period), so that the 429s one excess caused
-- lower it once, and notes the first term's N it came at (the ceiling).  A period in which
-- calls succeeded and none was refused raises f: halfway back to one call under the ceiling, by
-- one call a window at least; there, it holds for ADAPT_HOLD periods, then tries one call a
-- window more, and so on up to 1 (an API may raise its limit too).  So the fleet spends most of
-- its time just under the limit it found, and meets a 429 about once per hold, not once every
-- few windows as a plain additive climb would.  The times are Redis ms: when f last rose, last
-- fell, and when the last 429 came.
--
-- With adapt, the limits' spec carries the marker `a` (limits/limiter.py).

local ADAPT_DOWN = 0.7
local ADAPT_HOLD = 8

local function adapt_parse(value, terms)
  local parts = {}
  for part in string.gmatch((value or '') .. ':', '([^:]*):') do parts[#parts + 1] = part end
  local first = terms[1]
  return {f = math.min(tonumber(parts[1]) or 1, 1), raised = tonumber(parts[2]) or 0,
          lowered = tonumber(parts[3]) or 0, refused = tonumber(parts[4]) or 0,
          ceiling = tonumber(parts[5]) or first.n, n = first.n, period = first.d,
          step = 1 / first.n, least = 1 / first.n}
end

-- Scale the terms of LIMITS by f: never below one unit, nor below `costliest` (a task of that
-- cost must still fit in an idle term).  Paced terms keep their field, named by their own N.
local function adapt_scale(A, terms, costliest)
  if A.f >= 1 then return end
  for _, term in ipairs(terms) do
    if not term.carried then
      term.n = math.max(math.floor(term.n * A.f), 1, math.min(costliest, term.n))
      if term.kind == 'p' then
        term.b = math.max(math.floor(term.b * A.f), 1, math.min(costliest, term.b))
        term.t = term.d / term.n
      end
    end
  end
end

-- The API answered 429: lower f, once a period.  Every 429 is noted: none may come in the
-- period before a rise.
local function adapt_down(A, now)
  A.refused = now
  if now - A.lowered >= A.period then
    A.ceiling = math.floor(A.f * A.n)
    A.f = math.max(A.f * ADAPT_DOWN, A.least)
    A.lowered = now
  end
  return true
end

-- Calls succeeded: raise f, once a period, when no 429 came in the last one.
local function adapt_up(A, now)
  if A.f >= 1 or now - A.raised < A.period or now - A.refused < A.period then return false end
  -- Just under the ceiling: the middle of the N one call under it, so float noise cannot
  -- round it up to the N the 429 came at.
  local under = (A.ceiling - 0.5) / A.n
  if A.f < under - A.step / 2 then
    A.f = math.min(A.f + math.max(A.step, (under - A.f) / 2), under)
  elseif now - A.lowered >= ADAPT_HOLD * A.period then
    A.f = math.min(A.f + A.step, 1)
  else
    return false
  end
  A.raised = now
  return true
end

local function adapt_format(A)
  return string.format('%.6f:%d:%d:%d:%d', A.f, A.raised, A.lowered, A.refused, A.ceiling)
end
