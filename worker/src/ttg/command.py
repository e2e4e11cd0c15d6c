"""A program compute's command (``ttg seed --exec``): checked at seeding, expanded per parameter.

The command is split once, at seeding (``shlex``, as a shell would split it),
and stored in the run's spec as a list of arguments; it never goes through a
shell. Per parameter each argument gets its placeholders replaced in one pass
(``{value}``, ``{index}``, ``{NAME}`` for each grid axis): a parameter's text
lands inside the argument it was written in and can never become another
argument, an option split off it, or shell syntax.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ttg.errors import UsageError
from ttg.jsontext import compact

#: A placeholder in an argument of the command.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Most arguments of a command, and the longest argument.
MAX_ARGS = 256
MAX_ARG_CHARS = 4096


def check_command(argv: Sequence[str], names: Sequence[str]) -> None:
    """Refuse a command that cannot run: empty, too long, or with unknown placeholders.

    Raises:
        UsageError: what is wrong, in one line.
    """
    if not argv:
        raise UsageError("--exec: the command is empty")
    if len(argv) > MAX_ARGS:
        raise UsageError(f"--exec: more than {MAX_ARGS} arguments")
    known = {"value", "index", *names}
    for arg in argv:
        if not isinstance(arg, str) or len(arg) > MAX_ARG_CHARS or "\x00" in arg:
            raise UsageError(f"--exec: an argument is not text of at most {MAX_ARG_CHARS} chars")
        for name in PLACEHOLDER.findall(arg):
            if name not in known:
                raise UsageError(
                    f"--exec: unknown placeholder {{{name}}} (known: "
                    + ", ".join(f"{{{k}}}" for k in sorted(known))
                    + ")"
                )
    if PLACEHOLDER.search(argv[0]):
        raise UsageError("--exec: the program itself cannot be a placeholder")


def as_text(value: Any) -> str:
    """A value as it appears in an argument: a string as itself, anything else as JSON."""
    if isinstance(value, str):
        return value
    return compact(value)


def arguments(argv: Sequence[str], value: Any, index: int) -> list[str]:
    """The command's arguments for one parameter (one substitution pass per argument)."""
    fields = {"value": as_text(value), "index": str(index)}
    if isinstance(value, dict):
        fields.update((k, as_text(v)) for k, v in value.items() if k not in fields)

    def sub(m: re.Match[str]) -> str:
        return fields.get(m.group(1), m.group(0))

    return [argv[0], *(PLACEHOLDER.sub(sub, a) for a in argv[1:])]
