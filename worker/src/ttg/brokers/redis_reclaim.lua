-- Take over the pending tasks of a consumer whose heartbeat key has expired.
-- Done as one step so two live workers can never both claim (and so steal from
-- each other); a consumer whose heartbeat is back is left alone (invariant 5).
-- KEYS: tasks, heartbeat key of the dead consumer, stats
-- ARGV: group, dead consumer, claiming consumer, max entries
-- Returns {entry id, {field, value, ...}, deliveries} for each claimed task.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {}
end
local group, dead, me = ARGV[1], ARGV[2], ARGV[3]
local pending = redis.call('XPENDING', KEYS[1], group, '-', '+', ARGV[4], dead)
local out = {}
if #pending > 0 then
  local ids, seen = {}, {}
  for i, p in ipairs(pending) do
    ids[i] = p[1]
    seen[p[1]] = p[4]
  end
  for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], group, me, 0, unpack(ids))) do
    if entry then
      out[#out + 1] = {entry[1], entry[2], seen[entry[1]] + 1}
    end
  end
  redis.call('HINCRBY', KEYS[3], 'redelivered', #out)
end
-- Forget the consumer only once it holds nothing: DELCONSUMER drops its pending list.
if #redis.call('XPENDING', KEYS[1], group, '-', '+', 1, dead) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, dead)
end
return out
