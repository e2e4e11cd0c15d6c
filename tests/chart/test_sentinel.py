"""`redis.replicas=3`: Redis with Sentinel, as the chart renders it (issue 20, N9).

The worker side (`redis+sentinel://`, a master lost mid-run) runs for real in
tests/fault/test_redis_sentinel.py; here: what the chart gives the pods.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.chart.conftest import CHART, Rendered, render, run_helm
from tests.chart.pods import Pod
from tests.chart.wiring import ttg_json, ttg_pod
from tests.helpers import eventually
from ttg import scenario
from ttg.errors import BrokerConnectionError

pytestmark = pytest.mark.chart

PEERS = [f"ttg-redis-{i}.ttg-redis-headless" for i in range(3)]


@pytest.fixture(scope="module")
def sentinel() -> Rendered:
    return render("helm4", "--set", "redis.replicas=3")


def test_ttg_pods_reach_the_master_through_every_pods_sentinel(sentinel: Rendered) -> None:
    url = f"redis+sentinel://{','.join(f'{p}:26379' for p in PEERS)}/ttg"
    for kind, name in [("Deployment", "ttg-worker"), ("Deployment", "ttg-exporter"),
                       ("Job", "ttg-seed")]:  # fmt: skip
        (c,) = sentinel.get(kind, name)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["TTG_BROKER_URL"] == url, (kind, name)


def test_three_redis_pods_each_with_a_sentinel_that_find_each_other(sentinel: Rendered) -> None:
    sts = sentinel.get("StatefulSet", "ttg-redis")
    assert sts["spec"]["replicas"] == 3
    containers = {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"redis", "sentinel"}
    script = containers["sentinel"]["command"][2]
    # A majority of 3 promotes; the chart's failure detection time.
    assert "sentinel monitor ttg $master 6379 2" in script
    assert "sentinel down-after-milliseconds ttg 5000" in script
    for c in containers.values():
        assert " ".join(PEERS) in c["command"][2]
    headless = sentinel.get("Service", "ttg-redis-headless")["spec"]
    assert headless["publishNotReadyAddresses"] is True
    assert {p["name"] for p in headless["ports"]} == {"redis", "sentinel"}
    conf = sentinel.get("ConfigMap", "ttg-redis-config")["data"]["redis.conf"]
    assert "min-replicas-to-write 1" in conf.splitlines()
    rules = sentinel.get("NetworkPolicy", "ttg-redis")["spec"]["ingress"]
    assert all({p["port"] for p in r["ports"]} == {"redis", "sentinel"} for r in rules)


def test_one_redis_pod_renders_no_sentinel() -> None:
    r = render("helm4")
    (c,) = r.get("StatefulSet", "ttg-redis")["spec"]["template"]["spec"]["containers"]
    assert c["name"] == "redis"
    assert "publishNotReadyAddresses" not in r.get("Service", "ttg-redis-headless")["spec"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["redis.replicas=2"], "replicas"),
        (["redis.replicas=0"], "replicas"),
        (["redis.sentinel.downAfterMilliseconds=10"], "downAfterMilliseconds"),
        (["redis.replicas=3", "redis.tls.enabled=true", "redis.tls.existingSecret=s"],
         "does not work with redis.tls.enabled"),
    ],
)  # fmt: skip
def test_bad_sentinel_values_are_refused_naming_the_field(
    settings: list[str], message: str
) -> None:
    args = [word for s in settings for word in ("--set", s)]
    proc = run_helm("helm4", "template", "ttg", str(CHART), *args)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


# -- the rendered pods, run for real ---------------------------------------------------

#: The run the rendered seeding Job seeds: 240 chunks of 50 ms.
RUN, PARAMS, CHUNK_SIZE = "sentinel-1", 24_000, 100


class SentinelPods:
    """The rendered StatefulSet's 3 pods as local processes (redis and sentinel containers).

    Each pod gets a loopback address of its own (127.a.b.11-13: the whole 127/8 is
    this machine), so both keep the ports the chart gives them; the pods' DNS names
    become those addresses, `hostname` answers with it (the scripts build the pod's
    own name from it), and `bind *` binds it. Nothing else is substituted.
    """

    def __init__(self, rendered: Rendered, tmp_path: Path) -> None:
        net = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
        self.ips = [f"{net}.{11 + i}" for i in range(3)]
        self.password = Pod(rendered, {"containers": []}, tmp_path).secret("ttg-redis")["password"]
        spec = rendered.get("StatefulSet", "ttg-redis")["spec"]["template"]["spec"]
        self.pods = []
        for i, ip in enumerate(self.ips):
            bin_dir = tmp_path / f"bin-{i}"
            bin_dir.mkdir()
            fake = bin_dir / "hostname"
            fake.write_text(f"#!/bin/sh\necho {ip}\n")
            fake.chmod(0o755)
            replace = [(peer, self.ips[j]) for j, peer in enumerate(PEERS)]
            replace += [(".ttg-redis-headless", ""), ("bind * -::*", f"bind {ip}")]
            pod_dir = tmp_path / f"ttg-redis-{i}"
            pod_dir.mkdir()
            # PATH is set last: a local path under /tmp is no pod path to rewrite.
            path = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
            self.pods.append(
                Pod(rendered, spec, pod_dir, name=f"ttg-redis-{i}",
                    claims={"data": pod_dir / "pvc-data"}, replace=replace, env_overrides=path)
            )  # fmt: skip

    def client(self, i: int, port: int = 6379) -> redis.Redis:
        return redis.Redis(host=self.ips[i], port=port, password=self.password,
                           decode_responses=True, socket_timeout=3)  # fmt: skip

    def start(self, i: int) -> None:
        """Pod i's containers; returns once its sentinel knows the whole set (OrderedReady)."""
        pod = self.pods[i]
        pod.start("redis")
        pod.start("sentinel")

        def whole() -> bool:
            try:
                with self.client(i, 26379) as s:
                    info = s.sentinel_master("ttg")
            except redis.RedisError:
                return False
            return int(info["num-slaves"]) >= i and int(info["num-other-sentinels"]) >= i

        eventually(whole, timeout=60, interval=0.2, what=f"pod {i}'s sentinel up and joined")

    def wait_writable(self) -> None:
        """Until the master counts both replicas as good (min-replicas-to-write: it
        refuses writes before, and counts once a second)."""

        def good() -> bool:
            with self.client(self.master()) as m:
                return int(m.info("replication").get("min_slaves_good_slaves", 0)) == 2

        eventually(good, timeout=60, interval=0.2, what="the master writable")

    def master(self) -> int:
        for i in range(3):
            with contextlib.suppress(redis.RedisError), self.client(i, 26379) as s:
                return self.ips.index(s.sentinel_get_master_addr_by_name("ttg")[0])
        raise AssertionError("no sentinel answers")

    def stop(self) -> None:
        for pod in self.pods:
            pod.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_rendered_sentinel_pods_fail_over_mid_run_and_the_run_verifies(tmp_path: Path) -> None:
    """The chart's Redis pods (3) and TTG's rendered pods: the master pod is lost
    (SIGKILL to its redis and sentinel) at 30%; the run completes and verifies."""
    settings = ["redis.replicas=3", f"run.id={RUN}", f"run.params={PARAMS}",
                f"run.chunkSize={CHUNK_SIZE}", "run.workMs=50"]  # fmt: skip
    rendered = render("helm4", *(w for s in settings for w in ("--set", s)))
    redis_pods = SentinelPods(rendered, tmp_path)
    addresses = {
        f"{peer}:26379": f"{ip}:26379" for peer, ip in zip(PEERS, redis_pods.ips, strict=True)
    }
    pods: list[Pod] = []
    try:
        for i in range(3):
            redis_pods.start(i)
        assert redis_pods.master() == 0
        redis_pods.wait_writable()

        def pod_of(kind: str, name: str, pod_dir: str) -> Pod:
            return ttg_pod(rendered, kind, name, addresses=addresses, workdir=tmp_path / pod_dir)

        seeded = pod_of("Job", "ttg-seed", "seed").run("seed")
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        test_pod = pod_of("Pod", "ttg-test-status", "test")
        for i in range(3):
            pods.append(pod_of("Deployment", "ttg-worker", f"w{i}"))
            pods[-1].start("worker")

        def status() -> dict[str, Any]:
            s = ttg_json(test_pod, "status", "status", "--run", RUN)
            if s["_exit"] != 0:
                raise BrokerConnectionError(f"ttg status exited {s['_exit']}")
            return s

        def kill_master(_s: dict[str, Any]) -> str:
            redis_pods.pods[0].stop(signal.SIGKILL)
            return "ttg-redis-0"

        record = scenario.kill_broker_node_at(status, kill_master, 0.3, timeout=120)
        eventually(lambda: redis_pods.master() != 0, timeout=60, what="a replica promoted")
        done = eventually(lambda: status()["complete"], timeout=300, interval=0.5,
                          what="the run complete")  # fmt: skip
        assert done
        report = ttg_json(test_pod, "status", "verify", "--run", RUN)
        assert report["ok"] and report["_exit"] == 0, report
        assert report["done_params"] == report["total_params"] == PARAMS, report
        print(  # noqa: T201 - the chart's failover figure, in the test's output (-s, or -rP)
            f"\nrendered Sentinel pods, master pod killed at {record.finished_before}/"
            f"{report['total_chunks']} chunks: progress again within "
            f"{record.progress_again_s:.2f} s (status reads take {record.status_read_s:.2f} s)"
        )
    finally:
        for pod in pods:
            pod.stop()
        redis_pods.stop()
