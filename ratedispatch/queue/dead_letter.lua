-- A dead letter is the task's own fields, then these five, in this order (and `fields_dropped`
-- before them when a hostile entry had to be cut short).  bury.lua writes them; requeue.lua
-- strips them to put the task back as its producer wrote it.
local LETTER_FIELDS = {'original_id', 'reason', 'attempts', 'last_status', 'failed_at'}

-- Lua's unpack() stops near 8000 values: a dead letter keeps at most this many original fields
-- (the parser refuses entries with more than 1000, so only a hostile entry comes near it).
local MAX_LETTER_FIELDS = 3900

-- The dead letter's fields for an entry's `fields` (flat), with `values` for LETTER_FIELDS.
local function letter_of(fields, values)
  local letter = {}
  local kept = math.min(#fields, 2 * MAX_LETTER_FIELDS)
  for i = 1, kept do letter[i] = fields[i] end
  if #fields > kept then
    letter[#letter + 1] = 'fields_dropped'
    letter[#letter + 1] = tostring((#fields - kept) / 2)
  end
  for i, name in ipairs(LETTER_FIELDS) do
    letter[#letter + 1] = name
    letter[#letter + 1] = values[i]
  end
  return letter
end

-- The task's own fields in a dead letter's flat `fields`: those before the ones bury.lua added.
-- A letter that does not end with them (written by someone else) is taken whole.
local function original_of(fields)
  local n, added = #fields, 2 * #LETTER_FIELDS
  local keep = n
  if n >= added then
    keep = n - added
    for i, name in ipairs(LETTER_FIELDS) do
      if fields[keep + 2 * i - 1] ~= name then
        keep = n
        break
      end
    end
  end
  if keep < n and keep >= 2 and fields[keep - 1] == 'fields_dropped' then
    keep = keep - 2
  end
  local original = {}
  for i = 1, keep do original[i] = fields[i] end
  return original
end
