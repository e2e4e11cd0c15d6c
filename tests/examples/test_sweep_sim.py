"""The example compute package on its own: the physics, its errors, its image."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.examples.sweep import ALLOW, COMPUTE, EXAMPLE, GRID, GUIDE
from tests.helpers import ROOT
from ttg.compute import PermanentError, check_allowed, is_permanent, load, parse_allow
from ttg.space import parse


def simulate(point: dict[str, float]) -> dict[str, object]:
    """The compute exactly as a worker loads it: by name, through the allowlist."""
    check_allowed(COMPUTE, parse_allow(ALLOW))
    result: dict[str, object] = load(COMPUTE, parse_allow(ALLOW))(point)
    return result


@pytest.mark.parametrize(
    ("zeta", "regime"),
    [(0, "undamped"), (0.2, "underdamped"), (1, "critical"), (2, "overdamped")],
)
def test_simulate_follows_the_exact_solution_in_every_regime(zeta: float, regime: str) -> None:
    out = simulate({"omega": 2.0, "zeta": zeta})
    assert out["regime"] == regime
    assert isinstance(out["max_error"], float) and out["max_error"] < 1e-6, out
    assert out["steps"] == 2000
    # No damping keeps the energy (RK4 loses a little); damping takes it.
    assert isinstance(out["energy_ratio"], float)
    assert (out["energy_ratio"] > 0.99) == (zeta == 0), out


def test_simulate_converges_at_fourth_order_in_dt() -> None:
    coarse = simulate({"omega": 1.0, "zeta": 0.1, "dt": 0.1, "t_end": 10})["max_error"]
    fine = simulate({"omega": 1.0, "zeta": 0.1, "dt": 0.05, "t_end": 10})["max_error"]
    assert isinstance(coarse, float) and isinstance(fine, float)
    assert 12 < coarse / fine < 20, (coarse, fine)


def test_simulate_settles_only_when_damped() -> None:
    assert simulate({"omega": 2.0, "zeta": 0})["settle_time"] is None
    settle = simulate({"omega": 2.0, "zeta": 0.5})["settle_time"]
    # The 2 % envelope estimate, 4 / (zeta omega), is within a period of it.
    assert isinstance(settle, float) and abs(settle - 4.0) < 3.2, settle


def test_simulate_results_are_json_and_the_same_on_every_call() -> None:
    point = {"omega": 4.0, "zeta": 0.2, "dt": 0.01}
    assert json.loads(json.dumps(simulate(point))) == simulate(point)


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ({"omega": 4, "zeta": 2, "dt": 0.1}, "dt=0.1 is too coarse for omega=4, zeta=2"),
        ({"omega": 1, "zeta": 0.1, "dt": 1e-6, "t_end": 10}, "more than 1000000"),
        ({"omega": 0, "zeta": 0.1}, "must be > 0"),
        ({"omega": 1, "zeta": -0.1}, "zeta must be >= 0"),
        ({"omega": 1}, "missing parameter 'zeta'"),
        ({"omega": 1, "zeta": 0, "damping": 2}, "unknown parameter(s) damping"),
        ({"omega": "fast", "zeta": 0}, "omega='fast' is not a number"),
        (3, "expected a grid point"),
    ],
)
def test_simulate_refuses_invalid_parameters_permanently(point: object, message: str) -> None:
    fn = load(COMPUTE, parse_allow(ALLOW))
    with pytest.raises(PermanentError) as caught:
        fn(point)
    assert message in str(caught.value)
    assert is_permanent(caught.value, fn), "TTG records it at once and never retries it"


def test_guide_grid_has_two_invalid_combinations() -> None:
    space = parse(GRID)
    invalid = []
    for i, point in enumerate(space.values(0, space.size)):
        try:
            simulate(point)
        except PermanentError:
            invalid.append((i, point))
    assert [i for i, _ in invalid] == [23, 31], invalid
    assert GRID in GUIDE.read_text(), "the guide runs this grid"


def test_example_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hadolint"), str(EXAMPLE / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout


def test_example_image_builds_from_the_worker_image_of_the_chart_s_app_version() -> None:
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    app_version = yaml.safe_load((ROOT / "charts" / "ttg" / "Chart.yaml").read_text())["appVersion"]
    assert re.search(rf"^ARG TTG_VERSION={re.escape(app_version)}$", dockerfile, re.M)
    assert re.search(
        r"^ARG BASE_IMAGE=ghcr.io/ttg-sweeps/ttg-worker:\$\{TTG_VERSION\}$", dockerfile, re.M
    ), "by default, FROM the worker image of the chart's appVersion"
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert froms and all(f == "${BASE_IMAGE}" for f in froms)
    # It runs as the worker image's numeric non-root user, which the chart's pods require.
    assert re.findall(r"^USER (\S+)", dockerfile, re.M)[-1] == "10001:10001"
