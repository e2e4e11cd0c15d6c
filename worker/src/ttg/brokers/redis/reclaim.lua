-- Take over the pending tasks of a consumer whose lease has expired, as one step,
-- so two live workers can never both claim them. A consumer whose lease is
-- current is left alone (invariant 5), and a claimer without a current lease of
-- its own claims nothing: a worker that could not renew its lease may be the
-- one that is cut off.
-- Only an entry the dead consumer had begun (begin.lua) counts a delivery: one
-- it had read ahead and never begun is claimed with its count unchanged
-- (RETRYCOUNT), so a worker killed again and again never walks healthy chunks
-- to the dead letters. A marker that cannot be read counts, as before markers.
-- KEYS: tasks, leases, stats, events, begun
-- ARGV: group, dead consumer, claiming consumer, max entries
-- Returns {entry id, {field, value, ...}, deliveries} for each claimed task.
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local group, dead, me = ARGV[1], ARGV[2], ARGV[3]
local mine = tonumber(redis.call('ZSCORE', KEYS[2], me) or '0')
local theirs = tonumber(redis.call('ZSCORE', KEYS[2], dead) or '0')
if mine <= now_ms or theirs > now_ms then
  return {}
end
local pending = redis.call('XPENDING', KEYS[1], group, '-', '+', ARGV[4], dead)
local out = {}
if #pending > 0 then
  local ids = {}
  for i, p in ipairs(pending) do
    local id, count = p[1], tonumber(p[4])
    ids[i] = id
    local begun = redis.pcall('HEXISTS', KEYS[5], id)
    local claimed
    if begun == 0 then
      claimed = redis.call('XCLAIM', KEYS[1], group, me, 0, id, 'RETRYCOUNT', count)
    else
      count = count + 1
      claimed = redis.call('XCLAIM', KEYS[1], group, me, 0, id)
    end
    local entry = claimed[1]
    if entry and entry[2] then
      out[#out + 1] = {entry[1], entry[2], count}
      local chunk = ''
      for j = 1, #entry[2], 2 do
        if entry[2][j] == 'c' then chunk = entry[2][j + 1] end
      end
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, '*', 't', now_ms, 'k', 'redelivered',
                 'c', chunk, 'w', me, 'p', dead)
    end
  end
  -- Ours now, and not begun by us yet.
  redis.pcall('HDEL', KEYS[5], unpack(ids))
  redis.call('HINCRBY', KEYS[3], 'redelivered', #out)
end
-- Forget the consumer only once it holds nothing: DELCONSUMER drops its pending list.
if #redis.call('XPENDING', KEYS[1], group, '-', '+', 1, dead) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, dead)
  redis.call('ZREM', KEYS[2], dead)
end
return out
