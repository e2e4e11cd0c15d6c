"""Broker clusters on this machine: several real nodes, each with its own ports and data.

``RedisCluster`` is three (or more) Redis masters joined by ``redis-cli
--cluster create``; ``RabbitMQCluster`` is three RabbitMQ nodes joined with
``rabbitmqctl join_cluster``, with an ``epmd`` of their own. Either can lose a
node to ``kill(i)``, which is what the node-loss tests and benchmarks do.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from ttg.errors import UsageError
from ttg.processes import RabbitMQNode, RedisServer, free_port, wait_port

#: How long a cluster may take to agree that it is whole, seconds.
FORM_TIMEOUT = 60.0


class RedisCluster:
    """``masters`` Redis masters (AOF on) sharing the 16384 slots, each with ``replicas``.

    Each node has its own client port, cluster-bus port and data directory.
    With no replicas, a killed master's slots are unavailable until it is
    restarted (``restart(i)``: same port and directory, so its AOF brings back
    everything it acknowledged); with replicas, one of its replicas takes over
    once the master has been silent for the node timeout (2 s here).
    """

    def __init__(self, masters: int = 3, *, replicas: int = 0, appendonly: bool = True) -> None:
        if masters < 3:
            raise UsageError("a Redis Cluster needs at least 3 masters")
        self.replicas = replicas
        self.cli = shutil.which("redis-cli")
        if not self.cli:
            raise UsageError("redis-cli not found on PATH (apt-get install redis-tools)")
        self.nodes = []
        for _ in range(masters * (1 + replicas)):
            bus = free_port()
            node = RedisServer(appendonly=appendonly)
            node.extra_args = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node.dir / "nodes.conf"),
                # The bus port is port+10000 unless told: that one may be taken.
                "--cluster-port", str(bus),
                # A dead master is declared failed quickly (clients get CLUSTERDOWN,
                # not timeouts); with no replicas nothing fails over anyway.
                "--cluster-node-timeout", "2000",
                # Slots of the living masters keep serving while one is down.
                "--cluster-require-full-coverage", "no",
                # A replica's first sync starts at once, not after the default 5 s.
                "--repl-diskless-sync-delay", "0",
            )  # fmt: skip
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed (any one is enough to find the rest)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def redis_cli(self, node: int, *args: str) -> str:
        """``redis-cli ARGS`` against node ``node``; its output."""
        proc = subprocess.run(
            [str(self.cli), "-h", "127.0.0.1", "-p", str(self.nodes[node].port), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return proc.stdout

    def start(self) -> RedisCluster:
        """Start every node, assign the slots, and return once every node sees the cluster ok."""
        for node in self.nodes:
            node.start()
        if not (self.nodes[0].dir / "nodes.conf").exists() or "cluster_state:ok" not in (
            self.redis_cli(0, "cluster", "info")
        ):
            subprocess.run(
                [
                    str(self.cli), "--cluster", "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas", str(self.replicas), "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )  # fmt: skip
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = FORM_TIMEOUT) -> None:
        """Return once every living node reports ``cluster_state:ok`` and every living
        replica is in sync with its master (a replica that never synced cannot take over).

        Raises:
            TimeoutError: it did not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        for i, node in enumerate(self.nodes):
            if node.proc is None or node.proc.poll() is not None:
                continue
            while not self._node_ok(i):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis cluster node {i} not ok after {timeout}s")
                time.sleep(0.05)

    def _node_ok(self, node: int) -> bool:
        if "cluster_state:ok" not in self.redis_cli(node, "cluster", "info"):
            return False
        replication = self.redis_cli(node, "info", "replication")
        return "role:slave" not in replication or "master_link_status:up" in replication

    def master_of(self, slot: int) -> int:
        """Index of the node serving ``slot`` (as a living node sees it)."""
        for line in self.redis_cli(self._living(), "cluster", "nodes").splitlines():
            fields = line.split()
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for spec in fields[8:]:
                lo, _, hi = spec.partition("-")
                if not lo.isdigit():
                    continue  # a slot being migrated: "[slot->-node]"
                if int(lo) <= slot <= int(hi or lo):
                    return [n.port for n in self.nodes].index(port)
        raise LookupError(f"no node serves slot {slot}")

    def keyslot(self, key: str) -> int:
        """The slot of ``key`` (``CLUSTER KEYSLOT``)."""
        return int(self.redis_cli(self._living(), "cluster", "keyslot", key).strip())

    def _living(self) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.proc and n.proc.poll() is None)

    def kill(self, node: int, sig: int = signal.SIGKILL) -> None:
        """Signal node ``node`` (SIGKILL by default) and wait for it to exit."""
        self.nodes[node].kill(sig)

    def restart(self, node: int | None = None) -> None:
        """SIGKILL and restart one node, or every node; return once the cluster is ok again."""
        for i in range(len(self.nodes)) if node is None else (node,):
            self.nodes[i].restart()
        self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RabbitMQCluster:
    """``size`` RabbitMQ nodes of one cluster, with an Erlang cookie and an ``epmd`` of their own.

    The nodes boot in parallel as blank nodes; every node but the first then
    joins the first (``stop_app``, ``join_cluster``, ``start_app``). Quorum
    queues and streams declared afterwards get a member on every node, so the
    cluster keeps every acknowledged message with one node down.
    """

    def __init__(self, size: int = 3, **node_options: object) -> None:
        if size < 1:
            raise UsageError("a cluster needs at least one node")
        cookie = uuid.uuid4().hex.upper()
        self.nodes = [RabbitMQNode(cookie=cookie, **node_options) for _ in range(size)]  # type: ignore[arg-type]
        # Our own name service: a node that dies must not take the machine's
        # epmd (or another test's) with it, nor depend on one being there.
        self.epmd_port = free_port()
        for node in self.nodes:
            node.extra_env["ERL_EPMD_PORT"] = str(self.epmd_port)
        self.epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what TTG is given for a cluster."""
        return ",".join(n.url for n in self.nodes)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def start(self, timeout: float = 120, *, joined: int | None = None) -> RabbitMQCluster:
        """Boot every node, join them into one cluster; return once all of them run in it.

        With ``joined``, only the first ``joined`` nodes form the cluster; the
        others run alone, blank, until ``join(i)`` (a cluster still forming).
        """
        epmd = shutil.which("epmd") or _erlang_epmd()
        self.epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.epmd_port, timeout=10)
        joined = len(self.nodes) if joined is None else joined
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_started(timeout)
            for i in range(1, joined):
                self.join(i)
            self.nodes[0].ctl_run("await_online_nodes", str(joined), "--timeout", str(int(timeout)))
        except BaseException:
            self.stop()
            raise
        return self

    def join(self, i: int) -> None:
        """Node ``i`` (running alone) joins node 0's cluster and starts again in it."""
        node = self.nodes[i]
        node.ctl_run("stop_app")
        node.ctl_run("join_cluster", self.nodes[0].name)
        node.ctl_run("start_app")

    def kill(self, node: int, sig: int = signal.SIGKILL) -> None:
        """Signal node ``node``'s whole process group (SIGKILL by default)."""
        self.nodes[node].kill(sig)

    def running(self) -> list[int]:
        """Indexes of the nodes whose process is alive."""
        return [i for i, n in enumerate(self.nodes) if n.proc is not None and n.proc.poll() is None]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.epmd.wait(timeout=10)
            if self.epmd.poll() is None:
                self.epmd.kill()
                self.epmd.wait()


def _erlang_epmd() -> str:
    """Debian keeps ``epmd`` inside the Erlang runtime's directory, off PATH."""
    found = sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))
    if not found:
        raise UsageError("epmd not found (apt-get install erlang-base)")
    return str(found[-1])
