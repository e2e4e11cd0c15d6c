-- Publish chunks [cursor, stop) of a run and advance its seeding cursor, as one step.
-- A seeder that died halfway, or two seeders racing, can never publish a chunk
-- twice: the batch is only added when the cursor still reads what the caller saw.
-- KEYS: meta, tasks    ARGV: expected cursor, stop
local cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor') or '0')
if cursor ~= tonumber(ARGV[1]) then
  return cursor
end
local stop = tonumber(ARGV[2])
for chunk = cursor, stop - 1 do
  redis.call('XADD', KEYS[2], '*', 'c', chunk, 'a', 0)
end
redis.call('HSET', KEYS[1], 'cursor', stop)
return stop
