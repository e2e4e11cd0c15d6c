"""The raw ceiling of RabbitMQ for one pika client: publish with confirms, consume with acks.

No TTG code: one BlockingConnection publishes MESSAGES messages to a quorum
queue, each confirmed, then consumes and acks them, with prefetch 1 and 100.
The round-trip figure (publish + consume + ack per message, prefetch 1) is the
one TTG's per-chunk cost is compared with, as for Redis.
"""

from __future__ import annotations

import time

import pika

#: Messages per measurement.
MESSAGES = 5_000


def _consume(
    ch: pika.adapters.blocking_connection.BlockingChannel, queue: str, n: int, prefetch: int
) -> float:
    ch.basic_qos(prefetch_count=prefetch)
    t0 = time.perf_counter()
    for got, (method, _props, _body) in enumerate(ch.consume(queue, inactivity_timeout=5), 1):
        if method is None:
            break
        ch.basic_ack(method.delivery_tag)
        if got == n:
            break
    elapsed = time.perf_counter() - t0
    ch.cancel()
    return n / elapsed


def raw_ceiling(url: str, messages: int = MESSAGES) -> dict[str, float]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    queue = "bench.raw"
    ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_purge(queue)
    props = pika.BasicProperties(delivery_mode=2)

    def publish(n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            ch.basic_publish("", queue, str(i).encode(), props)
        return n / (time.perf_counter() - t0)

    publish_s = publish(messages)
    consume_1 = _consume(ch, queue, messages, prefetch=1)
    publish(messages)
    consume_100 = _consume(ch, queue, messages, prefetch=100)
    # One message's whole trip, as a queue needs it: confirmed publish, delivery, ack.
    msgs_s = 1 / (1 / publish_s + 1 / consume_1)
    ch.queue_delete(queue)
    conn.close()
    return {
        "msgs_s": msgs_s,
        "publish_confirmed_s": publish_s,
        "consume_prefetch_1_s": consume_1,
        "consume_prefetch_100_s": consume_100,
    }
