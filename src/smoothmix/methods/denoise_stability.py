"""Denoiser training with the stability objective (Salman et al., 2020, "Stab"), through a
frozen classifier f: ``L = CE(f(D(x + δ)), f(x))``.

The target is f's own prediction on the clean image, not the label: the denoiser learns to
make f∘D agree with f, so it needs no labels and suits any off-the-shelf classifier. As in
the paper's code the target is f's hard prediction ``argmax f(x)`` (``--stability-target
hard``, the default); ``soft`` uses f's probabilities ``softmax f(x)`` instead. Either way
the target carries no gradient (f is frozen). The paper's strongest variant, "MSE then
Stab", is this method started from an MSE-trained denoiser (``smoothmix train --init``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothmix.errors import SmoothmixError
from smoothmix.methods.base import (
    Option,
    StepOutput,
    accuracy,
    check_batch,
    full_precision,
    soft_cross_entropy,
)
from smoothmix.methods.denoising import DenoiserMethod, FrozenClassifier, classifier_option

__all__ = ["DenoiseStability"]


class DenoiseStability(DenoiserMethod):
    """``L = CE(f(D(x + δ)), argmax f(x))`` (or the soft target), f frozen, in eval mode."""

    name = "denoise-stability"
    stability_target: str
    options = {
        "classifier": classifier_option(required=True),
        "stability_target": Option("hard", "target of the cross-entropy: f's prediction on "
                                   "the clean image (hard, as published) or its "
                                   "probabilities (soft)", str, choices=("hard", "soft")),
    }

    def __init__(self, sigma: float | None, num_classes: int, **options: object) -> None:
        super().__init__(sigma, num_classes, **options)
        if self.frozen is None:
            raise SmoothmixError(f"method {self.name} needs --classifier CHECKPOINT: the "
                                 "frozen classifier whose predictions the denoiser learns "
                                 "to preserve")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int,
                 **side: Tensor) -> StepOutput:
        check_batch(x, y)
        f: FrozenClassifier = self.frozen  # type: ignore[assignment]  # checked in __init__
        with torch.no_grad():
            clean = full_precision(f(x))
        noisy = full_precision(f(model(x + self._noise(x, 1)[0])))
        if self.stability_target == "hard":
            target = clean.argmax(-1)
            loss = F.cross_entropy(noisy, target)
            agree = accuracy(noisy, target)
        else:
            loss = soft_cross_entropy(clean.softmax(-1), noisy.log_softmax(-1)).mean()
            agree = accuracy(noisy, clean.argmax(-1))
        return StepOutput(loss, {"loss": loss.detach(), "acc": accuracy(noisy, y),
                                 "agree": agree})
