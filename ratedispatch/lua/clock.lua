-- Redis's clock: the only clock ratedispatch trusts; workers' clocks may be off by any amount.

-- Now, in milliseconds.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Now once for a whole take: in ms, and in microseconds as a stamp that names its slots.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
         t[1] .. string.format('%06d', tonumber(t[2]))
end
