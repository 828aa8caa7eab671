"""What the denoiser-training methods share (Salman et al., 2020: denoised smoothing).

A denoiser method trains ``D`` (``trains = "denoiser"``: the model maps noisy images to
images of the same shape) for a classifier ``f`` that stays as it is. The classifier, when
the method uses one, is loaded from a checkpoint path (``--classifier``), frozen (no
parameter takes a gradient) and kept in eval mode; the SHA-256 of its file is part of the
run's identity (:meth:`DenoiserMethod.identity`), so a resume with another classifier file
is refused.

The epoch-end monitor (:meth:`DenoiserMethod.monitor`) reports the PSNR of ``D(x + δ)``
against ``x`` (``test_psnr``), that of the noisy input itself (``test_psnr_noisy``, the
baseline the denoiser has to beat) and, with a classifier, the accuracy and cross-entropy of
``f(D(x + δ))`` (``test_noisy_acc``/``test_noisy_loss``: the base classifier f∘D of
denoised smoothing under one draw of noise).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from smoothmix.errors import SmoothmixError
from smoothmix.methods.base import Option, TrainingMethod, logit_sums

__all__ = ["DenoiserMethod", "FrozenClassifier", "classifier_option", "psnr"]

# Below this a per-image MSE is treated as this (a perfect reconstruction would be +inf dB).
_MSE_FLOOR = 1e-10


def psnr(estimate: Tensor, clean: Tensor) -> Tensor:
    """Per-image PSNR in dB of ``estimate`` against ``clean`` (pixels in [0, 1], peak 1):
    ``10 log10(1 / mean squared error)``, shape (N,)."""
    mse = (estimate.float() - clean.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(_MSE_FLOOR))


def classifier_option(required: bool) -> Option:
    """The ``classifier`` option: a smoothmix classifier checkpoint (file, run folder or
    ``pretrained:NAME``)."""
    use = ("the frozen classifier f of the loss" if required
           else "optional: a classifier f whose noisy accuracy through the denoiser the "
           "epoch monitor reports")
    return Option(None, f"checkpoint of {use} (its SHA-256 is recorded; a resume with "
                  "another file is refused)", str, nullable=True)


class FrozenClassifier:
    """A classifier checkpoint loaded for a denoiser's loss or monitor: eval mode, no
    gradients, moved to the batch's device on first use. Not a submodule of the denoiser:
    it is neither trained, nor saved with it, nor switched to train mode by the loop."""

    def __init__(self, path: str, method: str) -> None:
        from smoothmix.checkpoint import checkpoint_file, file_sha256, load_model

        try:
            source = checkpoint_file(path)
            model, ckpt = load_model(source)
        except SmoothmixError as exc:
            raise SmoothmixError(f"{method} --classifier: {exc}") from None
        self.path = str(path)
        self.sha256 = str(ckpt.get("weights_sha256") or file_sha256(source))
        self.arch = ckpt.get("arch")
        self.model = model.eval().requires_grad_(False)

    def __call__(self, x: Tensor) -> Tensor:
        if next(self.model.parameters()).device != x.device:
            self.model.to(x.device)
        self.model.eval()  # whatever the caller did: f is always run in eval mode
        return self.model(x)


class DenoiserMethod(TrainingMethod):
    """Base of the methods that train a denoiser for a fixed classifier (see the module
    docstring). Subclasses declare ``classifier`` in their options (required or not)."""

    trains: ClassVar[str] = "denoiser"
    classifier: str | None

    def __init__(self, sigma: float | None, num_classes: int, **options: Any) -> None:
        super().__init__(sigma, num_classes, **options)
        self.frozen = (FrozenClassifier(self.classifier, self.name)
                       if self.classifier is not None else None)

    def identity(self) -> dict[str, Any]:
        if self.frozen is None:
            return {}
        return {"classifier_sha256": self.frozen.sha256, "classifier_arch": self.frozen.arch}

    def monitor(self, model: nn.Module, x: Tensor, y: Tensor,
                generator: torch.Generator) -> dict[str, Tensor]:
        noisy = x + self.sigma * torch.randn(x.shape, generator=generator, device=x.device,
                                             dtype=x.dtype)
        denoised = model(noisy)
        sums = {"psnr": psnr(denoised, x).sum(), "psnr_noisy": psnr(noisy, x).sum()}
        if self.frozen is not None:
            sums.update(logit_sums(self.frozen(denoised), y))
        return sums
