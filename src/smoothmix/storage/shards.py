"""Which examples a run or a shard covers, where a shard is written, and waiting for shards.

A run selects every ``skip``-th dataset index below ``max_idx``; shard (i, k) takes every
k-th of those starting at the i-th, into ``OUT.rankIofK.tsv`` (``.npz`` for targets). The
ranks of a torchrun job shard automatically; rank 0 waits for the other ranks' files on the
file system (a rank resuming a long shard can outlast any process-group timeout; torchrun
stops rank 0 if another rank fails).

A run asked for more images than a file holds, everything else unchanged (``--max 7`` after
``--max 5``), is the same run continued: :func:`extends_selection` tells a resume so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from smoothmix.errors import SmoothmixError, require
from smoothmix.storage import differing_keys

__all__ = ["Shard", "check_shard_set", "extends_selection", "parse_shard", "resolve_shard",
           "selected_indices", "shard_path", "wait_until"]

Shard = tuple[int, int]
POLL_SECONDS = 2.0


def selected_indices(num_examples: int, skip: int = 1, max_idx: int = -1,
                     shard: Shard = (0, 1)) -> range:
    """The dataset indices a run covers: every ``skip``-th idx below ``max_idx`` (like the
    reference ``certify.py``), then every k-th of those starting at the i-th for shard (i, k)."""
    i, k = shard
    return range(0, _stop(num_examples, max_idx), skip)[i::k]


def extends_selection(old: Mapping[str, object], new: Mapping[str, object]) -> bool:
    """Whether settings ``new`` are ``old`` with a ``max_idx`` that selects at least the
    same images: the same run asked for more (``--max 7`` after ``--max 5``, or all). A row
    depends only on the settings other than ``max_idx`` and on its (seed, idx) stream, so the
    rows already written are rows of the larger run. A smaller ``max_idx`` is not: it would
    leave rows outside the run in the file."""
    if differing_keys(old, new) != ["max_idx"]:
        return False
    num, before, after = new.get("num_examples"), old.get("max_idx"), new.get("max_idx")
    if not (isinstance(num, int) and isinstance(before, int) and isinstance(after, int)):
        return False
    return _stop(num, after) >= _stop(num, before)


def _stop(num_examples: int, max_idx: int) -> int:
    return num_examples if max_idx < 0 else min(max_idx, num_examples)


def shard_path(out_path: str | os.PathLike, rank: int, world_size: int,
               default_suffix: str = ".tsv") -> Path:
    """Where rank ``rank`` of ``world_size`` writes its part: ``OUT.rankIofK.tsv`` (OUT's
    own suffix, ``default_suffix`` when it has none)."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.rank{rank}of{world_size}{out.suffix or default_suffix}")


def resolve_shard(shard: Shard | None) -> tuple[Shard, bool]:
    """The part (i, k) of the examples this process covers, and whether torchrun chose it:
    the given ``shard`` (independent jobs), else (rank, world size) under torchrun (the
    ranks' parts are merged by rank 0), else (0, 1)."""
    from smoothmix.distributed import distributed_env

    rank, world, _ = distributed_env()
    require(shard is None or world == 1,
            "--shard splits work between independent jobs; under torchrun the ranks shard "
            "automatically, so leave --shard out")
    auto = shard is None and world > 1
    part = (rank, world) if auto else (shard or (0, 1))
    require(part[1] >= 1 and 0 <= part[0] < part[1], f"bad shard {part}")
    return part, auto


def parse_shard(text: str) -> Shard:
    """``"I/K"`` -> (I, K) with 0 <= I < K."""
    try:
        i, k = (int(part) for part in text.split("/"))
    except ValueError:
        raise SmoothmixError(f"--shard must look like I/K (e.g. 0/4), got {text!r}") from None
    require(k >= 1 and 0 <= i < k, f"--shard I/K needs 0 <= I < K, got {text!r}")
    return i, k


def check_shard_set(parts: Sequence[Shard]) -> int:
    """Refuse a set of shards (i, k) that is not each of 0/k ... k-1/k exactly once (the
    shards of one run, for a merge); returns k."""
    num_shards = {k for _, k in parts}
    require(len(num_shards) == 1, f"shards of different splits: {sorted(num_shards)} parts")
    k = num_shards.pop()
    given = [i for i, _ in parts]
    for i in range(k):
        require(given.count(i) <= 1, f"shard {i}/{k} is given more than once")
        require(i in given, f"shard {i}/{k} is missing (shards {sorted(given)} given)")
    return k


def wait_until(done: Callable[[], bool]) -> None:
    """Poll ``done`` every :data:`POLL_SECONDS` until it holds (rank 0's file-based
    barrier for the shards of the other ranks)."""
    while not done():
        time.sleep(POLL_SECONDS)
