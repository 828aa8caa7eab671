"""Everything smoothmix puts on disk goes through this package.

- :func:`atomic_write` / :func:`atomic_write_with`: a file is replaced whole or not at all
  (temporary file in the same folder, fsync, rename), so a killed process never leaves a
  half-written checkpoint, settings record or table behind.
- :func:`atomic_append`: the same for adding a line to a small log (a training run's
  ``log.csv``): the file holds the line whole or not at all.
- :func:`differing_keys` / :func:`settings_diff`: the one comparison of two settings records,
  used by every resume, shard merge and refusal, so that all of them name the differing
  fields the same way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_append", "atomic_write", "atomic_write_with", "differing_keys", "settings_diff",
           "settings_differences"]


def atomic_write_with(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, fsync it, then
    rename it over ``path``; on any error the temporary file is removed and ``path`` is left
    as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600 whatever the umask; results on a shared cluster must
        # be readable as any file the user creates, so give it the umask's mode.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all."""
    data = text.encode("utf-8")
    atomic_write_with(path, lambda fh: fh.write(data))


def atomic_append(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path`` (created if missing) whole or not at all: the old
    bytes and ``text`` are written to a new file that replaces ``path`` (:func:`atomic_write_with`),
    so a process killed mid-append leaves the file as it was, never a half line that a resume
    would misread. Each append rewrites the file: meant for small logs, not result tables
    (those are :class:`smoothmix.storage.table.RowWriter`'s)."""
    path = Path(path)
    old = path.read_bytes() if path.is_file() else b""
    data = text.encode("utf-8")

    def write(fh: IO[bytes]) -> None:
        fh.write(old)
        fh.write(data)

    atomic_write_with(path, write)


def differing_keys(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """The fields whose value differs between ``old`` and ``new``, sorted by name. A field
    missing on one side counts as None there."""
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def settings_differences(old: Mapping[str, object],
                         new: Mapping[str, object]) -> list[str]:
    """Each field of :func:`differing_keys` between ``old`` (what a file recorded) and
    ``new`` (what this run would record), as ``"name: old in the file vs new now"``."""
    return [f"{k}: {old.get(k)!r} in the file vs {new.get(k)!r} now"
            for k in differing_keys(old, new)]


def settings_diff(old: Mapping[str, object], new: Mapping[str, object], limit: int = 3) -> str:
    """The first ``limit`` differences of :func:`settings_differences` joined for a one-line
    refusal ("" when the settings agree)."""
    return ", ".join(settings_differences(old, new)[:limit])
