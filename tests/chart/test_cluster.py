"""A RabbitMQ cluster (`rabbitmq.replicas`): what the chart renders for it.

The cluster forms for real in tests/chart/test_wiring_cluster.py; here, the
objects: nodes named for peer discovery, started in parallel, spread over
Kubernetes nodes, a disruption budget that keeps quorum, no Kubernetes API
access, and every node's address given to TTG's pods.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import (
    CHART,
    Rendered,
    assert_restricted,
    assert_valid_strictly,
    render,
    run_helm,
    selects,
)

pytestmark = pytest.mark.chart

CLUSTER = ("--set", "backend=rabbitmq", "--set", "rabbitmq.replicas=3")
#: Every pod that talks to the broker, by kind and name.
CLIENTS = [
    ("Deployment", "ttg-worker"),
    ("Deployment", "ttg-exporter"),
    ("Job", "ttg-seed"),
    ("Pod", "ttg-test-status"),
]


def pod_spec(r: Rendered, kind: str, name: str) -> dict[str, Any]:
    doc = r.get(kind, name)
    spec: dict[str, Any] = doc["spec"] if kind == "Pod" else doc["spec"]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def broker_container(r: Rendered) -> dict[str, Any]:
    spec = pod_spec(r, "StatefulSet", "ttg-rabbitmq")
    (c,) = spec["containers"]
    return dict(c)


def conf_lines(r: Rendered) -> list[str]:
    conf = r.get("ConfigMap", "ttg-rabbitmq-config")["data"]["rabbitmq.conf"]
    return [line.strip() for line in conf.splitlines() if line.strip() and line[0] != "#"]


def test_cluster_renders_valid_for_every_kubernetes_version_with_restricted_pods(
    major: str,
) -> None:
    r = render(major, *CLUSTER)
    assert_valid_strictly(r)
    assert_restricted(r)


@pytest.mark.parametrize("replicas", [3, 5, 7])
def test_nodes_form_a_cluster_through_kubernetes_peer_discovery_in_parallel(
    major: str, replicas: int
) -> None:
    r = render(major, "--set", "backend=rabbitmq", "--set", f"rabbitmq.replicas={replicas}")
    sts = r.get("StatefulSet", "ttg-rabbitmq")["spec"]
    assert sts["replicas"] == replicas
    assert sts["podManagementPolicy"] == "Parallel"
    headless = r.get("Service", sts["serviceName"])["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert selects(headless["selector"], sts["template"]["metadata"]["labels"])
    lines = conf_lines(r)
    assert "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s" in lines
    assert f"cluster_formation.target_cluster_size_hint = {replicas}" in lines
    plugins = r.get("ConfigMap", "ttg-rabbitmq-config")["data"]["enabled_plugins"].strip()
    assert plugins == "[rabbitmq_prometheus,rabbitmq_peer_discovery_k8s]."
    # Peer discovery reads the ordinal from the node name: rabbit@<pod>.<headless>.<namespace>.
    env = env_of(broker_container(r))
    assert env["RABBITMQ_USE_LONGNAME"]["value"] == "true"
    assert env["MY_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["MY_POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["RABBITMQ_NODENAME"]["value"] == (
        f"rabbit@$(MY_POD_NAME).{sts['serviceName']}.$(MY_POD_NAMESPACE)"
    )


def test_a_single_node_is_left_as_it_was(major: str) -> None:
    """Upgrading a one-node release must not touch what a StatefulSet cannot change
    (podManagementPolicy) nor the node name its data directory is named after."""
    r = render(major, "--set", "backend=rabbitmq")
    sts = r.get("StatefulSet", "ttg-rabbitmq")["spec"]
    assert sts["replicas"] == 1 and "podManagementPolicy" not in sts
    assert env_of(broker_container(r))["RABBITMQ_NODENAME"]["value"] == "rabbit@localhost"
    assert not any(line.startswith("cluster_formation") for line in conf_lines(r))
    assert "PodDisruptionBudget" not in {d["kind"] for d in r.docs if "rabbitmq" in str(d)}
    assert "affinity" not in sts["template"]["spec"]


def test_the_cluster_needs_no_kubernetes_api_access(major: str) -> None:
    """RabbitMQ 4.1+'s peer discovery reads nothing from the API: no RBAC, no token."""
    r = render(major, *CLUSTER)
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & r.kinds()
    spec = pod_spec(r, "StatefulSet", "ttg-rabbitmq")
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    # The chart's only ServiceAccount is the TTG pods', and it mounts no token either.
    for sa in (d for d in r.docs if d["kind"] == "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False, sa["metadata"]["name"]


def test_nodes_share_the_erlang_cookie_from_the_secret(major: str) -> None:
    def cookie_ref(r: Rendered) -> dict[str, Any]:
        (init,) = pod_spec(r, "StatefulSet", "ttg-rabbitmq")["initContainers"]
        ref: dict[str, Any] = env_of(init)["RABBITMQ_COOKIE"]["valueFrom"]["secretKeyRef"]
        return ref

    cluster = render(major, *CLUSTER)
    ref = cookie_ref(cluster)
    assert ref["name"] == "ttg-rabbitmq" and ref["key"] == "erlang-cookie"
    assert ref["optional"] is False, "a node with a cookie of its own could never join"
    assert "erlang-cookie" in cluster.get("Secret", "ttg-rabbitmq")["data"]
    # With existingSecret and no cookie key, a single node makes one of its own.
    assert cookie_ref(render(major, "--set", "backend=rabbitmq"))["optional"] is True


@pytest.mark.parametrize(
    ("mode", "field"),
    [
        ("soft", "preferredDuringSchedulingIgnoredDuringExecution"),
        ("hard", "requiredDuringSchedulingIgnoredDuringExecution"),
    ],
)
def test_nodes_spread_over_kubernetes_nodes(major: str, mode: str, field: str) -> None:
    r = render(major, *CLUSTER, "--set", f"rabbitmq.podAntiAffinity={mode}")
    template = r.get("StatefulSet", "ttg-rabbitmq")["spec"]["template"]
    anti = template["spec"]["affinity"]["podAntiAffinity"]
    assert list(anti) == [field]
    (term,) = anti[field]
    term = term.get("podAffinityTerm", term)
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["labelSelector"], template["metadata"]["labels"])


def test_disruption_budget_keeps_the_quorum(major: str) -> None:
    r = render(major, *CLUSTER)
    pdb = r.get("PodDisruptionBudget", "ttg-rabbitmq")["spec"]
    assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb
    broker = r.get("StatefulSet", "ttg-rabbitmq")["spec"]["template"]["metadata"]["labels"]
    assert selects(pdb["selector"], broker)
    worker = r.get("Deployment", "ttg-worker")["spec"]["template"]["metadata"]["labels"]
    assert not selects(pdb["selector"], worker)


def test_network_policy_lets_the_nodes_reach_each_other_and_clients_only_amqp(
    major: str,
) -> None:
    r = render(major, *CLUSTER)
    rules = r.get("NetworkPolicy", "ttg-rabbitmq")["spec"]["ingress"]
    broker = r.get("StatefulSet", "ttg-rabbitmq")["spec"]["template"]["metadata"]["labels"]
    worker = r.get("Deployment", "ttg-worker")["spec"]["template"]["metadata"]["labels"]

    def ports_for(labels: dict[str, str]) -> set[tuple[Any, Any]]:
        out = set()
        for rule in rules:
            peers = rule.get("from")
            if peers and not any(selects(p["podSelector"], labels) for p in peers):
                continue
            out |= {(p["port"], p.get("endPort")) for p in rule["ports"]}
        return out

    assert ports_for(broker) >= {(4369, None), (25672, None), (6000, 6500)}
    assert ports_for(worker) == {("amqp", None), ("prometheus", None)}
    single = render(major, "--set", "backend=rabbitmq").get("NetworkPolicy", "ttg-rabbitmq")
    assert len(single["spec"]["ingress"]) == 2, "no inter-node rule for a single node"


def test_every_client_gets_every_nodes_address(major: str) -> None:
    r = render(major, *CLUSTER)
    expected = ",".join(f"amqp://ttg-rabbitmq-{i}.ttg-rabbitmq-headless:5672/%2F" for i in range(3))
    for kind, name in CLIENTS:
        (c,) = pod_spec(r, kind, name)["containers"]
        assert env_of(c)["TTG_BROKER_URL"]["value"] == expected, name
    # Each address is a pod of the StatefulSet under its headless Service.
    sts = r.get("StatefulSet", "ttg-rabbitmq")
    for url in expected.split(","):
        pod, service = url.split("//")[1].split(":")[0].split(".")
        assert pod.rsplit("-", 1)[0] == sts["metadata"]["name"]
        assert int(pod.rsplit("-", 1)[1]) < sts["spec"]["replicas"]
        assert service == sts["spec"]["serviceName"]
        assert ("Service", service) in {(d["kind"], d["metadata"]["name"]) for d in r.docs}
    single = render(major, "--set", "backend=rabbitmq")
    (c,) = pod_spec(single, "Deployment", "ttg-worker")["containers"]
    assert env_of(c)["TTG_BROKER_URL"]["value"] == "amqp://ttg-rabbitmq:5672/%2F"


@pytest.mark.parametrize("replicas", ["0", "2", "4", "-1"])
def test_schema_rejects_replica_counts_without_a_majority(major: str, replicas: str) -> None:
    proc = run_helm(
        major, "template", "ttg", str(CHART), *CLUSTER[:2], "--set", f"rabbitmq.replicas={replicas}"
    )
    assert proc.returncode != 0, replicas
    assert "replicas" in proc.stderr, proc.stderr


def test_schema_rejects_an_unknown_anti_affinity(major: str) -> None:
    proc = run_helm(
        major, "template", "ttg", str(CHART), *CLUSTER, "--set", "rabbitmq.podAntiAffinity=strict"
    )
    assert proc.returncode != 0 and "podAntiAffinity" in proc.stderr, proc.stderr
