-- A compute error with deliveries left: move the task from the stream to the
-- delayed set, due at ARGV[4] (ms), as one step, so it is neither lost nor
-- requeued hot. A chunk that meanwhile got an outcome is simply acknowledged.
-- KEYS: tasks, delayed, stats, ledger, spec    ARGV: group, entry id, chunk, due ms, attempt
if redis.call('EXISTS', KEYS[5]) == 0 then
  return 0  -- the run was deleted meanwhile
end
redis.call('HINCRBY', KEYS[3], 'failed', 1)
if redis.call('HEXISTS', KEYS[4], ARGV[3]) == 0 then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3] .. ':' .. ARGV[5])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
