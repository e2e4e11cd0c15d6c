"""An allowed compute package that imports dangerous callables (the allowlist tests).

With ``tests`` (or this package) allowed, whoever can seed a run may name any
attribute of this module. Only ``scaled`` and ``describe_axes`` are its own
functions; the rest are names it imported or objects that are callable without
being functions, and a worker must refuse every one of them.
"""

from __future__ import annotations

import functools
from os import system  # noqa: F401 - the attack surface under test
from subprocess import check_output
from typing import Any

from tests.computes import explode_on_13  # noqa: F401 - a function of an allowed module


def scaled(x: int) -> int:
    """An honest compute of this package."""
    return 3 * x


def describe_axes(value: dict[str, Any]) -> str:
    """An honest compute over a grid: its axis names joined."""
    return " ".join(value)


def _private(x: int) -> int:
    return x


class Runner:
    """A class: callable, but not a compute."""

    def __init__(self, value: Any) -> None:
        self.value = value


#: A partial of a dangerous callable, bound at import.
shell = functools.partial(check_output, shell=True)  # noqa: S604 - the attack surface under test
#: A builtin, under a harmless name.
opener = open
#: A bound method of an object.
bound = Runner(1).__init__
