-- Give a task back (SIGTERM before the chunk finished, or read ahead and not
-- started): acknowledge the delivery and re-add the task with the same count of
-- earlier deliveries, as one step, so another worker takes it at once.
-- KEYS: tasks, stats, meta, events, begun
-- ARGV: group, entry id, chunk, earlier deliveries, round, worker[, why]
if redis.call('EXISTS', KEYS[3]) == 0 then
  return 0  -- the run was deleted meanwhile
end
local now = redis.call('TIME')
if ARGV[5] == '0' then
  redis.call('XADD', KEYS[1], '*', 'c', ARGV[3], 'a', ARGV[4])
else
  redis.call('XADD', KEYS[1], '*', 'c', ARGV[3], 'a', ARGV[4], 'g', ARGV[5])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.pcall('HDEL', KEYS[5], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'redelivered', 1)
local t = now[1] * 1000 + math.floor(now[2] / 1000)
if ARGV[7] then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, '*', 't', t, 'k', 'released', 'c', ARGV[3],
             'w', ARGV[6], 'd', ARGV[7])
else
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, '*', 't', t, 'k', 'released', 'c', ARGV[3],
             'w', ARGV[6])
end
return 1
