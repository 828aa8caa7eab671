"""Row-keyed array files (``.npz``: a ``counts`` table and a JSON ``meta`` header), the format
of CAT-RS targets: written atomically, read with one-line errors, shards merged by rows."""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from smoothmix.errors import SmoothmixError, first_line

__all__ = ["merge_array_rows", "read_arrays", "write_arrays"]


def write_arrays(path: str | os.PathLike, counts: np.ndarray, meta: Mapping[str, Any]) -> None:
    """``counts`` and ``meta`` into ``path`` whole or not at all (compressed: most votes of a
    confident teacher are 0, and ImageNet's table is 1.28M x 1000)."""
    from smoothmix.storage import atomic_write_with

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

