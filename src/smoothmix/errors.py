"""The one exception type users see.

Anything that is the user's fault (bad option, missing file, wrong shape) is raised as
:class:`SmoothmixError` with a one-line message; the CLI prints it and exits with code 2,
Python callers can catch it. Internal bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations

import operator

__all__ = ["SmoothmixError", "first_line", "is_integer", "require"]


class SmoothmixError(ValueError):
    """A user-facing error with a one-line, self-explanatory message: bad input, a
    missing or mismatched file. The CLI prints it as one line and exits with code 2; a
    ``ValueError``, so ``except ValueError`` catches it too."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`SmoothmixError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SmoothmixError(message)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if empty), for wrapping a
    deep library error into a one-line :class:`SmoothmixError`."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer: an int, or a numpy or torch integer (not a bool, a
    float or a string), for checking arguments that users may swap (num_classes, sigma)."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True
