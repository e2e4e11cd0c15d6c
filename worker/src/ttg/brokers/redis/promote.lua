-- Move due retries from the delayed set back into the task stream, as one step.
-- KEYS: delayed, tasks, stats    ARGV: limit
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, ARGV[1])
for _, member in ipairs(due) do
  local chunk, attempts, round = string.match(member, '^(%d+):(%d+):(%d+)$')
  if round == '0' then
    redis.call('XADD', KEYS[2], '*', 'c', chunk, 'a', attempts)
  else
    redis.call('XADD', KEYS[2], '*', 'c', chunk, 'a', attempts, 'g', round)
  end
  redis.call('ZREM', KEYS[1], member)
end
if #due > 0 then
  redis.call('HINCRBY', KEYS[3], 'redelivered', #due)
end
return #due
