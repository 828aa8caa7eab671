"""Stability training (Li et al. 2019; docs/MATH.md §3.2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from smoothmix.methods.base import (
    Option,
    StepOutput,
    TrainingMethod,
    accuracy,
    check_batch,
    forward_groups,
    full_precision,
    non_negative,
    soft_cross_entropy,
)

__all__ = ["Stability"]


class Stability(TrainingMethod):
    """``L = CE(f(x), y) + lbd * mean_b[-sum_c F_c(x) log F_c(x + delta)]``.

    The clean prediction ``F(x)`` is the soft target of the noisy one and is NOT detached
    (docs/MATH.md §3.2), so the regulariser also moves the clean prediction. One noise draw per
    image; the clean and noisy batches share one forward where the model allows it.
    """

    name = "stability"
    # Option values, set by TrainingMethod.__init__ from the table below.
    lbd: float
    options = {
        "lbd": Option(2.0, "weight lambda of the stability term (published: 2)", float,
                      non_negative),
    }

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int,
                 **side: Tensor) -> StepOutput:
        check_batch(x, y)
        clean, noisy = forward_groups(model, [x, x + self._noise(x, 1)[0]])
        clean, noisy = full_precision(clean), full_precision(noisy)
        loss_ce = F.cross_entropy(clean, y)
        loss_stab = soft_cross_entropy(clean.softmax(-1), noisy.log_softmax(-1)).mean()
        loss = loss_ce + self.lbd * loss_stab
        return StepOutput(loss, {
            "loss": loss.detach(),
            "loss_ce": loss_ce.detach(),
            "loss_stability": loss_stab.detach(),
            "acc": accuracy(noisy, y),
            "acc_clean": accuracy(clean, y),
        })
