-- Move due retries from the delayed set back into the task stream, as one step.
-- KEYS: delayed, tasks, stats    ARGV: now ms, limit
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  local chunk, attempts = string.match(member, '^(%d+):(%d+)$')
  redis.call('XADD', KEYS[2], '*', 'c', chunk, 'a', attempts)
  redis.call('ZREM', KEYS[1], member)
end
if #due > 0 then
  redis.call('HINCRBY', KEYS[3], 'redelivered', #due)
end
return #due
