"""The one merge: the shards of one run, whatever they hold (result tables, targets arrays)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from smoothmix.errors import require
from smoothmix.storage import settings_diff
from smoothmix.storage.shards import check_shard_set, parse_shard

__all__ = ["MERGERS", "merge", "same_run"]

# File suffix -> the merger of its kind ("module:function"; imported when needed, so that
# storage does not depend on the modules that build those files). Anything else is a table.
MERGERS = {".npz": "smoothmix.targets:merge_targets"}
TABLES = "smoothmix.runner:merge_results"


def same_run(named: Sequence[tuple[str | os.PathLike, Mapping[str, Any]]],
             refusal: str = "{path} comes from another run than {first} ({diff})",
             ) -> tuple[dict[str, Any], int]:
    """The settings shared by the shards ``(path, settings)`` of one run (``shard``
    removed) and their number of shards; refuses shards of different runs (``refusal``
    formatted with path, first and diff) and a shard set that is not 0/k ... k-1/k."""

    require(len(named) >= 1, "merge needs at least one shard file")
    first, settings = named[0]
    common = {k: v for k, v in settings.items() if k != "shard"}
    for path, other in named:
        diff = settings_diff(common, {k: v for k, v in other.items() if k != "shard"})
        require(not diff, refusal.format(path=path, first=first, diff=diff))
    return common, check_shard_set([parse_shard(str(s.get("shard"))) for _, s in named])


def merge(out_path: str | os.PathLike, shards: Sequence[str | os.PathLike]) -> Path:
    """Merge ``shards`` into ``out_path`` with the merger of their kind (by suffix)."""
    require(len(shards) >= 1, "merge needs at least one shard file")
    for path in shards:
        require(Path(path).is_file(), f"shard file {path} does not exist")
    suffixes = {Path(p).suffix for p in shards}
    require(len(suffixes) == 1 or not suffixes & set(MERGERS),
            f"shards of different kinds ({', '.join(sorted(suffixes))}) cannot be merged")
    module, name = MERGERS.get(suffixes.pop(), TABLES).split(":")
    merger = getattr(importlib.import_module(module), name)
    return merger(out_path, shards)  # type: ignore[no-any-return]
