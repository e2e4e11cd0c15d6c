"""What NOTES.txt tells an operator to run works (issue 20: N6, N7).

`helm install` prints NOTES.txt, but only `helm install` does, and it cannot be
given APIs (KEDA's) the way `helm template --api-versions` can. So the notes
are rendered by the same Helm, with the same values and APIs, from a copy of
the chart in which NOTES.txt's text is wrapped, unchanged, in a named template
that a ConfigMap prints (``render_notes``).

Then the commands the notes give are taken at their word: each `kubectl exec
deploy/NAME -- ttg ...` must name a Deployment that has a pod, also while KEDA
holds the workers at zero, and run there, with that pod's rendered env
(tests/chart/pods.py), against a real broker started from the rendered broker
pod, it must watch the run to its end, verify it and export every row. Each
`helm upgrade` they give keeps the user's values across chart versions
(`--reset-then-reuse-values --version X`), never `--reuse-values`, whose replay
of the old release's values a newer chart's schema refuses.
"""

from __future__ import annotations

import csv
import io
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.chart.brokers import redis_pod
from tests.chart.conftest import ALL_APIS, CHART, Rendered, render, run_helm
from tests.chart.pods import Pod
from tests.chart.wiring import WORKER_ENTRYPOINT, has_exporter, print_logs, ttg_pod
from tests.helpers import ROOT

pytestmark = pytest.mark.chart

#: `kubectl -n NS exec [-it] deploy/NAME -- ttg ARGS [> file]` in the notes.
EXEC = re.compile(
    r"^\s*kubectl -n (\S+) exec (?:-it )?deploy/(\S+) -- (ttg [^>\n]+?)(?: > \S+)?$", re.M
)
#: A `helm upgrade` command line (indented, as the notes and READMEs show commands).
UPGRADE = re.compile(r"^\s*helm upgrade .*$", re.M)
KEDA = ("--set", "keda.enabled=true")


@cache
def render_notes(major: str, *args: str, apis: tuple[str, ...] = ()) -> str:
    """NOTES.txt rendered by Helm ``major`` with ``args`` and ``apis``, as `helm install` would."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "ttg"
        shutil.copytree(CHART, chart)
        text = (chart / "templates" / "NOTES.txt").read_text()
        (chart / "templates" / "NOTES.txt").unlink()
        (chart / "templates" / "_notes_under_test.tpl").write_text(
            '{{- define "ttg-test.notes" -}}\n' + text + "\n{{- end }}\n"
        )
        (chart / "templates" / "notes-under-test.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-under-test\n"
            'data:\n  notes: {{ include "ttg-test.notes" . | quote }}\n'
        )
        proc = run_helm(
            major, "template", "ttg", str(chart), "--namespace", "sweeps",
            *(f"--api-versions={a}" for a in apis), *args,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    (doc,) = [
        d
        for d in yaml.safe_load_all(proc.stdout)
        if d and d["metadata"]["name"] == "notes-under-test"
    ]
    notes: str = doc["data"]["notes"]
    return notes


def test_the_harness_renders_what_helm_install_prints() -> None:
    """Where `helm install` can render them (no API needed), the notes are the same text."""
    proc = run_helm("helm4", "install", "ttg", str(CHART), "-n", "sweeps", "--dry-run=client")
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.split("NOTES:\n", 1)[1]
    assert printed.strip() == render_notes("helm4").strip()


CASES = {
    "default": ((), ()),
    "keda": (KEDA, tuple(ALL_APIS)),
    "hpa": (("--set", "worker.autoscaling.enabled=true"), ()),
    "no-seeding": (("--set", "seed.enabled=false"), ()),
    "no-exporter": (("--set", "exporter.enabled=false"), ()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_notes_exec_into_a_deployment_that_has_a_pod(major: str, case: str) -> None:
    args, apis = CASES[case]
    notes = render_notes(major, *args, apis=apis)
    r = render(major, *args, apis=apis)
    commands = EXEC.findall(notes)
    assert len(commands) >= 3, notes
    for namespace, name, _ in commands:
        assert namespace == "sweeps"
        deployment = r.get("Deployment", name)
        # A Deployment whose pod always exists: a fixed count of at least one, never
        # one KEDA or an autoscaler may hold at zero.
        assert deployment["spec"].get("replicas", 0) >= 1, (case, name)
    targets = {name for _, name, _ in commands}
    assert targets == {"ttg-worker" if case == "no-exporter" else "ttg-exporter"}, targets


def test_with_keda_from_zero_no_command_names_a_worker(major: str) -> None:
    notes = render_notes(major, *KEDA, apis=tuple(ALL_APIS))
    assert "workers scaled by KEDA on queued chunks (0 to 20)" in notes
    assert "deploy/ttg-worker" not in notes
    assert (
        "replicas"
        not in render(major, *KEDA, apis=tuple(ALL_APIS)).get("Deployment", "ttg-worker")["spec"]
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_notes_upgrade_keeping_values_across_chart_versions(major: str, case: str) -> None:
    args, apis = CASES[case]
    notes = render_notes(major, *args, apis=apis)
    (upgrade,) = UPGRADE.findall(notes)
    words = shlex.split(upgrade)
    assert "--reset-then-reuse-values" in words and "--reuse-values" not in words, upgrade
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    assert words[words.index("--version") + 1] == version, upgrade
    assert "run.id=<new id>" in upgrade


@pytest.mark.parametrize(
    "doc", ["README.md", "charts/ttg/README.md", "argocd/README.md", "examples/README.md"]
)
def test_readmes_never_upgrade_with_reuse_values(doc: str) -> None:
    text = (ROOT / doc).read_text()
    for line in UPGRADE.findall(text) + re.findall(r"`(helm upgrade [^`]*)`", text):
        assert "--reuse-values" not in line.split(), (doc, line)
        if "--reset-then-reuse-values" in line.split():
            assert "--version" in line.split(), (doc, line)


# -- the notes' commands, run where they say ------------------------------------------------

RUN, PARAMS, CHUNK_SIZE = "notes-1", 2000, 100


@pytest.mark.integration
@pytest.mark.slow
def test_notes_commands_watch_verify_and_export_a_run_with_keda_at_zero(tmp_path: Path) -> None:
    if not has_exporter():
        pytest.skip("this ttg has no `exporter` subcommand")
    args = (*KEDA, "--set", f"run.id={RUN}", "--set", f"run.params={PARAMS}",
            "--set", f"run.chunkSize={CHUNK_SIZE}", "--set", "run.workMs=20")  # fmt: skip
    notes = render_notes("helm4", *args, apis=tuple(ALL_APIS))
    rendered: Rendered = render("helm4", *args, apis=tuple(ALL_APIS))
    # verb -> (Deployment, the words after `ttg`)
    commands = {
        cmd.split()[1]: (name, shlex.split(cmd)[1:]) for _, name, cmd in EXEC.findall(notes)
    }
    assert set(commands) >= {"status", "verify", "results"}, commands
    broker = redis_pod(rendered, tmp_path / "broker", tmp_path / "pvc-data").start()
    addresses = {"ttg-redis:6379": f"127.0.0.1:{broker.port}"}
    pods: list[Pod] = []

    def pod_of(kind: str, name: str, workdir: str) -> Pod:
        return ttg_pod(rendered, kind, name, addresses=addresses, workdir=tmp_path / workdir)

    def notes_command(verb: str) -> subprocess.Popen[str]:
        """The notes' `ttg VERB ...`, in the container of the Deployment they name."""
        name, argv = commands[verb]
        pod = pod_of("Deployment", name, f"exec-{verb}")
        (container,) = pod.spec["containers"]
        # The image's entrypoint is `ttg`: here, the venv's.
        return subprocess.Popen(
            [*WORKER_ENTRYPOINT, *argv],
            env=pod.env(container["name"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    try:
        seeded = pod_of("Job", "ttg-seed", "seed").run("seed")
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        # No worker yet (KEDA at zero): the notes' watch runs all the same.
        watch = notes_command("status")
        # KEDA scales a worker up; the watch ends when the run is complete.
        worker = pod_of("Deployment", "ttg-worker", "worker")
        pods.append(worker)
        worker.start("worker")
        out, err = watch.communicate(timeout=300)
        assert watch.returncode == 0, out + err
        verify = notes_command("verify")
        out, err = verify.communicate(timeout=120)
        assert verify.returncode == 0 and "VERIFIED" in out, out + err
        results = notes_command("results")
        out, err = results.communicate(timeout=120)
        assert results.returncode == 0, err
        rows = list(csv.DictReader(io.StringIO(out)))
        assert len(rows) == PARAMS, len(rows)
        assert worker.stop(signal.SIGTERM, timeout=60) == [0], worker.log("worker")
    finally:
        for pod in pods:
            pod.stop(signal.SIGKILL)
        broker.stop()
        print_logs(tmp_path)
