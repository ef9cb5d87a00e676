-- What the API says of its own limits (RATEDISPATCH_RATE_HEADERS, CONTRACT §9), kept for the
-- whole fleet in field `api` of the limits hash:
--   `<said>:<left>:<reset_at>:<as_of>:<quotas>:<heard_at>:<probed>:<rtt>`
-- said: the calls the API said remain; left: how many more the fleet may start before reset_at
-- (Redis ms): what it said, less the calls in flight when it was heard, less those started
-- since; as_of: the take stamp (µs) of the call whose response said it, for an announcement is
-- only as new as the call that carried it; quotas: the quotas it stated, `N/D_ms` joined by `,`;
-- heard_at: when it was recorded; probed: 1 once the window after reset_at has sent its probe;
-- rtt: about how long a call takes from its take until what it said is recorded (ms).
--
-- Past the reset, the next window's first call goes alone, a probe: its answer says what the
-- new window holds (the API may have changed its quota meanwhile) before the others start.  If
-- no word comes back within twice the rtt (at most a tenth of the quota's window), the others
-- start anyway, within LIMITS and the carried quotas: an API that stops announcing must not
-- stop the fleet.
--
-- With obey, the limits' spec carries the marker `h` (limits/limiter.py): every script that
-- opens them then keeps to `left` until reset_at, and carries each quota as one more window
-- term (field `q<D>` and its buckets: window_log.lua), so that the fleet does not burst into the
-- windows after reset_at.  None of them is a term of LIMITS: they only ever take room away.
--
-- include: limits/window_log.lua

-- A probe waits for its answer at least this long, at most this share of the quota's window.
local PROBE_MIN_MS = 20
local PROBE_SHARE = 0.1

local function heard_parse(value)
  local parts = {}
  for part in string.gmatch((value or '') .. ':', '([^:]*):') do parts[#parts + 1] = part end
  local H = {said = tonumber(parts[1]), left = tonumber(parts[2]) or 0,
             reset_at = tonumber(parts[3]) or 0, as_of = parts[4] or '', quotas = {},
             heard_at = tonumber(parts[6]) or 0, probed = parts[7] == '1',
             rtt = tonumber(parts[8]) or 0}
  for n, d in string.gmatch(parts[5] or '', '(%d+)/(%d+)') do
    H.quotas[#H.quotas + 1] = {n = tonumber(n), d = tonumber(d)}
  end
  return H
end

local function heard_quotas_text(quotas)
  local texts = {}
  for i, quota in ipairs(quotas) do texts[i] = string.format('%d/%d', quota.n, quota.d) end
  return table.concat(texts, ',')
end

local function heard_format(H)
  return string.format('%s:%d:%d:%s:%s:%d:%d:%d', H.said or '', H.left, H.reset_at, H.as_of,
                       heard_quotas_text(H.quotas), H.heard_at, H.probed and 1 or 0, H.rtt)
end

-- At the first look past the reset: one probe may start, and the rest wait for its word.
local function heard_probe(H, now)
  if H.probed or H.heard_at == 0 or H.reset_at > now then return end
  local most = 1000
  if H.quotas[1] ~= nil then most = H.quotas[1].d end
  H.probed = true
  H.left = 1
  H.reset_at = now + math.max(PROBE_MIN_MS, math.min(2 * H.rtt, math.floor(PROBE_SHARE * most)))
  H.dirty = true
end

-- Is the announced `left` still in force at `now`?
local function heard_active(H, now)
  return H ~= nil and H.reset_at > now
end

-- The window term that carries quota N/D: like a term of LIMITS, but named apart (`q<D>`), so
-- that a term of LIMITS with the same D keeps its own count.
local function heard_term(quota)
  local term = {kind = 'w', n = quota.n, d = quota.d, carried = true}
  term.w = math.ceil(term.d / WINDOW_BUCKETS)
  term.field = 'q' .. quota.d
  term.prefix = term.field .. ':'
  return term
end

-- Is announcement stamp `a` older than `b`?  Stamps are µs of Redis time, all of one length.
local function heard_older(a, b)
  return #a < #b or (#a == #b and a < b)
end
