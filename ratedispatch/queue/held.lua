-- The entries `consumer` holds in the id range `lo`..`hi`, as a set (id -> delivery count), in
-- one XPENDING.  Every move checks this first, so a late answer from a slow worker can never
-- move an entry someone else holds.  The reply holds only that consumer's entries in the range:
-- its calls in flight and what it just read, bounded by `most`.
local function held_by(stream, group, consumer, lo, hi, most)
  local held = {}
  for _, row in ipairs(redis.call('XPENDING', stream, group, lo, hi, most, consumer)) do
    held[row[1]] = row[4]
  end
  return held
end
