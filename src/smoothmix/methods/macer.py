"""MACER: maximising the certified radius (Zhai et al. 2020; docs/MATH.md §3.4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.special import ndtri

from smoothmix.methods.base import (
    Option,
    StepOutput,
    TrainingMethod,
    accuracy,
    at_least,
    check_batch,
    full_precision,
    mean_over_copies,
    noisy_copies,
    non_negative,
    positive,
)

__all__ = ["Macer"]


class Macer(TrainingMethod):
    """``L = (sum_b CL_b + lbd * sum_b RL_b) / B`` over ``k = num_noise`` noisy copies.

    ``CL_b = -log(mean_j F_y(z_j) + 1e-10)``. With ``p = mean_j softmax(beta * z_j)`` and
    ``p1 >= p2`` its top two, ``RL_b = (sigma/2)(gamma - Phi^-1(p1) + Phi^-1(p2))`` on the
    examples with ``argmax p = y`` and ``0 <= Phi^-1(p1) - Phi^-1(p2) <= gamma`` (finite),
    0 elsewhere. ``lbd`` is 0 while ``epoch < deferred_epochs`` ("deferred" MACER).
    """

    name = "macer"
    # Option values, set by TrainingMethod.__init__ from the table below.
    num_noise: int
    lbd: float
    beta: float
    gamma: float
    deferred_epochs: int
    options = {
        "num_noise": Option(16, "k: noise draws per image (published: 16)", int, at_least(1)),
        "lbd": Option(12.0, "weight lambda of the robustness term (published: MNIST 16/16/6, "
                      "CIFAR-10 12/12/4 for sigma 0.25/0.5/1.0)", float, non_negative),
        "beta": Option(16.0, "inverse temperature beta of the robustness term's softmax "
                       "(published: 16)", float, positive),
        "gamma": Option(8.0, "hinge gamma of the robustness term (published: 8)", float,
                        positive),
        "deferred_epochs": Option(0, "lambda is 0 while epoch < this (deferred MACER: the "
                                  "first learning-rate drop); 0 = never deferred", int,
                                  non_negative),
    }

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int,
                 **side: Tensor) -> StepOutput:
        check_batch(x, y)
        k = self.num_noise
        logits = full_precision(model(noisy_copies(x, self._noise(x, k))))
        p_y = mean_over_copies(logits.softmax(-1), k).gather(1, y.unsqueeze(1)).squeeze(1)
        cl = -(p_y + 1e-10).log()

        p_beta = mean_over_copies((self.beta * logits).softmax(-1), k)
        top, idx = p_beta.topk(2, dim=-1)
        with torch.no_grad():
            gap = ndtri(top[:, 0]) - ndtri(top[:, 1])
            keep = (idx[:, 0] == y) & torch.isfinite(gap) & (gap >= 0) & (gap <= self.gamma)
        # Dropped examples get p = 1/2 so that Phi^-1 and its gradient stay finite there:
        # a masked-out inf would otherwise turn into NaN in the backward pass.
        safe = torch.where(keep.unsqueeze(1), top, torch.full_like(top, 0.5))
        rl = (self.sigma / 2) * (self.gamma - ndtri(safe[:, 0]) + ndtri(safe[:, 1]))
        rl = torch.where(keep, rl, torch.zeros_like(rl))

        lbd = self.lbd if epoch >= self.deferred_epochs else 0.0
        batch = x.shape[0]
        loss_cl = cl.sum() / batch
        loss_rl = rl.sum() / batch
        loss = loss_cl + lbd * loss_rl
        return StepOutput(loss, {
            "loss": loss.detach(),
            "loss_cl": loss_cl.detach(),
            "loss_rl": loss_rl.detach(),
            "rl_fraction": keep.float().mean(),
            "acc": accuracy(logits, y.repeat(k)),
        })
