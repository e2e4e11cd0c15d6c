-- Renew a consumer's lease in one run: its expiry, in the server's own clock,
-- so workers on machines whose clocks disagree still agree on who is alive.
-- KEYS: leases    ARGV: consumer, ttl ms
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2]), ARGV[1])
return 1
