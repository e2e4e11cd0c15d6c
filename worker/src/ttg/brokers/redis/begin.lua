-- Mark a delivery begun: its compute starts now. Only a begun delivery counts
-- when its worker dies (reclaim.lua); a chunk read ahead and never begun comes
-- back with its count unchanged. Marked only while the entry is still pending
-- for this consumer: a worker that wakes up after its chunks were claimed by
-- another marks nothing of theirs.
-- KEYS: tasks, begun    ARGV: group, entry id, consumer
-- Returns 1 marked, 0 not ours any more, 2 the mark was refused (a full broker,
-- a begun key that is not a hash): the compute goes on, as before markers.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[3])
if #p == 0 then
  return 0
end
if type(redis.pcall('HSET', KEYS[2], ARGV[2], 1)) == 'table' then
  return 2
end
return 1
