-- A window term, N/D: no interval of length D sees more than N units start, as the API sees
-- them.  A unit is busy while its call is in flight (flight.lua) and for D after the call was
-- answered; the term gives room only while fewer than N are busy.  The API sees a call between
-- its take and its answer, so all the calls it sees in one interval of length D were busy
-- together at that interval's end: never more than N (docs/design.md, "Judged at the API").
--
-- Answered units are counted in time buckets of w = D / WINDOW_BUCKETS ms, in the limits hash:
-- field `w<D>:<b>` holds bucket b's units, and field `w<D>` is `<lo>:<sum>`, the first bucket
-- still counted and the units of those still counted.  So the memory stays bounded whatever N,
-- and each take reads one field a term; the price is that a unit stays busy until its bucket
-- ends, at most w (a thousandth of D) longer than an exact log would keep it.

local WINDOW_BUCKETS = 1000
-- The most bucket fields one HMGET reads (dropping or walking buckets); past that many since the
-- last take (an idle spell), the term's buckets are found among the hash's fields instead.
local WINDOW_SCAN = 128

local function window_bucket(term, t)
  return math.floor(t / term.w)
end

-- The first bucket still counted at `now`: bucket b ends at (b + 1) * w, and its units may have
-- reached the API in any interval that ends before that plus D.
local function window_cutoff(term, now)
  return math.floor((now - term.d) / term.w)
end

-- Units of bucket fields named `names`, in order (0 for a bucket with none).
local function window_counts(key, names)
  local counts = {}
  for i, count in ipairs(redis.call('HMGET', key, unpack(names))) do
    counts[i] = tonumber(count) or 0
  end
  return counts
end

-- Stop counting the buckets that ended more than D before `now`.  After an idle spell (or with
-- no state yet) the sum is counted afresh from the buckets there are, which also mends a sum an
-- operator's edit left wrong.
local function window_advance(key, term, now, writes)
  local cutoff = window_cutoff(term, now)
  if term.lo ~= nil and term.lo >= cutoff then return end
  if term.lo ~= nil and cutoff - term.lo <= WINDOW_SCAN then
    local names = {}
    for b = term.lo, cutoff - 1 do names[#names + 1] = term.prefix .. b end
    for i, count in ipairs(window_counts(key, names)) do
      if count ~= 0 then
        term.sum = term.sum - count
        writes.hdel[#writes.hdel + 1] = names[i]
      end
    end
  else
    -- The buckets as they will be once this script's writes are made: what is stored, with
    -- what the script set or added since it read them.
    local all, counts = redis.call('HGETALL', key), {}
    for i = 1, #all, 2 do counts[all[i]] = tonumber(all[i + 1]) or 0 end
    for name, units in pairs(writes.hset) do counts[name] = tonumber(units) end
    for name, units in pairs(writes.hincr) do counts[name] = (counts[name] or 0) + units end
    local sum, pattern = 0, '^' .. term.prefix .. '(%-?%d+)$'
    for name, count in pairs(counts) do
      local b = tonumber(string.match(name, pattern))
      if b ~= nil and b < cutoff then
        writes.hdel[#writes.hdel + 1] = name
        writes.hset[name], writes.hincr[name] = nil, nil
      elseif b ~= nil then
        sum = sum + count
      end
    end
    term.sum = sum
  end
  term.sum = math.max(term.sum, 0)
  term.lo = cutoff
  term.dirty = true
end

-- The bucket field in which a call answered at `at` is counted; nil when it no longer counts.
local function window_field(term, at, now)
  local b = window_bucket(term, at)
  if b < math.max(term.lo or b, window_cutoff(term, now)) then return nil end
  return term.prefix .. b
end

-- The ms until `units` of the answered units still counted have freed (oldest bucket first);
-- nil when the buckets hold fewer.
local function window_freeing(key, term, units, now)
  local first, last = math.max(term.lo, window_cutoff(term, now)), window_bucket(term, now)
  local freed = 0
  for from = first, last, WINDOW_SCAN do
    local names = {}
    for b = from, math.min(from + WINDOW_SCAN - 1, last) do names[#names + 1] = term.prefix .. b end
    for i, count in ipairs(window_counts(key, names)) do
      freed = freed + count
      if freed >= units then
        return math.max(1, (from + i) * term.w + term.d - now)
      end
    end
  end
  return nil
end

-- The ms until `need` units are free in the term, busy `busy` of its N (`flight` of them in
-- flight).  A unit still in flight frees D after its answer, so no sooner than D from now: when
-- the answered ones are not enough, look again then.
local function window_wait(key, term, busy, flight, need, now)
  local excess = busy + need - term.n
  if excess > busy - flight then return term.d end
  return window_freeing(key, term, excess, now) or term.d
end
