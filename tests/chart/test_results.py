"""The results store in the chart: results.url, its volume, its credentials, its egress."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import CHART, assert_valid_strictly, render, run_helm, selects

FILE = ("--set", "results.url=file:///data/ttg", "--set", "results.persistence.enabled=true",
        "--set", "results.persistence.storageClass=nfs-rwx")  # fmt: skip
S3 = ("--set", "results.url=s3://sweep-results/ttg", "--set", "results.existingSecret=s3",
      "--set", "results.endpoint=http://minio:9000")  # fmt: skip


def env_of(spec: dict[str, Any]) -> dict[str, Any]:
    (c,) = spec["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def mounts_of(spec: dict[str, Any]) -> dict[str, str]:
    (c,) = spec["containers"]
    return {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}


def test_a_file_store_is_a_kept_readwritemany_claim_mounted_at_its_path(major: str) -> None:
    r = render(major, *FILE)
    assert_valid_strictly(r)
    pvc = r.get("PersistentVolumeClaim", "ttg-results")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == "nfs-rwx"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    specs = dict(r.pod_specs())
    for name in ("ttg-worker", "ttg-seed", "ttg-exporter"):
        assert mounts_of(specs[name])["results"] == "/data/ttg", name
        (volume,) = [v for v in specs[name]["volumes"] if v["name"] == "results"]
        assert volume["persistentVolumeClaim"]["claimName"] == "ttg-results"
    # The seeding Job records the store in each run (and checks it first).
    assert env_of(specs["ttg-seed"])["TTG_RESULTS_URL"] == "file:///data/ttg"
    assert r.get("ConfigMap", "ttg-worker")["data"]["TTG_RESULTS_URL"] == "file:///data/ttg"


def test_an_existing_claim_is_used_as_it_is(major: str) -> None:
    r = render(major, "--set", "results.url=file:///data/ttg",
               "--set", "results.persistence.existingClaim=shared")  # fmt: skip
    assert "PersistentVolumeClaim" not in r.kinds()
    (volume,) = [v for v in dict(r.pod_specs())["ttg-worker"]["volumes"] if v["name"] == "results"]
    assert volume["persistentVolumeClaim"]["claimName"] == "shared"


def test_an_s3_store_gets_its_credentials_from_the_secret(major: str) -> None:
    r = render(major, *S3)
    assert_valid_strictly(r)
    assert "PersistentVolumeClaim" not in r.kinds()
    for name, spec in r.pod_specs():
        if name in ("ttg-worker", "ttg-seed", "ttg-exporter"):
            env = env_of(spec)
            assert env["AWS_ACCESS_KEY_ID"] == {
                "secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}
            }, name
            assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "s3"
            assert env["AWS_SESSION_TOKEN"]["secretKeyRef"]["optional"] is True
            assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
            assert "results" not in mounts_of(spec)


def test_the_default_keeps_results_in_the_broker_and_adds_nothing(major: str) -> None:
    r = render(major)
    assert "PersistentVolumeClaim" not in r.kinds()
    seed = dict(r.pod_specs())["ttg-seed"]
    assert env_of(seed)["TTG_RESULTS_URL"] == "broker"
    assert not any(k.startswith("AWS_") for k in env_of(seed))


def test_the_egress_policy_lets_ttg_pods_reach_the_store_dns_and_the_broker(major: str) -> None:
    to = 'results.networkPolicy.to=[{"ipBlock":{"cidr":"10.9.0.0/16"}}]'
    r = render(major, *S3, "--set", "results.networkPolicy.enabled=true", "--set-json", to)
    assert_valid_strictly(r)
    policy = r.get("NetworkPolicy", "ttg-egress")
    assert policy["spec"]["policyTypes"] == ["Egress"]
    store, dns, local = policy["spec"]["egress"]
    assert store["to"] == [{"ipBlock": {"cidr": "10.9.0.0/16"}}]
    assert {p["port"] for p in store["ports"]} == {443, 9000}
    assert {p["port"] for p in dns["ports"]} == {53}
    assert local["to"] == [{"podSelector": {}}]
    selector = policy["spec"]["podSelector"]
    for d in r.docs:
        if d["kind"] in ("Deployment", "Job"):
            labels = d["spec"]["template"]["metadata"]["labels"]
            ttg_pod = labels.get("app.kubernetes.io/name") == "ttg"
            assert selects(selector, labels) == ttg_pod, d["metadata"]["name"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "results.url=file:///data/ttg"), "set results.persistence.enabled"),
        # Helm 3 names a field results.url, Helm 4 /results/url.
        (("--set", "results.url=ftp://x/y"), "results/url"),
        (("--set", "results.persistence.enabled=true"), "results.persistence is for a file://"),
        (("--set", "results.url=s3://Bad_Bucket"), "results/url"),
        (("--set", "results.endpoint=minio:9000"), "results/endpoint"),
    ],
)
def test_values_that_cannot_work_fail_naming_the_field(
    major: str, args: tuple[str, ...], message: str
) -> None:
    proc = run_helm(major, "template", "ttg", str(CHART), *args)
    assert proc.returncode != 0
    said = proc.stderr
    assert message in said or message in said.replace("results.", "results/"), said
