-- A paced term, N/D burst B: the leaky bucket an API such as nginx's limit_req enforces (GCRA).
-- It drains one unit every T = D/N ms and must never hold more than B.  Judged at the API: a
-- call sits in the bucket undrained from its take until its answer, since the API may see it at
-- any moment in between (a cold connection, a slow host), and drains from its answer on.  The
-- answered units are kept as a theoretical arrival time in field `p<N>/<D>` (Redis ms): their level
-- at t is max(0, tat - t) / T.  So what the API's bucket holds is never above this level plus
-- the units in flight, which the term keeps within B.

-- Float noise in a stored tat must not refuse a unit that is free (a thousandth of one, at most).
local PACED_SLACK = 0.001

local function paced_level(term, now)
  return math.max(0, term.tat - now) / term.t
end

-- Whole units the term can take now, with `flight` units in flight.
local function paced_room(term, flight, now)
  return math.floor(term.b - paced_level(term, now) - flight + PACED_SLACK)
end

-- The ms until `need` units fit: the time the bucket takes to drain that far, were every call in
-- flight answered now (no sooner, then): the next emission time, not a poll.
local function paced_wait(term, flight, need, now)
  local over = paced_level(term, now) + flight + need - term.b - PACED_SLACK
  return math.max(1, math.ceil(over * term.t))
end

-- A call of `units` was answered at `at` (or given up on at its deadline): it drains from then.
-- Answers recorded out of order only ever leave tat later, so never loosen the term.
local function paced_answered(term, at, units)
  term.tat = math.max(term.tat, at) + units * term.t
  term.dirty = true
end

-- After a 429: no unit before `until_ms`, and then one at a time, at the term's pace.
local function paced_close(term, until_ms)
  term.tat = math.max(term.tat, until_ms + (term.b - 1) * term.t)
  term.dirty = true
end
