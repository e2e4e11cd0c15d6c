"""Broker backends, one module each; imported by name from ``ttg.broker.BACKENDS``."""
