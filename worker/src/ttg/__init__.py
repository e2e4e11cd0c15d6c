"""TTG: parameter sweeps through a queue, with proof that every parameter was computed once.

The Python API (docs: README "Using it"):

    import ttg
    space = ttg.grid(omega=[0.5, 1, 2], zeta=ttg.linspace(0, 1, 5))
    with ttg.local(workers=2) as broker:
        sweep = ttg.Sweep("osc-1", compute="sweep_sim.oscillator:simulate",
                          space=space, chunk_size=4, broker=broker)
        sweep.run(progress=True)
        df = sweep.results()
        assert sweep.verify().ok
"""

from importlib.metadata import PackageNotFoundError, version

try:
    #: The package's version, from its installed metadata (pyproject.toml is the one source).
    __version__ = version("ttg")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

from ttg.embedded import Local, local
from ttg.space import arange, grid, linspace, logspace, table
from ttg.sweep import Sweep

__all__ = [
    "Local", "Sweep", "__version__", "arange", "grid", "linspace", "local", "logspace", "table",
]  # fmt: skip
