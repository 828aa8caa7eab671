"""Gaussian data augmentation (Cohen et al. 2019; docs/MATH.md §3.1)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from smoothmix.methods.base import (
    StepOutput,
    TrainingMethod,
    accuracy,
    check_batch,
    full_precision,
)

__all__ = ["Gaussian"]


class Gaussian(TrainingMethod):
    """``L = CE(f(x + delta), y)`` with one fresh noise draw per image per step."""

    name = "gaussian"
    options = {}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int,
                 **side: Tensor) -> StepOutput:
        check_batch(x, y)
        logits = full_precision(model(x + self._noise(x, 1)[0]))
        loss = F.cross_entropy(logits, y)
        return StepOutput(loss, {"loss": loss.detach(), "acc": accuracy(logits, y)})
