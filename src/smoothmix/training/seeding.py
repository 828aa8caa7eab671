"""Where a run's randomness comes from: the global seeds, each rank's seed, and the data
order of each epoch (a function of the seed and the epoch only, so a resumed run draws
what the uninterrupted one would have)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["rank_seed", "seed_everything", "set_loader_epoch"]


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and ``random`` (the initial weights and the first epoch's noise)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """Different noise per rank; rank 0 keeps the plain seed so 1-process runs are
    unchanged."""
    return seed + 1_000_003 * rank


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch`` of a DeviceBatchLoader, or of a DataLoader's (distributed) sampler."""
    set_epoch = getattr(loader, "set_epoch", None)
    if set_epoch is None:
        set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if set_epoch is not None:
        set_epoch(epoch)
