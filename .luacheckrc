-- luacheck's view of the Lua that Redis runs: Lua 5.1 with Redis's globals.  A script's includes
-- (its `-- include: path` lines, resolved as ratedispatch/scripts.py resolves them) define the
-- local functions and constants it uses: here they are read-only globals of the script, and an
-- include's own definitions are not "unused" (the scripts that include it use them).
std = "lua51"
max_line_length = 100
read_globals = {"redis", "KEYS", "ARGV", "cjson", "cmsgpack", "bit", "struct"}
files = {}

local PACKAGE = "ratedispatch/"

local function lines_of(path)
  local out = {}
  local file = io.open(PACKAGE .. path)
  if file then
    for line in file:lines() do out[#out + 1] = line end
    file:close()
  end
  return out
end

local function includes_of(path)
  local found = {}
  for _, line in ipairs(lines_of(path)) do
    local include = line:match("^%-%-%s*include:%s*(%S+)%s*$")
    if include then found[#found + 1] = include end
  end
  return found
end

-- The names an include defines at its top level, and those of everything it includes.
local function names_from(path, seen, names)
  if seen[path] then return end
  seen[path] = true
  for _, include in ipairs(includes_of(path)) do names_from(include, seen, names) end
  for _, line in ipairs(lines_of(path)) do
    local name = line:match("^local%s+function%s+([%w_]+)")
    if name then names[#names + 1] = name end
    local list = line:match("^local%s+([%w_,%s]+)=")
    if list then
      for each in list:gmatch("[%w_]+") do names[#names + 1] = each end
    end
  end
end

local listing = io.popen("cd " .. PACKAGE .. " && find . -name '*.lua'")
for found in listing:lines() do
  local path = found:gsub("^%./", "")
  local names, seen = {}, {}
  for _, include in ipairs(includes_of(path)) do names_from(include, seen, names) end
  local is_script = false
  for _, line in ipairs(lines_of(path)) do
    if line:match("^%-%-%s*[KA][ER][YG][SV]%[") then is_script = true end
  end
  files[PACKAGE .. path] = {read_globals = names, ignore = is_script and {} or {"211"}}
end
listing:close()
