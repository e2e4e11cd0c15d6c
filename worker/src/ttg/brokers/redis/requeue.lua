-- `ttg retry`: re-queue chunks whose outcome is dead or holds parameter errors,
-- as one step per batch. Their old outcome leaves the count and goes to the
-- run's history; the chunk's round moves on, so a late result from before is a
-- duplicate; the task keeps its count of earlier deliveries (attempts go on).
-- KEYS: ledger, stats, tasks, rounds, meta, history, events
-- ARGV: round, want dead (0|1), want errors (0|1), chunk ids...
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local round = ARGV[1]
local want = {dead = ARGV[2] == '1', errors = ARGV[3] == '1'}
local n_dead, n_errors = 0, 0
for i = 4, #ARGV do
  local chunk = ARGV[i]
  local text = redis.call('HGET', KEYS[1], chunk)
  -- An entry that does not decode, or lacks what the tallies need, is garbage:
  -- left where it is (verify reports it), never a reason to fail the others.
  local ok, o = false, nil
  if text then ok, o = pcall(cjson.decode, text) end
  if ok and type(o) == 'table' and want[o.s] and tonumber(o.n) and tonumber(o.a) then
    local perr = 0
    if type(o.pe) == 'table' then perr = #o.pe end
    if o.s == 'dead' then
      n_dead = n_dead + 1
      redis.call('HINCRBY', KEYS[2], 'dead', -1)
    else
      n_errors = n_errors + 1
      redis.call('HINCRBY', KEYS[2], 'errors', -1)
      redis.call('HINCRBY', KEYS[2], 'done_params', perr - o.n)
      redis.call('HINCRBY', KEYS[2], 'param_errors', -perr)
      redis.call('HINCRBY', KEYS[2], 'retried_params', o.n - perr)
    end
    -- What left the counts, kept: finished + retried only grows (the exporter's counters).
    redis.call('HINCRBY', KEYS[2], 'retried', 1)
    redis.call('RPUSH', KEYS[6], chunk .. ' ' .. text)
    redis.call('HDEL', KEYS[1], chunk)
    redis.call('HSET', KEYS[4], chunk, round)
    redis.call('XADD', KEYS[3], '*', 'c', chunk, 'a', o.a, 'g', round)
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', 10000, '*', 't', now_ms, 'k', 'retry', 'c', chunk)
  end
end
if n_dead + n_errors > 0 then
  redis.call('HDEL', KEYS[5], 'completed_at')
end
return {n_dead, n_errors}
