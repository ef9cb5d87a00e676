-- Move entries this consumer holds but did not just read (`kept`: taken over from a dead worker;
-- `reread`: left by a previous process of the same name) into the priority index.  Their
-- delivery count, the attempts already made, is kept (see defer in common.lua).
--
-- KEYS: stream, deferred
-- ARGV: group, me, waiting consumer, pending bound, mode, members...
-- Returns how many moved
local stream, deferred = KEYS[1], KEYS[2]
local group, me, waiting, most, mode = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local members = {}
for i = 6, #ARGV do members[#members + 1] = ARGV[i] end
return defer(stream, deferred, group, me, waiting, members, mode, most)
