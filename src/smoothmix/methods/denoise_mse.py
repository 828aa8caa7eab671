"""Denoiser training with the MSE objective (Salman et al., 2020, "MSE"):
``L = mean ||D(x + δ) − x||²`` over the pixels of the batch, one noise draw per image."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from smoothmix.methods.base import StepOutput, check_batch, full_precision
from smoothmix.methods.denoising import DenoiserMethod, classifier_option, psnr

__all__ = ["DenoiseMSE"]


class DenoiseMSE(DenoiserMethod):
    """``L = MSE(D(x + δ), x)``: the denoiser learns to reconstruct the clean image. Needs
    no classifier; with ``classifier`` the epoch monitor also reports the noisy accuracy of
    f∘D. Labels are not used."""

    name = "denoise-mse"
    options = {"classifier": classifier_option(required=False)}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int,
                 **side: Tensor) -> StepOutput:
        check_batch(x, y)
        denoised = full_precision(model(x + self._noise(x, 1)[0]))
        loss = F.mse_loss(denoised, x.to(denoised.dtype))
        return StepOutput(loss, {"loss": loss.detach(),
                                 "psnr": psnr(denoised.detach(), x).mean()})
