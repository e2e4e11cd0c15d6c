"""The raw ceiling of Redis Streams for one client: XADD, XREADGROUP, XACK round trips.

No TTG code: this is what one redis-py client achieves doing the three round
trips a queue needs per message, one message at a time. TTG's per-chunk cost
is compared against it.
"""

from __future__ import annotations

import time

import redis

#: Messages per measurement (after a warm-up of a tenth of that).
MESSAGES = 10_000


def raw_ceiling(url: str, messages: int = MESSAGES) -> dict[str, float]:
    client = redis.Redis.from_url(url, decode_responses=True)
    stream, group = "bench:raw", "g"
    client.delete(stream)
    client.xgroup_create(stream, group, id="0", mkstream=True)

    def loop(n: int) -> None:
        for i in range(n):
            client.xadd(stream, {"c": i, "a": 0})
            reply = client.xreadgroup(group, "c1", {stream: ">"}, count=1)
            entry_id = reply[0][1][0][0]
            client.xack(stream, group, entry_id)

    loop(messages // 10)
    t0 = time.perf_counter()
    loop(messages)
    elapsed = time.perf_counter() - t0
    client.delete(stream)
    client.close()
    return {"msgs_s": messages / elapsed, "us_per_msg": 1e6 * elapsed / messages}
