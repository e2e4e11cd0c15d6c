"""sweep-sim: an example TTG compute package (see examples/README.md).

The compute function is ``sweep_sim.oscillator:simulate``.
"""

__version__ = "0.1.0"
