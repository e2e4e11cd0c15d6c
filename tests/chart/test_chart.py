"""The chart renders what it promises, with Helm 3 and Helm 4, valid for Kubernetes 1.29-1.34."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    ALL_APIS,
    CERT_MANAGER_API,
    CHART,
    CRD_KINDS,
    PODMONITOR_INSTEAD,
    SCENARIO_DIR,
    SCENARIOS,
    Rendered,
    assert_restricted,
    assert_valid_strictly,
    needs_apis,
    render,
    run_helm,
    selects,
    without_generated_secrets,
)
from tests.helpers import ROOT
from ttg.compute import check_allowed, parse_allow
from ttg.errors import UsageError

pytestmark = pytest.mark.chart

BROKER_OBJECTS = {
    "redis": {
        ("StatefulSet", "ttg-redis"),
        ("Service", "ttg-redis"),
        ("NetworkPolicy", "ttg-redis"),
    },
    "rabbitmq": {
        ("StatefulSet", "ttg-rabbitmq"),
        ("Service", "ttg-rabbitmq"),
        ("NetworkPolicy", "ttg-rabbitmq"),
    },
}


def names(r: Rendered) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in r.docs}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_scenario_renders_and_validates_strictly(major: str, scenario: Path) -> None:
    assert_valid_strictly(render(major, "-f", str(scenario), apis=tuple(ALL_APIS)))


@pytest.mark.parametrize(
    "values",
    [None, *SCENARIOS],
    ids=lambda p: "defaults" if p is None else f"{p.parent.name}/{p.name}",
)
def test_helm_lint_strict(major: str, values: Path | None) -> None:
    """What chart-testing's `ct lint` runs for every ci/*-values.yaml, and more."""
    args = ["-f", str(values)] if values else []
    if values and needs_apis(values):
        pytest.skip("needs APIs (KEDA, Prometheus operator) that `helm lint` cannot be given")
    proc = run_helm(major, "lint", "--strict", str(CHART), *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("backend", "other"), [("redis", "rabbitmq"), ("rabbitmq", "redis")])
def test_one_value_switches_the_broker(major: str, backend: str, other: str) -> None:
    r = render(major, "--set", f"backend={backend}")
    assert BROKER_OBJECTS[backend] <= names(r)
    assert not BROKER_OBJECTS[other] & names(r)
    assert not any(other in name for _, name in names(r))
    env = {
        e["name"]: e
        for e in r.get("Deployment", "ttg-worker")["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    }
    assert env["TTG_BACKEND"]["value"] == backend


def test_external_installs_no_broker(major: str) -> None:
    r = render(major, "-f", str(SCENARIO_DIR / "external-values.yaml"))
    assert "StatefulSet" not in r.kinds() and "NetworkPolicy" not in r.kinds()
    env = {
        e["name"]: e
        for e in r.get("Deployment", "ttg-worker")["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    }
    assert env["TTG_BACKEND"]["value"] == "rabbitmq"
    assert env["TTG_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {"name": "my-broker", "key": "url"}


def test_external_without_a_secret_fails_with_a_message(major: str) -> None:
    proc = run_helm(major, "template", "ttg", str(CHART), "--set", "backend=external")
    assert proc.returncode != 0
    assert "external.existingSecret is required" in proc.stderr


def test_optional_integrations_render_only_when_enabled(major: str) -> None:
    monitoring = str(SCENARIO_DIR / "monitoring-values.yaml")
    optional = CRD_KINDS - {"Certificate"}  # the brokers' TLS, tested with TLS
    with_apis = render(major, "-f", monitoring, "--set", "keda.enabled=true", apis=tuple(ALL_APIS))
    assert with_apis.kinds() >= optional - {"PodMonitor"}
    assert ("ConfigMap", "ttg-dashboard") in names(with_apis)
    pod_monitor = render(major, "-f", monitoring, *PODMONITOR_INSTEAD, apis=tuple(ALL_APIS))
    assert "PodMonitor" in pod_monitor.kinds() and "ServiceMonitor" not in pod_monitor.kinds()
    default = render(major, apis=tuple(ALL_APIS))
    assert not optional & default.kinds()
    assert ("ConfigMap", "ttg-dashboard") not in names(default)
    assert "HorizontalPodAutoscaler" not in default.kinds()
    # What a bare cluster can install needs no API beyond Kubernetes' own.
    bare = render(major, "-f", str(CHART / "ci/everything-values.yaml"))
    assert {"HorizontalPodAutoscaler", "ConfigMap"} <= bare.kinds()


#: Helm's limit for a release name.
LONGEST_RELEASE = "sweeps-of-the-materials-science-group-in-eu-west-1-xy"
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


TLS_EVERYTHING = (
    "tls.enabled=true",
    "tls.clientAuth.enabled=true",
    "tls.certManager.issuerRef.name=ca-issuer",
)


@pytest.mark.parametrize(
    ("backend", "extra"),
    [
        ("redis", ()),
        ("rabbitmq", ()),
        ("rabbitmq", ("--set", "rabbitmq.replicas=3")),
        ("redis", tuple(w for s in TLS_EVERYTHING for w in ("--set", f"redis.{s}"))),
        (
            "rabbitmq",
            (
                *("--set", "rabbitmq.replicas=3", "--set", "rabbitmq.managementUI.enabled=true"),
                *(w for s in TLS_EVERYTHING for w in ("--set", f"rabbitmq.{s}")),
            ),
        ),
    ],
    ids=["redis", "rabbitmq", "rabbitmq-cluster", "redis-tls", "rabbitmq-cluster-tls-ui"],
)
@pytest.mark.parametrize("release", [LONGEST_RELEASE, f"ttg-{LONGEST_RELEASE[4:]}"])
def test_names_stay_valid_dns_labels_for_the_longest_release_name(
    major: str, backend: str, extra: tuple[str, ...], release: str
) -> None:
    assert len(release) == 53
    proc = run_helm(
        major,
        "template",
        release,
        str(CHART),
        "--set",
        f"backend={backend}",
        *extra,
        "-f",
        str(SCENARIO_DIR / "monitoring-values.yaml"),
        *[f"--api-versions={a}" for a in (*ALL_APIS, CERT_MANAGER_API)],
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    for cert in (d["spec"] for d in docs if d["kind"] == "Certificate"):
        # What an X.509 certificate holds: names of at most 253, labels of 63, a CN of 64.
        for name in cert.get("dnsNames", []):
            assert len(name) <= 253 and all(len(label) <= 63 for label in name.split(".")), name
        assert len(cert.get("commonName", "")) <= 64, cert
    seen = set()
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        assert (kind, name) not in seen, f"two {kind} named {name}"
        seen.add((kind, name))
        assert len(name) <= 63 and DNS_LABEL.fullmatch(name), (kind, name, len(name))
        if kind == "StatefulSet":
            # Its pods get the label controller-revision-hash=<name>-<10-char hash>.
            assert len(name) <= 52, (name, len(name))
            assert len(f"{d['spec']['serviceName']}") <= 63
        labels = dict(d["metadata"].get("labels") or {})
        labels.update(d.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}))
        for key, value in labels.items():
            assert len(str(value)) <= 63, (kind, name, key, value)
    services = {n for k, n in seen if k == "Service"}
    worker = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-worker")
    )
    env = {e["name"]: e for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    for url in env["TTG_BROKER_URL"]["value"].split(","):
        # A Service, or a cluster node: <pod>.<headless Service>, each a DNS label.
        host = url.split("//")[1].split(":")[0]
        *pod, service = host.split(".")
        assert service in services, (host, services)
        assert all(len(label) <= 63 and DNS_LABEL.fullmatch(label) for label in (*pod, service))
    secret = env["TTG_BROKER_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
    assert ("Secret", secret) in seen


#: Overlays that ask for a worker count of their own.
COUNTED_OVERLAYS = [
    p
    for p in sorted((ROOT / "values").glob("*.yaml"))
    if "replicas" in ((yaml.safe_load(p.read_text()) or {}).get("worker") or {})
]


@pytest.mark.parametrize("overlay", COUNTED_OVERLAYS, ids=lambda p: p.name)
def test_overlays_never_ask_for_more_workers_than_their_autoscaler_allows(
    major: str, overlay: Path
) -> None:
    """The production Applications turn the HPA on: its ceiling must hold the overlay's count."""
    wanted = yaml.safe_load(overlay.read_text())["worker"]["replicas"]
    r = render(
        major, "-f", str(overlay), "--set", "worker.autoscaling.enabled=true", apis=tuple(ALL_APIS)
    )
    hpa = r.get("HorizontalPodAutoscaler", "ttg-worker")["spec"]
    assert hpa["minReplicas"] <= wanted <= hpa["maxReplicas"], (wanted, hpa)


def test_keda_without_its_api_fails_with_a_message_instead_of_one_silent_worker(
    major: str,
) -> None:
    proc = run_helm(major, "template", "ttg", str(CHART), "--set", "keda.enabled=true")
    assert proc.returncode != 0
    assert "keda.enabled=true but the cluster has no KEDA API" in proc.stderr, proc.stderr
    r = render(major, "--set", "keda.enabled=true", apis=tuple(ALL_APIS))
    assert "ScaledObject" in r.kinds() and "HorizontalPodAutoscaler" not in r.kinds()
    assert "replicas" not in r.get("Deployment", "ttg-worker")["spec"]


@pytest.mark.parametrize("backend", ["redis", "rabbitmq", "external"])
def test_every_pod_meets_the_restricted_pod_security_standard(major: str, backend: str) -> None:
    extra = ["--set", "external.existingSecret=s"] if backend == "external" else []
    r = render(major, "--set", f"backend={backend}", *extra)
    pods = r.pod_specs()
    assert len(pods) >= (4 if backend == "external" else 5)  # worker, exporter, seed, test, broker
    assert_restricted(r)


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("backend=kafka", "backend"),
        ("worker.replicas=-1", "replicas"),
        ("run.id=Bad_ID", "id"),
        ("run.chunkSize=0", "chunkSize"),
        ("worker.logFormat=xml", "logFormat"),
    ],
)
def test_schema_rejects_bad_values_naming_the_field(major: str, setting: str, field: str) -> None:
    proc = run_helm(major, "template", "ttg", str(CHART), "--set", setting)
    assert proc.returncode != 0, setting
    assert field in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        # Rendered `consumer_timeout = 0` before: RabbitMQ then refused to boot.
        ("rabbitmq.consumerTimeoutMs=abc", "consumerTimeoutMs"),
        ("rabbitmq.auth.username=", "username"),
        ("rabbitmq.persistence.size=lots", "size"),
        ("redis.persistence.size=lots", "size"),
        ("redis.resources.requests.memory=plenty", "memory"),
        ("redis.extraConfg=maxmemory 1gb", "extraConfg"),
        ("rabbitmq.networkPolicy.enable=false", "enable"),
    ],
)
def test_broker_subchart_schemas_reject_bad_values_naming_the_field(
    major: str, setting: str, field: str
) -> None:
    backend = setting.split(".", 1)[0]
    proc = run_helm(
        major, "template", "ttg", str(CHART), "--set", f"backend={backend}", "--set", setting
    )
    assert proc.returncode != 0, setting
    assert field in proc.stderr, proc.stderr


@pytest.mark.parametrize("subchart", ["redis", "rabbitmq"])
def test_broker_subcharts_carry_a_schema_and_install_alone(major: str, subchart: str) -> None:
    assert (CHART / "charts" / subchart / "values.schema.json").is_file()
    proc = run_helm(
        major, "template", "x", str(CHART / "charts" / subchart), "--set", "standalone=true"
    )
    assert proc.returncode == 0, proc.stderr
    bad = run_helm(
        major,
        "template",
        "x",
        str(CHART / "charts" / subchart),
        "--set",
        "standalone=true",
        "--set",
        "persistence.size=lots",
    )
    assert bad.returncode != 0 and "size" in bad.stderr


def test_fractional_seconds_from_set_are_accepted(major: str) -> None:
    """`--set worker.leaseSeconds=1.5` gives Helm the string "1.5": still a number of seconds."""
    r = render(
        major,
        "--set",
        "worker.leaseSeconds=1.5",
        "--set",
        "worker.graceSeconds=12.5",
        "--set",
        "worker.retryDelaySeconds=0.5",
    )
    config = r.get("ConfigMap", "ttg-worker")["data"]
    assert config["TTG_LEASE_SECONDS"] == "1.5"
    assert config["TTG_GRACE_SECONDS"] == "12.5"
    assert config["TTG_RETRY_DELAY_SECONDS"] == "0.5"
    for bad in ("worker.leaseSeconds=abc", "worker.graceSeconds=-1"):
        proc = run_helm(major, "template", "ttg", str(CHART), "--set", bad)
        assert proc.returncode != 0 and bad.split(".")[1].split("=")[0] in proc.stderr, bad
    proc = run_helm(
        major,
        "template",
        "ttg",
        str(CHART),
        "--set",
        "worker.graceSeconds=39.5",
        "--set",
        "worker.terminationGracePeriodSeconds=39",
    )
    assert proc.returncode != 0 and "graceSeconds must be below" in proc.stderr


def test_grace_period_must_fit_in_the_termination_grace_period(major: str) -> None:
    proc = run_helm(
        major,
        "template",
        "ttg",
        str(CHART),
        "--set",
        "worker.graceSeconds=60",
        "--set",
        "worker.terminationGracePeriodSeconds=30",
    )
    assert proc.returncode != 0 and "graceSeconds must be below" in proc.stderr


@pytest.mark.parametrize("backend", ["redis", "rabbitmq"])
def test_worker_and_seeder_get_the_cli_contract_with_credentials_from_a_secret(
    major: str, backend: str
) -> None:
    r = render(major, "--set", f"backend={backend}", "--set", "run.id=r7", "--set", "run.workMs=25")
    worker = r.get("Deployment", "ttg-worker")["spec"]["template"]["spec"]["containers"][0]
    seeder = r.get("Job", "ttg-seed")["spec"]["template"]["spec"]["containers"][0]
    config = r.get("ConfigMap", "ttg-worker")["data"]
    assert worker["args"] == ["worker"]
    assert {
        "TTG_METRICS_PORT",
        "TTG_LEASE_SECONDS",
        "TTG_LOG_FORMAT",
        "TTG_GRACE_SECONDS",
    } <= config.keys()
    assert worker["envFrom"] == [{"configMapRef": {"name": "ttg-worker"}}]
    assert seeder["args"][:3] == ["seed", "--run", "r7"]
    assert seeder["args"][seeder["args"].index("--work-ms") + 1] == "25"
    for container in (worker, seeder):
        env = {e["name"]: e for e in container["env"]}
        assert env["TTG_BACKEND"]["value"] == backend
        url = env["TTG_BROKER_URL"]["value"]
        assert url.startswith("redis://" if backend == "redis" else "amqp://") and "@" not in url
        assert env["TTG_BROKER_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == f"ttg-{backend}"
        for e in container["env"]:
            if "PASSWORD" in e["name"] or "USERNAME" in e["name"]:
                assert "value" not in e, e


@pytest.mark.parametrize("backend", ["redis", "rabbitmq"])
def test_every_pod_pulls_with_the_image_pull_secrets(major: str, backend: str) -> None:
    r = render(
        major,
        "--set",
        f"backend={backend}",
        "--set",
        "imagePullSecrets[0].name=regcred",
        "--set",
        f"{backend}.imagePullSecrets[0].name=broker-mirror",
    )
    pods = dict(r.pod_specs())
    assert len(pods) >= 4  # worker, seed, helm test, broker
    for name, spec in pods.items():
        secrets = [s["name"] for s in spec.get("imagePullSecrets", [])]
        assert "regcred" in secrets, name
        assert ("broker-mirror" in secrets) == (name == f"ttg-{backend}"), name


def test_what_belongs_to_a_run_is_set_at_seed_time_only(major: str) -> None:
    """Workers read compute and max deliveries from the run; in their ConfigMap they roll pods."""
    r = render(major, "--set", "run.compute=mylab.sim:energy", "--set", "run.maxDeliveries=7")
    config = r.get("ConfigMap", "ttg-worker")["data"]
    assert "TTG_COMPUTE" not in config and "TTG_MAX_DELIVERIES" not in config
    seeder = r.get("Job", "ttg-seed")["spec"]["template"]["spec"]["containers"][0]
    args = seeder["args"]
    assert args[args.index("--max-deliveries") + 1] == "7"
    assert args[args.index("--compute") + 1] == "mylab.sim:energy"
    assert "TTG_PREFETCH" not in config, "unset: the worker's adaptive default applies"
    capped = render(major, "--set", "worker.prefetch=8").get("ConfigMap", "ttg-worker")["data"]
    assert capped["TTG_PREFETCH"] == "8"
    assert "--param-timeout" not in args and "--param-memory" not in args
    assert config["TTG_CONCURRENCY"] == "1"
    limited = render(
        major, "--set", "run.paramTimeout=2", "--set", "run.paramMemory=256Mi",
        "--set", "worker.concurrency=4",
    )  # fmt: skip
    args = limited.get("Job", "ttg-seed")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--param-timeout") + 1] == "2"
    assert args[args.index("--param-memory") + 1] == "256Mi"
    assert limited.get("ConfigMap", "ttg-worker")["data"]["TTG_CONCURRENCY"] == "4"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ([], "ttg.compute:square"),
        (["--set", "run.compute=mylab.sim:energy"], "ttg.compute:square,mylab.sim:energy"),
        (
            ["--set", "computeAllow={mylab,physics.kernels}", "--set", "run.compute=mylab.sim:f"],
            "ttg.compute:square,mylab,physics.kernels,mylab.sim:f",
        ),
        (["--set", "computeAllow={ttg.compute}"], "ttg.compute:square,ttg.compute"),
        (
            ["--set", "computeAllow={lab.sim:energy,exec:/opt/sim/run}"],
            "ttg.compute:square,lab.sim:energy,exec:/opt/sim/run",
        ),
    ],
)
def test_workers_and_seeder_allow_exactly_the_configured_computes(
    major: str, settings: list[str], expected: str
) -> None:
    r = render(major, *settings)
    assert r.get("ConfigMap", "ttg-worker")["data"]["TTG_COMPUTE_ALLOW"] == expected
    seeder = r.get("Job", "ttg-seed")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "TTG_COMPUTE_ALLOW", "value": expected} in seeder["env"]


def test_the_default_allowlist_allows_the_runs_function_not_its_module(major: str) -> None:
    allow = parse_allow(
        render(major, "--set", "run.compute=tests.hostile_pkg:scaled").get(
            "ConfigMap", "ttg-worker"
        )["data"]["TTG_COMPUTE_ALLOW"]
    )
    check_allowed("tests.hostile_pkg:scaled", allow)
    for other in ("tests.hostile_pkg:check_output", "ttg.compute:describe", "os:system"):
        with pytest.raises(UsageError, match="not allowed"):
            check_allowed(other, allow)


@pytest.mark.parametrize("entry", ["not a module", "os;rm", "exec:", "a:b:c", "mod:"])
def test_compute_allow_entries_must_be_computes(major: str, entry: str) -> None:
    proc = run_helm(major, "template", "ttg", str(CHART), "--set", f"computeAllow={{{entry}}}")
    assert proc.returncode != 0 and "computeAllow" in proc.stderr


def test_seeding_is_an_idempotent_post_install_and_upgrade_hook(major: str) -> None:
    job = render(major).get("Job", "ttg-seed")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0 and job["spec"]["backoffLimit"] > 0
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "ttg", (
        "the broker NetworkPolicy admits it by these labels"
    )


def notes(*args: str) -> str:
    """NOTES.txt as `helm install` prints it (Helm 4 renders it without a cluster)."""
    proc = run_helm("helm4", "install", "ttg", str(CHART), "--dry-run=client", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def test_notes_tell_the_truth_about_workers_and_helm_test() -> None:
    default = notes()
    assert "3 workers" in default and "helm test ttg" in default
    no_seed = notes("--set", "seed.enabled=false")
    assert "helm test" not in no_seed, "the test pod checks the seeded run: it would fail"
    assert "ttg seed --run" in no_seed
    hpa = notes("--set", "worker.autoscaling.enabled=true")
    assert "HorizontalPodAutoscaler (1 to 10)" in hpa and "3 workers" not in hpa


def test_helm_test_pod_checks_the_run_status(major: str) -> None:
    pod = render(major, "--set", "run.id=r9").get("Pod", "ttg-test-status")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["args"] == ["status", "--run", "r9", "--json"]


def test_config_changes_roll_the_workers(major: str) -> None:
    def checksum(*args: str) -> str:
        return render(major, *args).get("Deployment", "ttg-worker")["spec"]["template"]["metadata"][
            "annotations"
        ]["checksum/config"]

    assert checksum() != checksum("--set", "worker.leaseSeconds=5")
    assert checksum() == checksum("--set", "worker.replicas=7")


def test_worker_has_a_startup_probe_and_the_seeder_a_bounded_broker_wait(major: str) -> None:
    """A slow broker start neither kills workers nor outlasts the hook timeout silently."""
    r = render(major)
    worker = r.get("Deployment", "ttg-worker")["spec"]["template"]["spec"]["containers"][0]
    startup = worker["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    seeder = r.get("Job", "ttg-seed")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in seeder["env"]}
    helm_default_hook_timeout = 300
    assert 0 < int(env["TTG_CONNECT_TIMEOUT_SECONDS"]) < helm_default_hook_timeout
    other = render(major, "--set", "seed.connectTimeoutSeconds=100")
    seeder = other.get("Job", "ttg-seed")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "TTG_CONNECT_TIMEOUT_SECONDS", "value": "100"} in seeder["env"]


def test_workers_are_spread_probed_and_protected(major: str) -> None:
    r = render(major)
    spec = r.get("Deployment", "ttg-worker")["spec"]["template"]["spec"]
    worker = spec["containers"][0]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert spec["terminationGracePeriodSeconds"] > int(
        r.get("ConfigMap", "ttg-worker")["data"]["TTG_GRACE_SECONDS"]
    )
    pdb = r.get("PodDisruptionBudget", "ttg-worker")
    assert (
        pdb["spec"]["selector"]["matchLabels"]
        == r.get("Deployment", "ttg-worker")["spec"]["selector"]["matchLabels"]
    )


def test_broker_network_policy_admits_only_ttg_pods_of_the_release(major: str) -> None:
    for backend in ("redis", "rabbitmq"):
        r = render(major, "--set", f"backend={backend}")
        policy = r.get("NetworkPolicy", f"ttg-{backend}")
        admitted = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        assert admitted == {"app.kubernetes.io/part-of": "ttg", "ttg.io/release": "ttg"}
        clients = [d for d in r.docs if d["kind"] in {"Deployment", "Job", "Pod"}]
        assert len(clients) == 4  # worker, exporter, seeding Job, helm test pod
        for d in clients:
            labels = (
                d["metadata"]["labels"]
                if d["kind"] == "Pod"
                else d["spec"]["template"]["metadata"]["labels"]
            )
            assert admitted.items() <= labels.items(), d["metadata"]["name"]


def test_brokers_persist_and_keep_their_secret(major: str) -> None:
    r = render(major)
    sts = r.get("StatefulSet", "ttg-redis")
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    conf = r.get("ConfigMap", "ttg-redis-config")["data"]["redis.conf"].splitlines()
    assert {"appendonly yes", "appendfsync everysec"} <= set(conf)
    assert (
        r.get("Secret", "ttg-redis")["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    )
    rabbit = render(major, "--set", "backend=rabbitmq")
    conf = rabbit.get("ConfigMap", "ttg-rabbitmq-config")["data"]["rabbitmq.conf"]
    assert "consumer_timeout = 7200000" in conf


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hadolint"), str(ROOT / "worker" / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout


def test_chart_readme_values_table_is_generated_from_values_yaml() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_chart_readme.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_packaged_chart_holds_the_chart_and_nothing_else(major: str, tmp_path: Path) -> None:
    """`helm package` (the release) keeps subcharts and schemas, and no editor or VCS debris."""
    chart = tmp_path / "ttg"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt~").write_text("editor backup")
    (chart / "templates" / "worker" / ".deployment.yaml.swp").write_text("swap")
    # What chart-testing does first: the subcharts also appear as archives in charts/.
    built = run_helm(major, "dependency", "build", str(chart))
    assert built.returncode == 0, built.stderr
    assert list((chart / "charts").glob("*.tgz"))
    proc = run_helm(major, "package", str(chart), "--destination", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (package,) = tmp_path.glob("ttg-*.tgz")
    with tarfile.open(package) as tar:
        files = {m.name for m in tar.getmembers() if m.isfile()}
    assert {
        "ttg/values.schema.json",
        "ttg/charts/redis/values.schema.json",
        "ttg/charts/rabbitmq/values.schema.json",
        "ttg/templates/broker.yaml",
    } <= files
    assert not [f for f in files if f.endswith(("~", ".swp", ".tgz"))], sorted(files)

    # The archives next to the subchart directories change nothing that renders.
    def rendered(path: Path) -> list[dict[str, Any]]:
        proc = run_helm(major, "template", "ttg", str(path), "--set", "backend=rabbitmq")
        assert proc.returncode == 0, proc.stderr
        return without_generated_secrets([d for d in yaml.safe_load_all(proc.stdout) if d])

    assert rendered(chart) == rendered(CHART)


@pytest.mark.parametrize(
    "settings",
    [
        (),
        (
            "rabbitmq.replicas=3",
            "rabbitmq.managementUI.enabled=true",
            "rabbitmq.tls.enabled=true",
            "rabbitmq.tls.existingSecret=broker-tls",
            "rabbitmq.tls.clientAuth.enabled=true",
            "rabbitmq.tls.clientAuth.existingSecret=client-tls",
        ),
        ("rabbitmq.managementUI.enabled=true",),
    ],
    ids=["default", "cluster-tls-ui", "ui"],
)
def test_rabbitmq_is_a_supported_4_series_with_a_config_4_accepts(
    major: str, settings: tuple[str, ...]
) -> None:
    """3.13 is past community support; nothing rendered may be 3.x-only."""
    r = render(major, "--set", "backend=rabbitmq", *[w for s in settings for w in ("--set", s)])
    sts = r.get("StatefulSet", "ttg-rabbitmq")["spec"]["template"]["spec"]
    for c in sts["containers"] + sts["initContainers"]:
        tag = c["image"].rsplit(":", 1)[1]
        assert int(tag.split(".")[0]) >= 4, c["image"]
    conf = r.get("ConfigMap", "ttg-rabbitmq-config")["data"]
    keys = {
        line.split("=", 1)[0].strip()
        for line in conf["rabbitmq.conf"].splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    # rabbitmq.conf keys RabbitMQ 4.x documents; 3.x-only ones (classic mirroring
    # ha-* policies, mnesia tuning, cluster_partition_handling, the pre-4.1
    # cluster_formation.k8s.* peer discovery settings...) must not appear.
    known_4x = {
        "listeners.tcp.default",
        "listeners.tcp",
        "listeners.ssl.default",
        "ssl_options.cacertfile",
        "ssl_options.certfile",
        "ssl_options.keyfile",
        "ssl_options.verify",
        "ssl_options.fail_if_no_peer_cert",
        "prometheus.tcp.port",
        "loopback_users",
        "log.console",
        "log.file",
        "consumer_timeout",
        "cluster_formation.peer_discovery_backend",
        "cluster_formation.target_cluster_size_hint",
        "management.tcp.port",
        "management.ssl.port",
        "management.ssl.cacertfile",
        "management.ssl.certfile",
        "management.ssl.keyfile",
    }
    assert keys <= known_4x, keys - known_4x
    plugins = conf["enabled_plugins"].strip().removeprefix("[").removesuffix("].").split(",")
    assert plugins[0] == "rabbitmq_prometheus"
    assert set(plugins) <= {
        "rabbitmq_prometheus",
        "rabbitmq_peer_discovery_k8s",
        "rabbitmq_management",
    }


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    return dict(doc["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("backend", ["redis", "rabbitmq"])
def test_the_exporter_is_one_pod_like_the_workers_reaching_the_broker(
    major: str, backend: str
) -> None:
    r = render(major, "--set", f"backend={backend}")
    exporter = r.get("Deployment", "ttg-exporter")
    worker = r.get("Deployment", "ttg-worker")
    assert exporter["spec"]["replicas"] == 1
    spec, wspec = exporter["spec"]["template"]["spec"], worker["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    (w,) = wspec["containers"]
    assert c["args"] == ["exporter"] and c["image"] == w["image"]
    assert spec["securityContext"] == wspec["securityContext"]
    assert c["securityContext"] == w["securityContext"]
    assert {"name": "TTG_METRICS_PORT", "value": "9100"} in c["env"]
    broker_env = [e for e in w["env"] if e["name"].startswith(("TTG_BACKEND", "TTG_BROKER"))]
    assert all(e in c["env"] for e in broker_env)
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["limits"]["memory"]
    # Its Service picks the exporter pod only; the broker admits it.
    service = r.get("Service", "ttg-exporter")
    assert selects(service["spec"]["selector"], pod_labels(exporter))
    assert not selects(service["spec"]["selector"], pod_labels(worker))
    policy = r.get("NetworkPolicy", f"ttg-{backend}")
    admitted = policy["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert selects(admitted, pod_labels(exporter))


def test_monitors_scrape_workers_and_the_exporter(major: str) -> None:
    monitoring = str(SCENARIO_DIR / "monitoring-values.yaml")
    r = render(major, "-f", monitoring, apis=tuple(ALL_APIS))
    services = {d["metadata"]["name"]: d for d in r.docs if d["kind"] == "Service"}
    service_monitor = r.get("ServiceMonitor", "ttg-worker")["spec"]["selector"]
    scraped = {n for n, d in services.items() if selects(service_monitor, d["metadata"]["labels"])}
    assert scraped == {"ttg-worker", "ttg-exporter"}
    r = render(major, "-f", monitoring, *PODMONITOR_INSTEAD, apis=tuple(ALL_APIS))
    pod_monitor = r.get("PodMonitor", "ttg-worker")["spec"]["selector"]
    workloads = {
        d["metadata"]["name"]: d for d in r.docs if d["kind"] in {"Deployment", "StatefulSet"}
    }
    scraped = {n for n, d in workloads.items() if selects(pod_monitor, pod_labels(d))}
    assert scraped == {"ttg-worker", "ttg-exporter"}


def test_keda_scales_from_zero_on_the_exporters_queue_without_prometheus(major: str) -> None:
    r = render(major, "--set", "keda.enabled=true", apis=tuple(ALL_APIS))
    spec = r.get("ScaledObject", "ttg-worker")["spec"]
    assert spec["minReplicaCount"] == 0
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "metrics-api"
    meta = trigger["metadata"]
    port = r.get("Service", "ttg-exporter")["spec"]["ports"][0]["port"]
    assert meta["url"] == f"http://ttg-exporter.sweeps.svc:{port}/api/queue"
    assert meta["valueLocation"] == "queued" and meta["targetValue"] == "20"
    with_prometheus = render(
        major,
        "--set",
        "keda.enabled=true",
        "--set",
        "keda.prometheus.enabled=true",
        apis=tuple(ALL_APIS),
    )
    types = [
        t["type"] for t in with_prometheus.get("ScaledObject", "ttg-worker")["spec"]["triggers"]
    ]
    assert types == ["metrics-api", "prometheus"]
    proc = run_helm(
        major,
        "template",
        "ttg",
        str(CHART),
        "--set",
        "keda.enabled=true",
        "--set",
        "exporter.enabled=false",
        f"--api-versions={ALL_APIS[-1]}",
    )
    assert proc.returncode != 0 and "needs exporter.enabled=true" in proc.stderr
