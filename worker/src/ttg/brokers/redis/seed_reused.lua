-- Record the outcomes of reused chunks (a run that reuses earlier runs' results) and
-- advance the seeding cursor past them, as one step: a seeder that died halfway, or two
-- racing, never counts a chunk twice (the batch is taken only when the cursor still
-- reads what the caller saw; HSETNX keeps the first outcome of a chunk in any case).
-- KEYS: meta, ledger, stats    ARGV: expected cursor, stop, then per chunk: chunk,
-- parameters, outcome json
local cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor') or '0')
if cursor ~= tonumber(ARGV[1]) then
  return cursor
end
local done, params = 0, 0
for b = 3, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[b], ARGV[b + 2]) == 1 then
    done = done + 1
    params = params + tonumber(ARGV[b + 1])
  end
end
if done > 0 then
  for _, field in ipairs({'done', 'finished'}) do
    redis.call('HINCRBY', KEYS[3], field, done)
  end
  for _, field in ipairs({'done_params', 'finished_params'}) do
    redis.call('HINCRBY', KEYS[3], field, params)
  end
end
local stop = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'cursor', stop)
if redis.call('HLEN', KEYS[2]) >= (tonumber(redis.call('HGET', KEYS[1], 'total')) or math.huge) then
  local now = redis.call('TIME')
  redis.call('HSETNX', KEYS[1], 'completed_at', now[1] * 1000 + math.floor(now[2] / 1000))
end
return stop
