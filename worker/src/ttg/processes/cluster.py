"""Broker clusters on this machine: several real nodes, each with its own ports and data.

``RedisCluster`` is three (or more) Redis masters joined by ``redis-cli
--cluster create``; ``RedisSentinels`` is one Redis master, replicas following
it and sentinels that promote a replica when it dies; ``RabbitMQCluster`` is
three RabbitMQ nodes joined with ``rabbitmqctl join_cluster``, with an ``epmd``
of their own. Each can lose a node to ``kill(i)``, which is what the node-loss
tests and benchmarks do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

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


class RedisSentinels:
    """A Redis master, ``replicas`` replicas following it, and ``sentinels`` sentinels.

    What the chart runs with ``redis.replicas`` > 1, as local processes. The
    sentinels (``redis-server --sentinel``, a majority quorum) promote a
    replica once the master has been silent for ``down_after_ms``; TTG finds
    the master through them (``redis+sentinel://``). With ``password`` every
    node and sentinel requires it. A master accepts writes only while one
    replica is connected and less than 10 s behind (``min-replicas-to-write``), so a
    master cut off from the others stops taking writes it would lose.
    """

    def __init__(
        self,
        replicas: int = 2,
        sentinels: int = 3,
        *,
        name: str = "ttg",
        password: str | None = None,
        down_after_ms: int = 1000,
        appendonly: bool = True,
    ) -> None:
        if replicas < 1 or sentinels < 1:
            raise UsageError("Redis with sentinels needs a replica and a sentinel")
        self.name = name
        self.password = password
        self.down_after_ms = down_after_ms
        self.nodes = [
            RedisServer(appendonly=appendonly, password=password) for _ in range(1 + replicas)
        ]
        follow = ("--replicaof", "127.0.0.1", str(self.nodes[0].port))
        for i, node in enumerate(self.nodes):
            node.extra_args = (
                "--repl-diskless-sync-delay", "0",
                "--min-replicas-to-write", "1",
                "--min-replicas-max-lag", "10",
                *(("--masterauth", password) if password else ()),
                *(follow if i else ()),
            )  # fmt: skip
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinel_dirs = [
            Path(tempfile.mkdtemp(prefix="ttg-sentinel-")) for _ in self.sentinel_ports
        ]
        self.sentinels: list[subprocess.Popen[bytes] | None] = [None] * sentinels

    @property
    def url(self) -> str:
        """``redis+sentinel://[:password@]host:port,.../name``: what TTG is given."""
        creds = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{creds}{hosts}/{self.name}"

    def _cli(self, port: int, *args: str) -> str:
        cli = shutil.which("redis-cli")
        if not cli:
            raise UsageError("redis-cli not found on PATH (apt-get install redis-tools)")
        env = {**os.environ, **({"REDISCLI_AUTH": self.password} if self.password else {})}
        proc = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True, text=True, timeout=30, check=False, env=env,
        )  # fmt: skip
        return proc.stdout

    def _sentinel_conf(self, i: int) -> str:
        quorum = len(self.sentinel_ports) // 2 + 1
        name, pw = self.name, self.password
        lines = [
            f"port {self.sentinel_ports[i]}",
            "bind 127.0.0.1",
            f"dir {self.sentinel_dirs[i]}",
            f"logfile {self.sentinel_dirs[i] / 'sentinel.log'}",
            f"sentinel monitor {name} 127.0.0.1 {self.nodes[0].port} {quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} 10000",
            f"sentinel parallel-syncs {name} 1",
            *([f"sentinel auth-pass {name} {pw}", f"requirepass {pw}"] if pw else []),
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> RedisSentinels:
        """Start the nodes and sentinels; return once every sentinel sees every replica
        and every other sentinel, and every replica is in sync."""
        for node in self.nodes:
            node.start()
        for i in range(len(self.sentinel_ports)):
            conf = self.sentinel_dirs[i] / "sentinel.conf"
            conf.write_text(self._sentinel_conf(i))
            self.start_sentinel(i)
        self.wait_ok()
        return self

    def start_sentinel(self, i: int) -> None:
        conf = self.sentinel_dirs[i] / "sentinel.conf"
        binary = self.nodes[0].binary
        self.sentinels[i] = subprocess.Popen(
            [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.sentinel_ports[i], timeout=10)

    def _sentinel_ok(self, i: int) -> bool:
        fields = self._cli(self.sentinel_ports[i], "sentinel", "master", self.name).split()
        info = dict(zip(fields[::2], fields[1::2], strict=False))
        return (
            info.get("flags") == "master"
            and info.get("num-slaves") == str(len(self.nodes) - 1)
            and info.get("num-other-sentinels") == str(len(self.sentinel_ports) - 1)
        )

    def wait_ok(self, timeout: float = FORM_TIMEOUT) -> None:
        """Until every sentinel knows the whole set and every living replica is in sync.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        living = sum(1 for n in self.nodes if n.proc and n.proc.poll() is None)
        while not (
            all(self._sentinel_ok(i) for i in range(len(self.sentinel_ports)))
            # The master counts its good replicas once a second, and refuses writes
            # until it counts one (min-replicas-to-write).
            and f"min_slaves_good_slaves:{living - 1}"
            in self._cli(self.nodes[self.master()].port, "info", "replication")
            and all(
                "master_link_status:up" in self._cli(n.port, "info", "replication")
                for i, n in enumerate(self.nodes)
                if i != self.master() and n.proc and n.proc.poll() is None
            )
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis sentinels not ok after {timeout}s")
            time.sleep(0.1)

    def master(self) -> int:
        """Index of the node the sentinels name master (the first sentinel that answers)."""
        for port in self.sentinel_ports:
            reply = self._cli(port, "sentinel", "get-master-addr-by-name", self.name).split()
            if len(reply) == 2:
                return [n.port for n in self.nodes].index(int(reply[1]))
        raise LookupError("no sentinel names a master")

    def kill(self, node: int, sig: int = signal.SIGKILL) -> None:
        """Signal node ``node`` (SIGKILL by default) and wait for it to exit."""
        self.nodes[node].kill(sig)

    def stop(self) -> None:
        for proc in self.sentinels:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        for node in self.nodes:
            node.stop()
        for d in self.sentinel_dirs:
            shutil.rmtree(d, ignore_errors=True)


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
