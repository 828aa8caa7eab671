"""Row-keyed array files (``.npz``: a ``counts`` table and a JSON ``meta`` header), the format
of CAT-RS targets: written atomically, read with one-line errors, shards merged by rows.

While such a table is being computed, row by row, it lives in :class:`ResumableRows`: a
memory map ``FILE.part.npy`` (each row written as soon as it is computed, flushed every few
seconds) beside its settings ``FILE.part.json``. Rerunning with the same settings reopens
it and continues; other settings are refused; the finished table is written to ``FILE``
atomically and the two part files removed."""

from __future__ import annotations

import json
import os
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smoothmix.errors import SmoothmixError, first_line, require
from smoothmix.storage import atomic_write, atomic_write_with, settings_diff

__all__ = ["ResumableRows", "merge_array_rows", "part_paths", "read_arrays", "require_same",
           "write_arrays"]


def write_arrays(path: str | os.PathLike, counts: np.ndarray, meta: Mapping[str, Any]) -> None:
    """``counts`` and ``meta`` into ``path`` whole or not at all (compressed: most votes of a
    confident teacher are 0, and ImageNet's table is 1.28M x 1000)."""

    header = np.array(json.dumps(dict(meta)))
    atomic_write_with(path, lambda fh: np.savez_compressed(fh, counts=counts, meta=header))


def read_arrays(path: str | os.PathLike, what: str) -> tuple[np.ndarray, Any]:
    """(counts, meta) of an array file; any damage is a one-line SmoothmixError naming
    ``what`` the file should be."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return np.asarray(data["counts"]), json.loads(str(data["meta"][()]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error,
            TypeError) as exc:
        raise SmoothmixError(f"{path} is not a readable {what} (corrupt or truncated? "
                             f"{first_line(exc)})") from None


def merge_array_rows(parts: Sequence[tuple[np.ndarray, Sequence[int]]]) -> np.ndarray:
    """One table from the shards' ``(counts, rows it covers)``: each row from its shard."""
    merged = np.zeros_like(parts[0][0])
    for counts, rows in parts:
        merged[list(rows)] = counts[list(rows)]
    return merged



def require_same(what: object, saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuse to resume or reuse ``what`` (a file, named in the message) when the settings
    it was built with differ from this run's."""

    diff = settings_diff(saved, now)
    require(not diff, f"{what} was built by another run ({diff}); rerun with the same "
            "settings to resume, or choose another --out")


def part_paths(target: Path) -> tuple[Path, Path]:
    """The memory map and the settings of ``target`` while it is being computed."""
    return target.with_name(target.name + ".part.npy"), target.with_name(target.name + ".part.json")


class ResumableRows:
    """The rows of the array file ``target`` while they are computed, resumable.

    ``rows`` is the ``shape`` memory map (zeros when new): set a row with ``rows[i] = ...``
    then call :meth:`wrote`, which flushes at most every ``flush_seconds`` (a crash loses
    those seconds, never a row's consistency: the caller tells a finished row by its
    content). ``what`` names the kind of file in messages; ``info`` (how the run ran) is
    recorded beside the settings when the map is created."""

    def __init__(self, target: Path, settings: Mapping[str, Any], shape: tuple[int, ...],
                 dtype: Any, info: Mapping[str, Any], what: str,
                 flush_seconds: float = 2.0) -> None:
        self.target, self.settings = target, dict(settings)
        self.work, self.work_meta = part_paths(target)
        self.flush_seconds, self._last_flush = flush_seconds, time.monotonic()
        if self.work.exists() and self.work_meta.exists():
            self.rows = self._reopen(shape, what)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.rows = np.lib.format.open_memmap(self.work, mode="w+", dtype=dtype,
                                                  shape=shape)
            self.rows.flush()

            atomic_write(self.work_meta, json.dumps({"settings": self.settings,
                                                     "info": dict(info)}, indent=2))

    def _reopen(self, shape: tuple[int, ...], what: str) -> np.ndarray:
        try:
            saved = json.loads(self.work_meta.read_text())["settings"]
        except (ValueError, KeyError, TypeError):
            raise SmoothmixError(f"{self.work_meta} is not a {what} settings file; remove it "
                                 "and its .part.npy to start again") from None
        require_same(f"{self.work} (an unfinished run)", saved, self.settings)
        try:
            rows = np.load(self.work, mmap_mode="r+")
        except (OSError, ValueError) as exc:
            raise SmoothmixError(f"{self.work} is damaged ({first_line(exc)}); remove it to "
                                 "start again") from exc
        require(rows.shape == shape, f"{self.work} has shape {rows.shape}, expected {shape}")
        return rows

    def wrote(self) -> None:
        """A row was set: flush when the last flush is ``flush_seconds`` old."""
        if time.monotonic() - self._last_flush > self.flush_seconds:
            self.rows.flush()  # type: ignore[attr-defined]
            self._last_flush = time.monotonic()

    def finish(self, meta: Mapping[str, Any]) -> None:
        """Write the table to ``target`` with ``meta`` (atomically), then remove the part
        files: a crash in between leaves both, and the rerun writes the same file again."""
        self.rows.flush()  # type: ignore[attr-defined]
        write_arrays(self.target, np.asarray(self.rows), meta)
        del self.rows
        self.work.unlink(missing_ok=True)
        self.work_meta.unlink(missing_ok=True)
