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

from typing import TYPE_CHECKING, Any

from ttg.space import arange, grid, linspace, logspace, table

if TYPE_CHECKING:
    from ttg.embedded import Local, local
    from ttg.sweep import Sweep

    __version__: str

#: Imported on first use: a compute process (``ttg.children``) imports the package
#: without ever needing the API, and must not pay for the broker clients at every start.
_LAZY = {"Local": "ttg.embedded", "local": "ttg.embedded", "Sweep": "ttg.sweep"}

__all__ = [
    "Local", "Sweep", "__version__", "arange", "grid", "linspace", "local", "logspace", "table",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    """``ttg.__version__`` (``ttg.version``) and the API, each on first use."""
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "__version__":
        from ttg.version import version  # noqa: PLC0415

        globals()["__version__"] = value = version()
        return value
    raise AttributeError(f"module 'ttg' has no attribute {name!r}")
