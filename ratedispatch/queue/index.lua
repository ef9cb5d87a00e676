-- Index entries this consumer holds but did not just read: taken over from a dead worker, or left
-- by a previous process of the same name and read again.  Their delivery count, the attempts
-- already made, is kept (see index_entries).
--
-- KEYS[1] stream: the task stream
-- KEYS[2] index: the priority index (unused for an API with a key_field)
-- ARGV[1] group: the consumer group
-- ARGV[2] me: this worker's consumer
-- ARGV[3] waiting: the waiting consumer, which holds every indexed entry
-- ARGV[4] pending_bound: the most pending entries of one consumer to list
-- ARGV[5] reread: 1 when the entries were read again from id 0 (one delivery too many), else 0
-- ARGV[6] prefix: the API's key prefix when it has a key_field (queue/keyed.lua), else ''
-- ARGV[7..] members: the entries' index members
-- Returns how many were indexed (those no longer ours stay where they are).
--
-- include: queue/indexing.lua
local stream, index = KEYS[1], KEYS[2]
local group, me, waiting = ARGV[1], ARGV[2], ARGV[3]
local pending_bound = tonumber(ARGV[4])
local reread = ARGV[5] == '1'
local prefix = ARGV[6]
local members = {}
for i = 7, #ARGV do members[#members + 1] = ARGV[i] end

local count = 'kept'
if reread then count = 'reread' end
return index_entries(stream, index, group, me, waiting, members, count, pending_bound, prefix)
