-- Give a task back (SIGTERM before the chunk finished, or read ahead and not
-- started): acknowledge the delivery and re-add the task with the same count of
-- earlier deliveries, as one step, so another worker takes it at once.
-- KEYS: tasks, stats, spec    ARGV: group, entry id, chunk, earlier deliveries
if redis.call('EXISTS', KEYS[3]) == 0 then
  return 0  -- the run was deleted meanwhile
end
redis.call('XADD', KEYS[1], '*', 'c', ARGV[3], 'a', ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'redelivered', 1)
return 1
