-- A task message that cannot be read: acknowledge and delete it, and record it
-- as a problem of the run, as one step, so it is reported once and never
-- handed to a worker again.
-- KEYS: tasks, stats, events    ARGV: group, entry id, worker, what was wrong
local now = redis.call('TIME')
redis.call('HINCRBY', KEYS[2], 'malformed', 1)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 't', now[1] * 1000 + math.floor(now[2] / 1000),
           'k', 'malformed', 'w', ARGV[3], 'd', ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
