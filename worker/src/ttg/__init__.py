"""TTG: parameter sweeps through a queue, with proof that every parameter was computed once."""

__version__ = "0.4.0"
