"""What the bundled brokers render, per scenario, held against a committed record.

The broker subcharts (charts/ttg/charts/redis, charts/ttg/charts/rabbitmq) were
split from one named template each into one template file per object kind
(issue 21). broker_renders.json was written from the chart before that split
and is untouched by it: the split renders the same broker objects, byte for
byte and in the same order, in every scenario below, with Helm 3 and Helm 4.
From then on the record makes any change to what the brokers render visible in
review: after an intended change, rewrite it and commit the changed lines with
the change::

    .venv/bin/python -m tests.chart.broker_renders --update
    .venv/bin/python -m tests.chart.broker_renders --show rabbitmq/cluster-mtls-ui

(``--show`` prints one scenario's compared text: run it before and after a
change and diff the two.)

Each object is recorded as ``Kind/name digest``: a SHA-256 prefix of the
object's full text as ``helm template`` prints it, ``# Source:`` line included,
listed in the order Helm prints the objects. Full renders would be ~300 KB;
the digests compare the same bytes. Two things are normalised:

- the values a kept Secret's template generates (random on every render
  without a cluster: ``lookup`` finds nothing): the password and the Erlang
  cookie read ``<generated>``; their keys and every other value stay;
- the ttg chart's version in the ``helm.sh/chart`` label, when it is the one
  in Chart.yaml (read ``ttg-<version>``), so that a release leaves the record
  as it is; any other value is compared as it is;
- in standalone renders (a subchart installed alone), the template file named
  by ``# Source:``: there each object comes from its own file, which is what the
  split changed (test_broker_renders checks those names separately). Under the
  ttg chart, templates/broker.yaml renders every broker object, before and
  after, and the ``# Source:`` lines are compared as they are.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.chart.conftest import ALL_APIS, CERT_MANAGER_API, CHART, HELMS, SCENARIOS
from tests.helpers import ROOT

#: The committed record: scenario id -> ["Kind/name digest", ...] or "error: message".
RECORD = Path(__file__).with_name("broker_renders.json")
#: Hex digits of SHA-256 kept per object: 64 bits, ample to tell two texts apart.
DIGEST_CHARS = 16
#: Helm's limit for a release name (the broker's names are cut to fit it).
LONGEST_RELEASE = "sweeps-of-the-materials-science-group-in-eu-west-1-xy"
#: Where the ttg chart's broker objects come from: broker.yaml, or a subchart's own files.
BROKER_SOURCE = re.compile(r"ttg/(templates/broker\.yaml|charts/(redis|rabbitmq)/templates/.+)")
#: A failed render's message, without the template location (which the layout decides).
EXECUTION_ERROR = re.compile(r"^Error: execution error at \([^)]*\): (?P<message>.*)$", re.M)
#: A data entry of a Secret, base64 in quotes.
SECRET_VALUE = re.compile(r'^(?P<key>  [\w.-]+): "(?P<b64>[A-Za-z0-9+/=]*)"$', re.M)
#: What the chart generates (randAlphaNum 32 for a password, 48 for a cookie).
GENERATED = re.compile(r"[A-Za-z0-9]{32}([A-Za-z0-9]{16})?")

#: Every object's helm.sh/chart label, for this version of the chart (see normalised).
CHART_LABEL = (
    f"helm.sh/chart: ttg-{yaml.safe_load((CHART / 'Chart.yaml').read_text())['version']}\n"
)

CM = f"--api-versions={CERT_MANAGER_API}"


def sets(*settings: str) -> tuple[str, ...]:
    """``--set`` arguments, one per ``key=value``."""
    return tuple(word for s in settings for word in ("--set", s))


def set_json(key: str, value: object) -> tuple[str, ...]:
    """A ``--set-json`` argument: lists, maps and multi-line strings, as typed."""
    return ("--set-json", f"{key}={json.dumps(value)}")


@dataclass(frozen=True)
class Scenario:
    """One ``helm template`` of the ttg chart, or of a broker subchart alone.

    Attributes:
        id: Key in the record.
        args: Arguments after the chart.
        chart: ``ttg``, or ``redis`` / ``rabbitmq`` for a subchart alone.
        release: Release name.
    """

    id: str
    args: tuple[str, ...]
    chart: str = "ttg"
    release: str = "ttg"

    @property
    def standalone(self) -> bool:
        return self.chart != "ttg"


def _tls(backend: str, *more: str) -> tuple[str, ...]:
    return sets(
        f"{backend}.tls.enabled=true", f"{backend}.tls.certManager.issuerRef.name=ca-issuer", *more
    )


#: Pod placement and pull secrets (the parent's are added to the subchart's, once each).
_PLACEMENT = (
    *set_json("imagePullSecrets", [{"name": "shared-pull"}]),
    *set_json("{b}.imagePullSecrets", [{"name": "broker-pull"}, {"name": "shared-pull"}]),
    *set_json("{b}.nodeSelector", {"disktype": "ssd"}),
    *set_json("{b}.tolerations", [{"key": "brokers", "operator": "Exists"}]),
    *set_json("{b}.resources", {"requests": {"cpu": "1"}, "limits": {"memory": "3Gi"}}),
    *sets("{b}.persistence.storageClass=fast", "{b}.persistence.size=9Gi"),
    *sets("{b}.image.tag=custom", "{b}.image.pullPolicy=Always"),
)


def _placement(backend: str) -> tuple[str, ...]:
    return tuple(a.replace("{b}", backend) for a in _PLACEMENT)


#: Every scenario the chart tests render, and every branch of the broker templates:
#: the values files (charts/ttg/ci, tests/chart/scenarios, values/), both backends
#: and external, TLS from cert-manager and from Secrets, mutual TLS, a cluster,
#: the management UI, each object switched off, every pod setting, the longest
#: release name, the renders that must fail, and each subchart on its own.
SCENARIO_LIST = (
    *(
        Scenario(
            f"{p.parent.name}/{p.name}", ("-f", str(p), *(f"--api-versions={a}" for a in ALL_APIS))
        )
        for p in SCENARIOS
    ),
    Scenario("defaults", ()),
    Scenario("redis/tls", (*_tls("redis"), CM)),
    Scenario(
        "redis/mtls-cluster-issuer",
        (
            *_tls(
                "redis",
                "redis.tls.clientAuth.enabled=true",
                "redis.tls.certManager.issuerRef.kind=ClusterIssuer",
                "redis.tls.clusterDomain=cluster.example",
            ),
            *set_json("redis.tls.extraDnsNames", ["redis.example.org", "10.0.0.7"]),
            CM,
        ),
    ),
    Scenario(
        "redis/own-server-cert-cert-manager-client",
        (
            *_tls(
                "redis", "redis.tls.existingSecret=redis-tls", "redis.tls.clientAuth.enabled=true"
            ),
            CM,
        ),
    ),
    Scenario(
        "redis/bare",
        sets(
            "redis.auth.enabled=false",
            "redis.persistence.enabled=false",
            "redis.networkPolicy.enabled=false",
        ),
    ),
    Scenario(
        "redis/every-setting",
        (
            *_placement("redis"),
            *sets("redis.auth.secretKey=redis-password"),
            *set_json("redis.extraConfig", "maxmemory 512mb\nmaxclients 100\n"),
        ),
    ),
    Scenario("redis/longest-release", (), release=LONGEST_RELEASE),
    Scenario("redis/tls-without-cert-manager", sets("redis.tls.enabled=true")),
    Scenario("rabbitmq/tls", (*sets("backend=rabbitmq"), *_tls("rabbitmq"), CM)),
    Scenario(
        "rabbitmq/mtls-ui",
        (
            *sets("backend=rabbitmq", "rabbitmq.managementUI.enabled=true"),
            *_tls("rabbitmq", "rabbitmq.tls.clientAuth.enabled=true"),
            CM,
        ),
    ),
    Scenario(
        "rabbitmq/cluster-mtls-ui",
        (
            *sets("backend=rabbitmq", "rabbitmq.replicas=3", "rabbitmq.managementUI.enabled=true"),
            *_tls("rabbitmq", "rabbitmq.tls.clientAuth.enabled=true"),
            *set_json("rabbitmq.tls.extraDnsNames", ["amqp.example.org"]),
            *set_json(
                "rabbitmq.managementUI.allowFrom",
                [{"podSelector": {"matchLabels": {"app": "admin"}}}],
            ),
            CM,
        ),
    ),
    Scenario(
        "rabbitmq/cluster-hard",
        sets("backend=rabbitmq", "rabbitmq.replicas=5", "rabbitmq.podAntiAffinity=hard"),
    ),
    Scenario(
        "rabbitmq/ui",
        (
            *sets("backend=rabbitmq", "rabbitmq.managementUI.enabled=true"),
            *set_json("rabbitmq.managementUI.allowFrom", [{"ipBlock": {"cidr": "10.0.0.0/8"}}]),
        ),
    ),
    Scenario(
        "rabbitmq/bare",
        sets(
            "backend=rabbitmq",
            "rabbitmq.auth.existingSecret=rabbitmq-auth",
            "rabbitmq.persistence.enabled=false",
            "rabbitmq.networkPolicy.enabled=false",
        ),
    ),
    Scenario(
        "rabbitmq/every-setting",
        (
            *sets(
                "backend=rabbitmq",
                "rabbitmq.auth.username=sweeper",
                "rabbitmq.consumerTimeoutMs=60000",
            ),
            *_placement("rabbitmq"),
            *set_json("rabbitmq.extraConfig", "vm_memory_high_watermark.relative = 0.6\n"),
        ),
    ),
    Scenario(
        "rabbitmq/longest-release-cluster",
        sets("backend=rabbitmq", "rabbitmq.replicas=3"),
        release=LONGEST_RELEASE,
    ),
    Scenario(
        "rabbitmq/tls-without-issuer",
        (*sets("backend=rabbitmq", "rabbitmq.tls.enabled=true"), CM),
    ),
    Scenario("standalone/redis-off", (), chart="redis"),
    Scenario("standalone/redis", sets("standalone=true"), chart="redis"),
    Scenario(
        "standalone/redis-mtls-bare",
        (
            *sets(
                "standalone=true",
                "tls.enabled=true",
                "tls.certManager.issuerRef.name=ca-issuer",
                "tls.clientAuth.enabled=true",
                "auth.enabled=false",
                "persistence.enabled=false",
            ),
            *set_json("imagePullSecrets", [{"name": "pull"}]),
            CM,
        ),
        chart="redis",
    ),
    Scenario("standalone/rabbitmq-off", (), chart="rabbitmq"),
    Scenario("standalone/rabbitmq", sets("standalone=true"), chart="rabbitmq"),
    Scenario(
        "standalone/rabbitmq-cluster-mtls-ui",
        (
            *sets(
                "standalone=true",
                "replicas=3",
                "managementUI.enabled=true",
                "tls.enabled=true",
                "tls.certManager.issuerRef.name=ca-issuer",
                "tls.clientAuth.enabled=true",
            ),
            *set_json("managementUI.allowFrom", [{"ipBlock": {"cidr": "10.0.0.0/8"}}]),
            CM,
        ),
        chart="rabbitmq",
    ),
)


@dataclass(frozen=True)
class Doc:
    """One object as ``helm template`` printed it."""

    source: str
    text: str

    @property
    def head(self) -> tuple[str, str]:
        body = yaml.safe_load(self.text)
        return str(body["kind"]), str(body["metadata"]["name"])


def helm_template(helm: Path, scenario: Scenario) -> subprocess.CompletedProcess[str]:
    chart = CHART if not scenario.standalone else CHART / "charts" / scenario.chart
    return subprocess.run(
        [
            str(helm),
            "template",
            scenario.release,
            str(chart),
            "--namespace",
            "sweeps",
            *scenario.args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def split(stdout: str) -> list[Doc]:
    """Helm's output, one Doc per ``---`` / ``# Source: path`` block."""
    docs = []
    for block in re.split(r"^---\n", stdout, flags=re.M):
        if not block.strip():
            continue
        first, _, _ = block.partition("\n")
        assert first.startswith("# Source: "), block[:200]
        docs.append(Doc(first.removeprefix("# Source: "), block))
    return docs


def _mask_generated(entry: re.Match[str]) -> str:
    generated = GENERATED.fullmatch(base64.b64decode(entry["b64"]).decode(errors="replace"))
    return f"{entry['key']}: <generated>" if generated else entry[0]


def normalised(doc: Doc, *, standalone: bool) -> str:
    """The text compared: generated values and the chart's version masked, standalone file cut."""
    text = doc.text.replace(CHART_LABEL, "helm.sh/chart: ttg-<version>\n")
    body = yaml.safe_load(text)
    annotations = body.get("metadata", {}).get("annotations") or {}
    if body["kind"] == "Secret" and annotations.get("helm.sh/resource-policy") == "keep":
        head, sep, data = text.partition("\ndata:\n")
        text = head + sep + SECRET_VALUE.sub(_mask_generated, data)
    if standalone:
        chart_dir = doc.source.split("/templates/", 1)[0]
        text = text.replace(f"# Source: {doc.source}\n", f"# Source: {chart_dir}/templates/…\n", 1)
    return text


def broker_docs(helm: Path, scenario: Scenario) -> list[tuple[str, str, str]] | str:
    """(kind, name, compared text) of the broker's objects in Helm's order, or the error message."""
    proc = helm_template(helm, scenario)
    if proc.returncode != 0:
        found = EXECUTION_ERROR.search(proc.stderr)
        assert found, proc.stderr
        return f"error: {found['message']}"
    out = []
    for doc in split(proc.stdout):
        if scenario.standalone or BROKER_SOURCE.fullmatch(doc.source):
            out.append((*doc.head, normalised(doc, standalone=scenario.standalone)))
    return out


def record_of(helm: Path, scenario: Scenario) -> list[str] | str:
    """The scenario's entry in the record."""
    docs = broker_docs(helm, scenario)
    if isinstance(docs, str):
        return docs
    return [
        f"{kind}/{name} {hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]}"
        for kind, name, text in docs
    ]


def load_record() -> dict[str, list[str] | str]:
    data: dict[str, list[str] | str] = json.loads(RECORD.read_text())
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--update", action="store_true", help=f"rewrite {RECORD.name}")
    action.add_argument("--show", metavar="SCENARIO", help="print a scenario's compared text")
    parser.add_argument("--helm", default="helm4", choices=sorted(HELMS))
    args = parser.parse_args(argv)
    helm = HELMS[args.helm]
    if args.show:
        (scenario,) = [s for s in SCENARIO_LIST if s.id == args.show]
        docs = broker_docs(helm, scenario)
        text = docs + "\n" if isinstance(docs, str) else "".join(f"---\n{t}" for *_, t in docs)
        sys.stdout.write(text)
        return 0
    record = {s.id: record_of(helm, s) for s in SCENARIO_LIST}
    RECORD.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    sys.stdout.write(f"{RECORD.relative_to(ROOT)}: {len(record)} scenarios\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
