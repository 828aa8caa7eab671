"""The noisy test accuracy of a base classifier (what the per-epoch log reports)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["evaluate_noisy"]


@torch.no_grad()
def evaluate_noisy(model: nn.Module, loader: Iterable, sigma: float, seed: int,
                   amp: bool = False, channels_last: bool = False) -> torch.Tensor:
    """Top-1 accuracy and CE loss of the base classifier on one Gaussian draw per image.

    Returns a device tensor ``[correct, loss_sum, count]`` (summed, not averaged, so that
    ranks can all-reduce it). The noise comes from a private generator seeded by ``seed``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    totals = torch.zeros(3, device=device, dtype=torch.float64 if device.type == "cpu"
                         else torch.float32)
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        noisy = x + sigma * torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype)
        if channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(noisy)
        logits = logits.float()
        totals[0] += (logits.argmax(1) == y).sum()
        totals[1] += nn.functional.cross_entropy(logits, y, reduction="sum")
        totals[2] += y.numel()
    model.train(was_training)
    return totals
