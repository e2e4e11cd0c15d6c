"""What the example tests share: where the example lives and the sweep its README runs."""

from __future__ import annotations

from tests.helpers import ROOT

#: The example compute package (installed into .venv by `make venv`, editable).
EXAMPLE = ROOT / "examples" / "sweep-sim"
#: The newcomer's guide, whose commands the tests hold to.
GUIDE = ROOT / "examples" / "README.md"
#: The compute function and the allowlist entry the guide uses.
COMPUTE = "sweep_sim.oscillator:simulate"
ALLOW = "sweep_sim"
#: The guide's grid: 32 points, two of them (omega 2 and 4 with zeta 2 at dt 0.1) invalid.
GRID = "grid:omega=0.5,1,2,4;zeta=0,0.2,1,2;dt=0.01,0.1"
