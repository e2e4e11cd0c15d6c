"""The report opened in a real headless Chromium: it renders, raises nothing, looks like something.

The page records script errors, console errors and blocked fetches into its
DOM and marks itself rendered once every chart has a size (ttg/report/page.py);
``--dump-dom`` reads that back after the scripts ran. A screenshot proves
pixels were drawn; it stays in the test's tmp dir (path printed) for a human.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests import scenarios
from tests.conftest import BackendEnv
from tests.fault.conftest import LocalHarness, harness, seed
from tests.helpers import ROOT, ttg_json
from tests.reportdata import SyntheticRun
from ttg.endpoint import Endpoint
from ttg.processes import LocalWorkers
from ttg.report import write_report
from ttg.sweep import Sweep

#: Debian's chromium package; ci/ensure-packages.sh installs it (make tools).
CHROMIUM = Path("/usr/bin/chromium")
#: Flags for a quiet, offline, throwaway browser: no sandbox (root in CI), no
#: GPU, no background traffic of its own.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # Let the page's scripts run to the end (virtual time: no real waiting).
    "--virtual-time-budget=10000",
]
WINDOW = (1280, 2400)

pytestmark = pytest.mark.slow

__all__ = ["harness"]  # the fault suite's fixture, used here too


@pytest.fixture(scope="module")
def chromium() -> Path:
    """The browser, installed with ci/ensure-packages.sh if missing."""
    if not CHROMIUM.exists():
        proc = subprocess.run(
            ["bash", str(ROOT / "ci" / "ensure-packages.sh")],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if not CHROMIUM.exists():
            pytest.skip(
                "!!! HEADLESS CHROMIUM COULD NOT BE INSTALLED: the report was NOT checked in a "
                f"browser (ci/ensure-packages.sh exited {proc.returncode}: "
                f"{proc.stderr.strip()[-300:]}) !!!"
            )
    return CHROMIUM


def browse(browser: Path, page: Path, tmp_path: Path, *args: str) -> str:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    proc = subprocess.run(
        [str(browser), *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    shutil.rmtree(profile, ignore_errors=True)
    return proc.stdout


def render_status(dom: str) -> tuple[dict[str, str], str]:
    """The attributes of ``#render-status`` and the text of ``#render-errors``."""
    tag = re.search(r'<div id="render-status"([^>]*)>', dom)
    assert tag, "no #render-status in the dumped DOM"
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag.group(1)))
    errors = re.search(r'<pre id="render-errors"[^>]*>(.*?)</pre>', dom, re.S)
    return attrs, html.unescape(errors.group(1)) if errors else ""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with failures and a worker killed at 30%."""
    run = SyntheticRun(2000)
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report(
        path, run="sweep-1", verify=run.verify(), spec=run.spec(), chunks=run.rows(),
        events=run.events(),
    )  # fmt: skip
    return path


def test_report_renders_in_chromium_without_errors(
    chromium: Path, report: Path, tmp_path: Path
) -> None:
    dom = browse(chromium, report, tmp_path, "--dump-dom")
    status, errors = render_status(dom)
    assert errors == "" and status.get("data-errors") == "0", f"page errors: {errors}"
    assert status.get("data-charts") == "3" and status.get("data-drawn") == "3", status
    assert status.get("data-rendered") == "yes", status


def test_report_screenshot_shows_the_charts(chromium: Path, report: Path, tmp_path: Path) -> None:
    from PIL import Image  # noqa: PLC0415 - Pillow comes with matplotlib (the report extra)

    shot = tmp_path / "report.png"
    browse(
        chromium, report, tmp_path, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}"
    )
    print(f"\nreport screenshot: {shot}")  # noqa: T201 - a human looks at it
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 100_000
    with Image.open(shot) as img:
        assert img.size == WINDOW
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None
    present = {rgb for _n, rgb in colours}
    assert len(present) > 50, f"only {len(present)} colours: a blank page?"
    # The chunk bars (ok blue) and the lost worker's cross (dark red) are on screen.
    assert (0x4C, 0x78, 0xA8) in present
    assert (0xB0, 0x00, 0x20) in present


def test_browser_check_catches_script_errors_and_network_fetches(
    chromium: Path, report: Path, tmp_path: Path
) -> None:
    # The check itself must be able to fail: break a copy of the report twice.
    broken = tmp_path / "broken.html"
    text = report.read_text()
    text = text.replace(
        "<footer>",
        '<img src="http://127.0.0.1:9/pixel.png" alt="">'
        '<script>throw new Error("boom")</script><footer>',
    )
    broken.write_text(text)
    status, errors = render_status(browse(chromium, broken, tmp_path, "--dump-dom"))
    assert "boom" in errors, errors
    assert "blocked by the page policy: http://127.0.0.1:9/pixel.png" in errors, errors
    assert int(status.get("data-errors", "0")) >= 2, status


def test_report_of_a_real_run_with_a_killed_worker(
    chromium: Path, backend: BackendEnv, harness: LocalHarness, workers: LocalWorkers,
    run_id: str, tmp_path: Path,
) -> None:  # fmt: skip
    seed(backend, run_id, "--params", "4000", "--chunk-size", "100", "--work-ms", "80")
    workers.start(2)
    killed = scenarios.kill_worker_holding_chunk_at(harness, run_id, 0.3)
    scenarios.wait_complete(harness, run_id, timeout=120)
    page = tmp_path / "report.html"

    out = ttg_json("report", "--run", run_id, "--output", str(page), env=backend.env)

    assert out["_exit"] == 0, out
    assert out["chunks"] == 40 and killed.worker in out["lost_workers"], out
    status, errors = render_status(browse(chromium, page, tmp_path, "--dump-dom"))
    assert errors == "" and status.get("data-rendered") == "yes", (status, errors)
    assert f"{killed.worker} LOST" in page.read_text() or killed.worker in page.read_text()


#: Where the screenshot of a real run with several distinct errors is kept for people.
ERRORS_SHOT = Path(tempfile.gettempdir()) / "ttg-report-errors.png"


def test_report_of_a_real_run_with_several_distinct_errors(
    chromium: Path, backend: BackendEnv, workers: LocalWorkers, run_id: str, tmp_path: Path
) -> None:
    """The vocabulary and the grouping, read back from the page the browser rendered."""
    sweep = Sweep(
        run_id, compute="tests.computes:several_errors", space=200, chunk_size=10, work_ms=30,
        broker=Endpoint(backend.name, backend.url, tls=backend.tls),
    )  # fmt: skip
    workers.start(2)
    assert sweep.run(timeout=120).complete
    page = tmp_path / "report.html"
    sweep.report(page)

    dom = browse(chromium, page, tmp_path, "--dump-dom")
    status, errors = render_status(dom)
    assert errors == "" and status.get("data-rendered") == "yes", (status, errors)
    text = html.unescape(re.sub(r"<[^>]+>", "", dom))
    # Two verdicts: exactly once holds; 41 parameters failed (20 + 20 + 1) of 200.
    assert "Exactly once: holds" in text
    assert "Parameters: 41 parameters failed (41 raised, 0 in dead chunks) of 200" in text
    assert "EXACTLY ONCE · WITH FAILURES" in text
    # One row per distinct error (not per chunk), counts, and the example's value.
    table = dom.split('<table id="error-groups">', 1)[1].split("</table>", 1)[0]
    rows = [html.unescape(re.sub(r"<[^>]+>", "|", r)) for r in table.split("</tr>")[1:-1]]
    assert len(rows) == 3, rows
    cells = [[c for c in r.split("|") if c.strip()] for r in rows]
    assert [c[1:4] for c in cells] == [
        ["KeyError", "20", "20"], ["ZeroDivisionError", "20", "20"], ["ValueError", "1", "1"],
    ]  # fmt: skip
    assert cells[0][4] == "KeyError: 'mass'" and cells[0][5] == "parameter 7 (chunk 0)"
    assert cells[1][4] == "ZeroDivisionError: integer division or modulo by zero"
    assert cells[1][5] == "parameter 3 (chunk 0)" and cells[1][6] == "3"
    assert cells[2][4:7] == ["ValueError: negative mass at x=50", "parameter 50 (chunk 5)", "50"]
    assert "Failed attempts that a later attempt replaced" not in text  # none were retried
    for label, value in (
        ("chunks finished", "20 / 20"), ("chunks with errors", "20"),
        ("parameters ok", "159 / 200"), ("parameters failed", "41"), ("parameters dead", "0"),
    ):  # fmt: skip
        assert f"{value}{label}" in text.replace("\n", ""), label

    ERRORS_SHOT.parent.mkdir(parents=True, exist_ok=True)
    shot = tmp_path / "errors.png"
    browse(chromium, page, tmp_path, f"--screenshot={shot}", "--window-size=1280,3600")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shutil.copy(shot, ERRORS_SHOT.with_name(f"{ERRORS_SHOT.stem}-{backend.name}.png"))
    print(f"\nreport screenshot: {ERRORS_SHOT.with_name(f'{ERRORS_SHOT.stem}-{backend.name}.png')}")  # noqa: T201
