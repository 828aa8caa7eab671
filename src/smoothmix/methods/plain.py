"""Plain training: cross-entropy on clean images, no noise (an off-the-shelf classifier).

Such a classifier is the f of denoised smoothing (a denoiser goes in front of it), or a
baseline. It has no training σ: the run records ``sigma: None`` and ``noise: "none"`` in its
checkpoint, and ``smoothmix certify`` of it needs an explicit ``--sigma`` (the noise level
is then the certifier's choice, not the model's). The epoch monitor reports the clean test
accuracy (``test_clean_acc``/``test_clean_loss``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothmix.methods.base import (
    StepOutput,
    TrainingMethod,
    accuracy,
    check_batch,
    full_precision,
)

__all__ = ["Plain"]


class Plain(TrainingMethod):
    """``L = CE(f(x), y)`` on the clean images (``uses_noise = False``: no sigma)."""

    name = "plain"
    options = {}
    uses_noise: ClassVar[bool] = False

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int,
                 **side: Tensor) -> StepOutput:
        check_batch(x, y)
        logits = full_precision(model(x))
        loss = F.cross_entropy(logits, y)
        return StepOutput(loss, {"loss": loss.detach(), "acc": accuracy(logits, y)})

    def monitor(self, model: nn.Module, x: Tensor, y: Tensor,
                generator: torch.Generator) -> dict[str, Tensor]:
        logits = model(x).float()
        return {"clean_acc": (logits.argmax(1) == y).sum(),
                "clean_loss": F.cross_entropy(logits, y, reduction="sum")}
