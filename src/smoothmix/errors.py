"""The one exception type users see.

Anything that is the user's fault (bad option, missing file, wrong shape) is raised as
:class:`SmoothmixError` with a one-line message; the CLI prints it and exits with code 2,
Python callers can catch it. Internal bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


class SmoothmixError(ValueError):
    """A user-facing error with a one-line, self-explanatory message."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`SmoothmixError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SmoothmixError(message)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if empty), for wrapping a
    deep library error into a one-line :class:`SmoothmixError`."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
