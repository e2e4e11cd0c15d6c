-- A failure worth retrying: move the task from the stream to the delayed set, due
-- in ARGV[4] ms, as one step, so it is neither lost nor requeued hot. A chunk
-- that meanwhile got an outcome is simply acknowledged.
-- KEYS: tasks, delayed, stats, ledger, meta, events, begun
-- ARGV: group, entry id, chunk, delay ms, attempt, round, worker, error
if redis.call('EXISTS', KEYS[5]) == 0 then
  return 0  -- the run was deleted meanwhile
end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('HINCRBY', KEYS[3], 'failed', 1)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', 10000, '*', 't', now_ms, 'k', 'failed',
           'c', ARGV[3], 'w', ARGV[7], 'd', ARGV[8])
if redis.call('HEXISTS', KEYS[4], ARGV[3]) == 0 then
  redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[4]), ARGV[3] .. ':' .. ARGV[5] .. ':' .. ARGV[6])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.pcall('HDEL', KEYS[7], ARGV[2])
return 1
