"""Broker clusters: throughput beside one node, and the time from a node's death to progress.

    .venv/bin/python bench/node_loss.py            # 3 trials per cluster (~3 min on 2 cores)
    .venv/bin/python bench/node_loss.py --trials 1

- RabbitMQ: 3 nodes of one cluster (``ttg.processes.cluster.RabbitMQCluster``), 3
  workers given all three URLs. At 30% of a run the node most workers are
  connected to is SIGKILLed; it is restarted (it rejoins) before the next trial.
- Redis Cluster: 3 masters with one replica each. At 30% the master holding the
  run's slot is SIGKILLed; its replica takes over after the cluster's node
  timeout (2 s here). (With no replicas a master's runs wait for its restart.)

The run's progress is read in this process every 20 ms (``ttg.scenario``'s
``kill_broker_node_at``, the code the fault test uses with ``ttg status``
processes), so the figure's resolution is a status read here, not a process
start. Every run is verified. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Target, spec, sweep

from ttg import scenario
from ttg.brokers.redis.client import key
from ttg.endpoint import open_broker
from ttg.processes import LocalWorkers, RabbitMQNode, RedisServer
from ttg.processes.cluster import RabbitMQCluster, RedisCluster
from ttg.verify import status_report, verify

WORKERS = 3
#: Parameters of the throughput sweep, on the cluster and on one node.
THROUGHPUT_PARAMS = 500_000
#: One trial's run: 240 chunks of 100 ms, about 8 s of work for 3 workers.
PARAMS, CHUNK, WORK_MS = 24_000, 100, 100


def trial(
    backend: str, url: str, run: str, kill_node: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Seed, start workers, kill a node at 30% (``kill_node(status) -> name``), verify."""
    broker = open_broker(backend, url)
    broker.seed(spec(run, PARAMS, CHUNK, work_ms=WORK_MS))
    pool = LocalWorkers({"TTG_BACKEND": backend, "TTG_BROKER_URL": url, "TTG_METRICS_PORT": "0"})
    pool.start(WORKERS)
    try:
        record = scenario.kill_broker_node_at(
            lambda: status_report(broker.progress(run)), kill_node, 0.3, poll=0.02
        )
        scenario.wait_complete(lambda: status_report(broker.progress(run)), timeout=300)
        report = verify(broker, run)
        alive = len(pool.alive())
    finally:
        pool.stop()
        broker.close()
    return {
        "node": record.node,
        "progress_again_s": record.progress_again_s,
        "status_read_s": record.status_read_s,
        "verified": bool(report["ok"]),
        "duplicates": report["duplicates"],
        "workers_alive": alive,
    }


def target(backend: str, url: str) -> Target:
    """What ``run.sweep`` needs of a broker (the cluster is started and stopped here)."""
    return Target(backend, url, lambda: None, lambda _url: {}, lambda: None)


def single_node(backend: str, prefetch: int) -> dict[str, float]:
    """The same sweep on one node, started here: the figure the cluster's stands beside."""
    node = RabbitMQNode().start() if backend == "rabbitmq" else RedisServer().start()
    try:
        return sweep(
            target(backend, node.url), "bench-big", THROUGHPUT_PARAMS, 100, prefetch=prefetch
        )
    finally:
        node.stop()


def rabbitmq(trials: int) -> dict[str, Any]:
    print("[rabbitmq] one node, throughput ...", file=sys.stderr, flush=True)
    one = single_node("rabbitmq", 50)
    print("[rabbitmq cluster] throughput ...", file=sys.stderr, flush=True)
    cluster = RabbitMQCluster(3).start()
    ports = [n.port for n in cluster.nodes]
    try:
        out: dict[str, Any] = {
            "throughput": sweep(
                target("rabbitmq", cluster.url), "bench-big", THROUGHPUT_PARAMS, 100, prefetch=50
            ),
            "single_node": one,
        }
        results = []
        for i in range(trials):

            def kill_busiest(_s: dict[str, Any]) -> str:
                listed = json.loads(
                    cluster.nodes[cluster.running()[0]].ctl_run(
                        "list_connections", "port", "--formatter", "json"
                    )
                )
                load = [sum(c["port"] == p for c in listed) for p in ports]
                victim = max(cluster.running(), key=lambda n: load[n])
                cluster.kill(victim)
                return cluster.names[victim]

            print(f"[rabbitmq cluster] node loss, trial {i + 1} ...", file=sys.stderr, flush=True)
            results.append(trial("rabbitmq", cluster.url, f"bench-loss-{i}", kill_busiest))
            dead = cluster.names.index(results[-1]["node"])
            cluster.nodes[dead].start()  # it rejoins: it remembers its cluster
            cluster.nodes[0 if dead else 1].ctl_run("await_online_nodes", "3")
        out["trials"] = results
        return out
    finally:
        cluster.stop()


def redis(trials: int) -> dict[str, Any]:
    print("[redis] one node, throughput ...", file=sys.stderr, flush=True)
    one = single_node("redis", 1)
    print("[redis cluster] throughput ...", file=sys.stderr, flush=True)
    cluster = RedisCluster(3, replicas=1).start()
    try:
        out: dict[str, Any] = {
            "throughput": sweep(
                target("redis", cluster.url), "bench-big", THROUGHPUT_PARAMS, 100, prefetch=1
            ),
            "single_node": one,
        }
        results = []
        for i in range(trials):
            run = f"bench-loss-{i}"

            def kill_master(_s: dict[str, Any], run: str = run) -> str:
                victim = cluster.master_of(cluster.keyslot(key(run, "tasks")))
                cluster.kill(victim)
                return f"127.0.0.1:{cluster.nodes[victim].port}"

            print(f"[redis cluster] master loss, trial {i + 1} ...", file=sys.stderr, flush=True)
            results.append(trial("redis", cluster.url, run, kill_master))
            # Back as a replica of the master that replaced it.
            dead = [n.port for n in cluster.nodes].index(int(results[-1]["node"].split(":")[1]))
            cluster.nodes[dead].start()
            deadline = time.monotonic() + 60
            # It comes back believing it is a master; wait until it is a synced replica.
            while "master_link_status:up" not in cluster.redis_cli(dead, "info", "replication"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the restarted master did not become a synced replica")
                time.sleep(0.1)
            cluster.wait_ok()
        out["trials"] = results
        return out
    finally:
        cluster.stop()


def summary(name: str, r: dict[str, Any]) -> str:
    t = r["trials"]
    again = [x["progress_again_s"] for x in t]
    return (
        f"{name}: {r['throughput']['params_s']:,.0f} params/s (one node: "
        f"{r['single_node']['params_s']:,.0f}; {THROUGHPUT_PARAMS:,} params, chunks of 100, "
        f"2 workers); node death -> progress again: median {statistics.median(again):.2f} s, "
        f"max {max(again):.2f} s over {len(t)} trials (status read {t[0]['status_read_s']:.2f} s); "
        f"verified {sum(x['verified'] for x in t)}/{len(t)}, workers alive "
        f"{min(x['workers_alive'] for x in t)}/{WORKERS}, duplicates absorbed "
        f"{sum(x['duplicates'] for x in t)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--backend", choices=("redis", "rabbitmq", "all"), default="all")
    parser.add_argument("--json", help="also write the raw figures to this file")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    print(f"TTG node-loss bench, {time.strftime('%Y-%m-%d')}", flush=True)
    if args.backend in ("all", "rabbitmq"):
        name = "rabbitmq 3-node cluster"
        results[name] = rabbitmq(args.trials)
        print(summary(name, results[name]), flush=True)
    if args.backend in ("all", "redis"):
        name = "redis cluster 3 masters + 3 replicas"
        results[name] = redis(args.trials)
        print(summary(name, results[name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
