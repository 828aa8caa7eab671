"""SmoothMix (Jeong et al. 2021; SPEC §3.6): mixup along the adversarial path of the
smoothed classifier, to calibrate its confidence off the data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothmix.methods.attacks import project_ball, smoothmix_search
from smoothmix.methods.base import (
    Option,
    StepOutput,
    TrainingMethod,
    accuracy,
    at_least,
    check_batch,
    forward_groups,
    full_precision,
    kl_divergence,
    mean_over_copies,
    noisy_copies,
    non_negative,
    positive,
    warmup_factor,
)


class SmoothMixLoss(TrainingMethod):
    """``L = L_nat + eta * w * L_mix`` (SPEC §3.6).

    Per batch: ``m`` noise draws, reused everywhere; the unrestricted search gives the path
    ``x~(0..T)``; the anchor ``x0`` is ``x`` (``mix_step=0``) or the one-step adversary
    projected onto the ``w * step_size`` ball (``mix_step=1``); ``L_nat`` is the CE of the
    ``m`` noisy copies of ``x0`` and ``F^(x0)`` their mean softmax; with ``lam ~ U[0, 1/2)``,
    ``x_mix = (1 - lam) x0 + lam x~(T)`` and ``y_mix = (1 - lam) F^(x0) + lam / K``;
    ``L_mix`` is the mean over copies and batch of ``1[argmax F^(x0) = y] * KL(y_mix ||
    F(x_mix + delta_i))``. ``y_mix`` is not detached (the reference code's behaviour, which
    produced the published numbers). ``w = min(1, (epoch + 1) / warmup)``.

    The ``x0`` and ``x_mix`` copies (``m B`` rows each) share one backward, and on an
    accelerator one forward too (see :func:`~smoothmix.methods.base.forward_groups`).
    """

    name = "smoothmix"
    options = {
        "num_noise": Option(4, "m: noise draws per image, shared by search and losses "
                            "(published: MNIST 4, CIFAR-10 2)", int, at_least(1)),
        "num_steps": Option(4, "T: steps of the adversarial search (published: MNIST 3/4/8 "
                            "for sigma 0.25/0.5/1.0, CIFAR-10 4)", int, at_least(1)),
        "step_size": Option(1.0, "length of each search step in [0, 1] pixel units "
                            "(published: 1.0; CIFAR-10 0.5/1.0/2.0 for sigma 0.25/0.5/1.0)",
                            float, positive),
        "eta": Option(1.0, "weight eta of the mixup loss (published: 1.0 or 5.0)", float,
                      non_negative),
        "mix_step": Option(0, "anchor of the mixup: 0 = clean input, 1 = one-step adversary "
                           "(the '+ one-step adversary' variant)", int, choices=(0, 1)),
        "warmup": Option(10, "epochs over which the mixup weight w grows linearly to 1 "
                         "(0 = no warm-up)", int, non_negative),
        "max_norm": Option(None, "optional L2 bound on the search's distance from x "
                           "(default: unrestricted)", float, positive, nullable=True),
    }

    def _mix_lambda(self, x: Tensor) -> Tensor:
        """Mixup weights ``lam ~ U[0, 1/2)`` per example (hook for tests)."""
        return torch.rand(x.shape[0], device=x.device, dtype=x.dtype) / 2

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> StepOutput:
        check_batch(x, y)
        m, batch, num_classes = self.num_noise, x.shape[0], self.num_classes
        noise = self._noise(x, m)
        w = warmup_factor(epoch, self.warmup)

        path = smoothmix_search(model, x, y, noise, self.num_steps, self.step_size,
                                self.max_norm)
        x0 = x if self.mix_step == 0 else project_ball(path[1], x, w * self.step_size)
        lam = self._mix_lambda(x)
        lam_x = lam.view(-1, *([1] * (x.dim() - 1)))
        x_mix = (1 - lam_x) * x0 + lam_x * path[-1]

        logits0, logits_mix = forward_groups(
            model, [noisy_copies(x0, noise), noisy_copies(x_mix, noise)]
        )
        logits0, logits_mix = full_precision(logits0), full_precision(logits_mix)
        y_copies = y.repeat(m)
        loss_nat = F.cross_entropy(logits0, y_copies)
        smoothed = mean_over_copies(logits0.softmax(-1), m)
        lam_y = lam.to(smoothed.dtype).unsqueeze(1)
        y_mix = (1 - lam_y) * smoothed + lam_y / num_classes
        correct = smoothed.detach().argmax(-1) == y
        kl = kl_divergence(y_mix.unsqueeze(0), logits_mix.log_softmax(-1).view(m, batch, -1))
        loss_mix = (kl * correct).mean()
        loss = loss_nat + (self.eta * w) * loss_mix
        return StepOutput(loss, {
            "loss": loss.detach(),
            "loss_nat": loss_nat.detach(),
            "loss_mix": loss_mix.detach(),
            "mix_fraction": correct.float().mean(),
            "acc": accuracy(logits0, y_copies),
        })
