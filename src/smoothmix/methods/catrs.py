"""CAT-RS (Jeong, Kim & Shin, AAAI 2023; docs/MATH.md §3.8): confidence-aware training.

Per batch of ``B`` images with ``M`` noise draws (drawn once):

1. natural forward (train mode) over the ``M B`` noisy copies;
2. ``w_b`` = fraction of the copies classified correctly (or ``pi_b[y_b]`` with
   ``confidence_mask``), ``K_b ~ Binomial(M, w_b)`` raised to at least 1, ``mask_b = [K_b = M]``;
3. ``L_low = (1/M) * sum of the K_b smallest per-copy cross-entropies`` (divisor ``M``);
4. worst-case noise search against the soft target ``pi`` (:func:`catrs_noise_search`);
5. ``L_high = max_i KL(pi_b || F(x_b + delta*_i))`` from a second train-mode forward;
6. ``L = mean_b [L_low + lbd * mask_b * L_high]``.

``pi`` (the vote frequencies of a Gaussian sigma = 0.25 model, see :mod:`smoothmix.targets`)
is per-example side data: the method declares ``side_data = ("soft_target",)`` and the
training loop passes the batch's rows as ``soft_target=``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothmix.errors import SmoothmixError
from smoothmix.methods.attacks import frozen_eval
from smoothmix.methods.base import (
    Option,
    StepOutput,
    TrainingMethod,
    accuracy,
    at_least,
    check_batch,
    forward_groups,
    full_precision,
    has_batch_statistics,
    kl_divergence,
    noisy_copies,
    non_negative,
    positive,
    unwrap_ddp,
)

__all__ = ["CatRS", "catrs_noise_search"]

# Added to the gradient norm before dividing (the reference's 1e-8).
_GRAD_EPS = 1e-8


def _rows(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _per_row(values: Tensor, like: Tensor) -> Tensor:
    """``(R,)`` per-row values shaped to broadcast against ``like`` ``(R, ...)``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def catrs_noise_search(model: nn.Module, x: Tensor, noise: Tensor, soft_target: Tensor,
                       num_steps: int, epsilon: float) -> Tensor:
    """Worst-case noise of docs/MATH.md §3.8 step 4; returns ``delta*`` shaped like ``noise``.

    ``noise`` is ``(M, B, ...)``; every one of its ``M B`` rows (one copy of one image) is
    moved on its own: ``T`` steps of length ``2 epsilon / T`` along ``g / (||g|| + 1e-8)``,
    ``g`` the gradient of ``sum_b (1/M) sum_i KL(pi_b || F(x_b + delta_i))`` w.r.t. that row;
    after each step ``delta - delta_orig`` is projected onto the ``epsilon`` ball, then the
    row is re-standardised to the original draw's entry mean ``mu0`` and uncentred RMS
    ``s0``: ``delta <- mu0 + (delta - mu) * s0 / s`` (it stays a plausible Gaussian sample).
    No [0, 1] clamp (noise is not an image). The model is in eval mode with frozen
    parameters while the search runs; nothing returned carries a gradient.
    """
    m = noise.shape[0]
    origin = noise.detach().flatten(0, 1)  # (M B, ...) rows, copy-major
    mu0 = _per_row(_rows(origin).mean(1), origin)
    s0 = _per_row(_rows(origin).pow(2).mean(1).sqrt(), origin)
    x_rep = x.detach().repeat(m, *([1] * (x.dim() - 1)))
    target = soft_target.detach().repeat(m, 1)
    step = 2 * epsilon / num_steps
    delta = origin
    with frozen_eval(model) as net:
        for _ in range(num_steps):
            delta = delta.detach().requires_grad_(True)
            log_q = full_precision(net(x_rep + delta)).log_softmax(-1)
            objective = kl_divergence(target, log_q).sum() / m
            (grad,) = torch.autograd.grad(objective, [delta])
            norm = _per_row(_rows(grad).norm(dim=1), grad)
            delta = delta.detach() + step * grad / (norm + _GRAD_EPS)
            shift = delta - origin
            shift_norm = _per_row(_rows(shift).norm(dim=1), shift)
            # Rows inside the ball are kept; the others are scaled back onto its surface.
            shift = shift * (epsilon / shift_norm.clamp_min(epsilon))
            delta = origin + shift
            mu = _per_row(_rows(delta).mean(1), delta)
            s = _per_row(_rows(delta).pow(2).mean(1).sqrt(), delta)
            delta = mu0 + (delta - mu) * (s0 / s)
    return delta.detach().view_as(noise)


class CatRS(TrainingMethod):
    """CAT-RS loss ``mean_b [L_low + lbd * mask_b * L_high]`` (see module docstring).

    Needs ``soft_target`` (``(B, K)`` vote frequencies, rows summing to 1) for every batch.
    """

    name = "catrs"
    # Option values, set by TrainingMethod.__init__ from the table below.
    num_noise: int
    num_steps: int
    epsilon: float
    lbd: float
    confidence_mask: int
    epsilon_double_epoch: int | None
    side_data = ("soft_target",)
    options = {
        "num_noise": Option(4, "M: noise draws per image (published: 4; ImageNet 2)", int,
                            at_least(1)),
        "num_steps": Option(4, "T: steps of the worst-case noise search (published: 4; "
                            "ImageNet 1)", int, at_least(1)),
        "epsilon": Option(1.0, "L2 radius of the noise search in [0, 1] pixel units "
                          "(published: 1.0, i.e. 256/256)", float, positive),
        "lbd": Option(1.0, "lambda: weight of L_high (published: CIFAR-10 0.5/1.0/2.0 for "
                      "sigma 0.25/0.5/1.0, MNIST 1.0, ImageNet 2.0)", float, non_negative),
        "confidence_mask": Option(0, "1 = draw K from the soft target's true-class "
                                  "probability instead of the copies' accuracy (ImageNet's "
                                  "variant; default 0)", int, choices=(0, 1)),
        "epsilon_double_epoch": Option(None, "epoch (0-based) from which the search radius "
                                       "is doubled (ImageNet: 80; default: never)", int,
                                       non_negative, nullable=True),
    }

    # -- hooks (tests override these to fix the randomness) -------------------------------
    def _binomial(self, total: int, probs: Tensor) -> Tensor:
        """``K_b ~ Binomial(total, probs_b)`` as int64 (from the global RNG, so resume is
        exact)."""
        return torch.distributions.Binomial(total, probs=probs).sample().long()

    def current_epsilon(self, epoch: int) -> float:
        double = self.epsilon_double_epoch is not None and epoch >= self.epsilon_double_epoch
        return self.epsilon * (2.0 if double else 1.0)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int,
                 soft_target: Tensor | None = None, **side: Tensor) -> StepOutput:
        check_batch(x, y)
        if soft_target is None:
            raise SmoothmixError("method catrs needs the per-example soft targets (pass "
                                 "--targets FILE built by `smoothmix targets`)")
        if soft_target.shape != (x.shape[0], self.num_classes):
            raise SmoothmixError(f"catrs soft targets must be batch x {self.num_classes}, got "
                                 f"{tuple(soft_target.shape)}")
        m, batch = self.num_noise, x.shape[0]
        target = soft_target.detach().to(torch.promote_types(soft_target.dtype, torch.float32))
        noise = self._noise(x, m)
        epsilon = self.current_epsilon(epoch)

        # Natural forward first: with batch norm, its running statistics are what the
        # search then sees in eval mode (the reference's order). Without batch norm the
        # search does not depend on it, and both train-mode forwards can share one call.
        with_bn = has_batch_statistics(unwrap_ddp(model))
        if with_bn:
            logits0 = model(noisy_copies(x, noise))
            delta = catrs_noise_search(model, x, noise, target, self.num_steps, epsilon)
            logits_adv = model(noisy_copies(x, delta))
        else:
            delta = catrs_noise_search(model, x, noise, target, self.num_steps, epsilon)
            logits0, logits_adv = forward_groups(
                model, [noisy_copies(x, noise), noisy_copies(x, delta)])
        logits0, logits_adv = full_precision(logits0), full_precision(logits_adv)

        y_copies = y.repeat(m)
        ce = F.cross_entropy(logits0, y_copies, reduction="none").view(m, batch)
        with torch.no_grad():
            if self.confidence_mask:
                w = target.gather(1, y.unsqueeze(1)).squeeze(1)
            else:
                w = (logits0.argmax(-1) == y_copies).view(m, batch).to(target.dtype).mean(0)
            k = self._binomial(m, w.clamp(0.0, 1.0)).clamp_min(1)
            mask = (k == m).to(ce.dtype)
            # keep[i, b] = 1 for the K_b smallest cross-entropies of image b.
            keep = (torch.arange(m, device=x.device).unsqueeze(1) < k.unsqueeze(0)).to(ce.dtype)
        loss_low = (ce.sort(dim=0).values * keep).sum(0) / m

        kl = kl_divergence(target.unsqueeze(0),
                           logits_adv.log_softmax(-1).view(m, batch, -1))  # (M, B)
        loss_high = kl.max(0).values
        loss = (loss_low + self.lbd * mask * loss_high).mean()
        return StepOutput(loss, {
            "loss": loss.detach(),
            "loss_low": loss_low.detach().mean(),
            "loss_high": loss_high.detach().mean(),
            "mask_fraction": mask.mean(),
            "acc": accuracy(logits0, y_copies),
        })
