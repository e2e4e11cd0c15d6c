"""Broker backends, one package each; ``ttg.endpoint.BACKENDS`` lists them.

Importing this package imports no backend: ``open_broker`` imports the one a
command names.
"""
