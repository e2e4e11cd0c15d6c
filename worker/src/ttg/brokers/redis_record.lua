-- Record a chunk's outcome in the ledger and acknowledge its task, as one step
-- (invariant 3: the result is durable before, never after, the acknowledgement).
-- The first outcome of a chunk is counted; any later one is a duplicate: counted
-- separately, it changes no total (invariant 2). A retry of the same delivery's
-- record (same worker, same attempt: the reply was lost) is recognised, not a duplicate.
-- KEYS: tasks, ledger, stats, live-runs set, spec
-- ARGV: group, entry id, chunk, outcome json, status (ok|dead), params, total chunks,
--       run, worker, attempt, failed increment
-- Returns 1 counted, 0 duplicate, 2 already recorded by this very delivery,
-- -1 the run was deleted meanwhile (nothing written).
local group, id, chunk, outcome, status = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', KEYS[5]) == 0 then
  return -1
end
local result
if redis.call('HSETNX', KEYS[2], chunk, outcome) == 1 then
  if status == 'ok' then
    redis.call('HINCRBY', KEYS[3], 'done', 1)
    redis.call('HINCRBY', KEYS[3], 'done_params', ARGV[6])
  else
    redis.call('HINCRBY', KEYS[3], 'dead', 1)
  end
  if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[7]) then
    redis.call('SREM', KEYS[4], ARGV[8])
  end
  result = 1
else
  local prev = cjson.decode(redis.call('HGET', KEYS[2], chunk))
  if prev.w == ARGV[9] and tostring(prev.a) == ARGV[10] then
    result = 2
  else
    redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
    result = 0
  end
end
if ARGV[11] ~= '0' then
  redis.call('HINCRBY', KEYS[3], 'failed', ARGV[11])
end
redis.call('XACK', KEYS[1], group, id)
redis.call('XDEL', KEYS[1], id)
return result
