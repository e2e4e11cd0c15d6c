"""Compute isolation: user code runs in supervised child processes, never in the worker.

``supervisor`` (in the worker) keeps one persistent child per concurrency slot
and reads back one outcome line per parameter; ``child`` is the child's entry
point (``python -m ttg.children.child``); ``protocol`` is the JSON-lines format
between them; ``program`` runs a program compute (``ttg seed --exec``).
"""
