-- Record a batch of chunk outcomes in the ledger and acknowledge their tasks, as one
-- step (invariant 3: every result is durable before, never after, its acknowledgement).
-- The first outcome of a chunk is counted; a later one is a duplicate: counted
-- separately, it changes no total (invariant 2). An outcome from before a
-- `ttg retry` of its chunk (an older round) is a duplicate too. The same record
-- sent again (same worker and attempt: a reply was lost) is recognised, never
-- counted twice.
-- KEYS: tasks, ledger, stats, meta, rounds, events, begun
-- ARGV: group, worker, count, then per item: "entry-id chunk round status params
--       parameter-errors" (one argument, space-separated), prefix of a re-sent record,
--       error, outcome json
-- Returns a code per item (1 counted, 0 duplicate, 2 sent before), or -1 when
-- the run was deleted meanwhile (nothing written).
if redis.call('EXISTS', KEYS[4]) == 0 then
  return -1
end
local group, worker, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local add = {done = 0, done_params = 0, dead = 0, errors = 0, param_errors = 0,
             duplicates = 0, failed = 0, finished = 0, finished_params = 0}
local codes, ids = {}, {}
for i = 0, count - 1 do
  local b = 4 + i * 4
  local id, chunk, round, status, params, perr =
    string.match(ARGV[b], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
  round, params, perr = tonumber(round), tonumber(params), tonumber(perr)
  local prefix, err = ARGV[b + 1], ARGV[b + 2]
  ids[#ids + 1] = id
  local code
  -- A round or a total that is not a number (garbage) reads as absent.
  if round < (tonumber(redis.call('HGET', KEYS[5], chunk)) or 0) then
    add.duplicates = add.duplicates + 1
    code = 0
  elseif redis.call('HSETNX', KEYS[2], chunk, ARGV[b + 3]) == 1 then
    if status == 'ok' then
      add.done = add.done + 1
      add.done_params = add.done_params + params
    elseif status == 'errors' then
      add.errors = add.errors + 1
      add.done_params = add.done_params + params - perr
      add.param_errors = add.param_errors + perr
    else
      add.dead = add.dead + 1
    end
    add.finished = add.finished + 1
    add.finished_params = add.finished_params + params
    if status ~= 'ok' then
      add.failed = add.failed + 1
      redis.call('XADD', KEYS[6], 'MAXLEN', '~', 10000, '*', 't', now_ms, 'k', 'failed',
                 'c', chunk, 'w', worker, 'd', err)
    end
    code = 1
  elseif string.sub(redis.call('HGET', KEYS[2], chunk), 1, #prefix) == prefix then
    code = 2
  else
    add.duplicates = add.duplicates + 1
    code = 0
  end
  codes[#codes + 1] = code
end
for field, n in pairs(add) do
  if n ~= 0 then
    redis.call('HINCRBY', KEYS[3], field, n)
  end
end
redis.call('XACK', KEYS[1], group, unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
redis.pcall('HDEL', KEYS[7], unpack(ids))  -- their begun marks (begin.lua)
if add.finished > 0 and redis.call('HLEN', KEYS[2]) >= (tonumber(redis.call('HGET', KEYS[4], 'total')) or math.huge) then
  redis.call('HSETNX', KEYS[4], 'completed_at', now_ms)
  -- Watchers (`ttg status --watch`) wake on it. Best effort: where the server's ACL
  -- refuses the channel, they see the run complete at their next read instead.
  redis.pcall('PUBLISH', KEYS[4] .. ':complete', now_ms)
end
return codes
