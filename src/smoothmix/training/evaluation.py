"""The epoch-end test evaluation: a method's monitor over the test set (what the per-epoch
log reports as ``test_<name>``), and the classic noisy accuracy of a base classifier."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

__all__ = ["Monitor", "evaluate_monitor", "evaluate_noisy"]

#: ``monitor(model, x, y, generator) -> {name: sum over the batch}``
#: (:meth:`smoothmix.methods.base.TrainingMethod.monitor`).
Monitor = Callable[[nn.Module, Tensor, Tensor, torch.Generator], dict[str, Tensor]]


class _AsPlaced(nn.Module):
    """``model`` as the training step runs it: inputs in the channels-last layout when the
    model was placed in it, the forward under bf16 autocast with ``amp`` (the monitor's
    own arithmetic, losses included, stays in full precision)."""

    def __init__(self, model: nn.Module, amp: bool, channels_last: bool) -> None:
        super().__init__()
        self.inner, self.amp, self.channels_last = model, amp, channels_last

    def forward(self, x: Tensor, *rest: Tensor) -> Tensor:
        # ``rest``: further inputs of models called otherwise (a DDPM's steps t).
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.inner(x, *rest)


@torch.no_grad()
def evaluate_monitor(model: nn.Module, loader: Iterable, monitor: Monitor, seed: int,
                     amp: bool = False, channels_last: bool = False
                     ) -> tuple[list[str], Tensor]:
    """Run ``monitor`` on every test batch (the model in eval mode; its forward under bf16
    autocast with ``amp``, its inputs channels-last with ``channels_last``).

    Returns the metric names and a device tensor ``[*sums, count]`` (summed, not averaged,
    so that ranks can all-reduce it). The monitor's noise comes from a private generator
    seeded by ``seed``, so the evaluation never moves the training RNG.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    run = _AsPlaced(model, amp, channels_last) if amp or channels_last else model
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    names: list[str] = []
    totals: Tensor | None = None
    count = 0
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        sums = monitor(run, x, y, gen)
        names = list(sums) if totals is None else names
        batch = torch.stack([sums[k].detach().to(dtype).reshape(()) for k in names])
        totals = batch if totals is None else totals + batch
        count += int(y.numel())
    model.train(was_training)
    if totals is None:
        return [], torch.zeros(1, device=device, dtype=dtype)
    return names, torch.cat([totals, totals.new_tensor([count])])


def evaluate_noisy(model: nn.Module, loader: Iterable, sigma: float, seed: int,
                   amp: bool = False, channels_last: bool = False) -> torch.Tensor:
    """Top-1 accuracy and CE loss of the base classifier on one Gaussian draw per image.

    Returns a device tensor ``[correct, loss_sum, count]`` (summed, not averaged, so that
    ranks can all-reduce it). The noise comes from a private generator seeded by ``seed``.
    """
    from smoothmix.methods.base import noisy_accuracy_sums

    def monitor(m: nn.Module, x: Tensor, y: Tensor, g: torch.Generator) -> dict[str, Tensor]:
        return noisy_accuracy_sums(m, x, y, sigma, g)

    names, totals = evaluate_monitor(model, loader, monitor, seed, amp, channels_last)
    if not names:
        return torch.zeros(3, device=totals.device, dtype=totals.dtype)
    return totals
