"""Attacks on the smoothed soft classifier ``G(x) = mean_i F(x + delta_i)``.

One objective serves every attack here: ``J(x') = -log G_y(x')`` with ``G`` clamped at
1e-20 (docs/MATH.md §3.3, §3.6), evaluated over fixed noise draws ``delta_1..delta_m`` that the
caller draws once per batch and reuses in every step. The variants differ only in how they
step:

* :func:`smoothmix_search` — SmoothMix's unrestricted search (docs/MATH.md §3.6 step 1): steps of
  length ``step_size`` along the normalised gradient, clamp to [0, 1], optional max-norm
  projection; returns the whole path (the one-step anchor and the end point come from it;
  the over-confidence diagnostic of docs/MATH.md §3.7 reads intermediate points).
* :func:`pgd_attack` — SmoothAdv's PGD in the epsilon-ball, step ``2*epsilon/T``.
* :func:`ddn_attack` — SmoothAdv's DDN (decoupled direction and norm) variant.

While an attack runs the model is in eval mode and its parameters take no gradient (both
restored afterwards, even on error): attack forwards must not update batch-norm statistics
and must not spend time on weight gradients. A DistributedDataParallel model is attacked
through its inner module (see :func:`~smoothmix.methods.base.unwrap_ddp`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothmix.methods.base import (
    LOG_CLAMP,
    full_precision,
    mean_over_copies,
    noisy_copies,
    unwrap_ddp,
)

__all__ = [
    "frozen_eval",
    "smoothed_nll",
    "input_gradient",
    "project_ball",
    "smoothmix_search",
    "pgd_attack",
    "ddn_attack",
]


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on all parameters; both restored on exit.

    Yields the module to attack (the inner module of a DDP wrapper).
    """
    net = unwrap_ddp(model)
    was_training = net.training
    params = list(net.parameters())
    flags = [p.requires_grad for p in params]
    net.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield net
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        net.train(was_training)


def _objective(logits: Tensor, y: Tensor, m: int) -> Tensor:
    """``J`` per example from the ``m*B`` noisy logits (computed in float32 under autocast)."""
    probs = mean_over_copies(full_precision(logits).softmax(-1), m)
    return -probs.gather(1, y.unsqueeze(1)).squeeze(1).clamp_min(LOG_CLAMP).log()


def smoothed_nll(model: nn.Module, x: Tensor, y: Tensor, noise: Tensor) -> Tensor:
    """Per-example ``J(x) = -log(max(mean_i F_y(x + noise[i]), 1e-20))``, shape ``(B,)``.

    All ``m`` noisy copies go through the model as one batch of ``m*B`` rows.
    """
    return _objective(model(noisy_copies(x, noise)), y, noise.shape[0])


def input_gradient(model: nn.Module, x: Tensor, y: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """``(dJ/dx, logits)`` of the summed objective at ``x`` (per example, since the
    examples are independent); ``logits`` are the ``m*B`` noisy logits, detached."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(noisy_copies(x, noise))
        (grad,) = torch.autograd.grad(_objective(logits, y, noise.shape[0]).sum(), x)
    return grad, logits.detach()


def _norms(t: Tensor) -> Tensor:
    """Per-example L2 norms shaped to broadcast against ``t`` (``B x 1 x 1 ...``)."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _unit(t: Tensor) -> Tensor:
    """Per-example normalisation as in the references: ``t / (||t|| + 1e-8)``."""
    return t / (_norms(t) + 1e-8)


def project_ball(x_adv: Tensor, x: Tensor, radius: float | Tensor) -> Tensor:
    """Shrink ``x_adv - x`` onto the L2 ball of ``radius`` around ``x`` (per example).

    For ``x`` and ``x_adv`` in [0, 1] the result is a convex combination of the two, so it
    stays in [0, 1].
    """
    delta = x_adv - x
    scale = (radius / _norms(delta).clamp_min(1e-12)).clamp(max=1.0)
    return x + delta * scale


def smoothmix_search(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    noise: Tensor,
    num_steps: int,
    step_size: float,
    max_norm: float | None = None,
    first_grad: Tensor | None = None,
) -> list[Tensor]:
    """SmoothMix's unrestricted adversarial search (docs/MATH.md §3.6 step 1).

    ``x~(0) = x``; ``x~(t+1) = clamp_[0,1](x~(t) + step_size * g / (||g|| + 1e-8))`` with
    ``g = dJ/dx~(t)``; with ``max_norm`` the step is first projected onto that ball around
    ``x`` (the clamp keeps it inside: it moves each pixel towards ``x``'s side of [0, 1]).
    Returns the path ``[x~(0), ..., x~(T)]`` (detached), so ``path[1]`` is the one-step
    adversary and ``path[-1]`` the end point; ``||x~(t) - x|| <= t * step_size``.
    ``first_grad``: ``dJ/dx`` at ``x~(0) = x`` when the caller already has it (SmoothMix
    computes it from the forward its natural loss shares), saving the first forward.
    """
    path = [x.detach()]
    with frozen_eval(model) as net:
        x_adv = path[0]
        for step in range(num_steps):
            if step == 0 and first_grad is not None:
                grad = first_grad
            else:
                grad, _ = input_gradient(net, x_adv, y, noise)
            x_adv = x_adv + step_size * _unit(grad)
            if max_norm is not None:  # project, then clamp: the reference's order
                x_adv = project_ball(x_adv, x, max_norm)
            path.append(x_adv.clamp_(0.0, 1.0))
    return path


def _ascent_direction(grad: Tensor, fallback: Tensor) -> Tensor:
    """Unit gradient per example, the unit ``fallback`` where the gradient is exactly 0
    (a saturated or clamped objective), without a host sync."""
    norms = _norms(grad)
    return torch.where(norms == 0, fallback, grad / (norms + 1e-8))


def _random_direction(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """A random unit direction per example, from ``generator`` (the global RNG if None)."""
    return _unit(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    noise: Tensor,
    epsilon: float,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SmoothAdv's PGD (docs/MATH.md §3.3): T steps of length ``2*epsilon/T`` from ``x`` along the
    normalised gradient of J (a random unit direction where it is 0, drawn from
    ``generator``, like the caller's noise), each followed by a clamp to [0, 1] and a
    projection onto the epsilon-ball around ``x``."""
    step = 2.0 * epsilon / num_steps
    # One random direction per attack, drawn up front (no per-step allocation, no host
    # sync to ask whether it is needed); used only where a gradient vanishes.
    fallback = _random_direction(x, generator)
    x_adv = x.detach()
    with frozen_eval(model) as net:
        for _ in range(num_steps):
            grad, _ = input_gradient(net, x_adv, y, noise)
            x_adv = (x_adv + step * _ascent_direction(grad, fallback)).clamp_(0.0, 1.0)
            x_adv = project_ball(x_adv, x, epsilon)
    return x_adv


def ddn_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    noise: Tensor,
    epsilon: float,
    num_steps: int,
    init_norm: float = 1.0,
    gamma: float = 0.05,
    levels: int = 256,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SmoothAdv's DDN attack on the smoothed classifier (Rony et al. 2019, as adapted by
    Salman et al. 2019 to several noise draws).

    Each step moves ``delta`` by a cosine-decayed step (1 -> 0.01) along the normalised
    gradient of J, then rescales it to a per-example norm that shrinks by ``1 - gamma``
    when the noise copies' majority vote is already wrong and grows by ``1 + gamma``
    otherwise (capped at the largest possible perturbation), then quantises ``x + delta``
    to ``levels`` grey levels inside [0, 1]. The result is the smallest adversarial
    perturbation found (none found: ``x`` itself), projected onto the epsilon-ball.
    ``init_norm`` defaults to 1.0, SmoothAdv's ``--init-norm-DDN 256`` (in 1/256 units),
    which applies outside training only: SmoothAdv training passes the warmed-up epsilon
    (its training script overwrites the init norm every epoch, docs/MATH.md §3.3). Where a
    gradient vanishes the step follows a random unit direction drawn from ``generator``
    (the global RNG if None), as in :func:`pgd_attack`.
    """
    norm = torch.full((x.shape[0],), init_norm, device=x.device,
                      dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    worst = _norms(torch.maximum(x, 1 - x))
    best_norm = worst.clone()
    best_delta = torch.zeros_like(x)
    delta = torch.zeros_like(x)
    fallback = _random_direction(x, generator)
    m = noise.shape[0]
    with frozen_eval(model) as net:
        for i in range(num_steps):
            lr = 0.01 + 0.99 * (1 + math.cos(math.pi * (i + 1) / num_steps)) / 2
            grad, logits = input_gradient(net, x + delta, y, noise)
            votes = F.one_hot(logits.argmax(-1), logits.shape[-1]).view(m, x.shape[0], -1)
            is_adv = (votes.sum(0).argmax(-1) != y).view_as(norm)
            l2 = _norms(delta)
            better = is_adv & (l2 < best_norm)
            best_norm = torch.where(better, l2, best_norm)
            best_delta = torch.where(better, delta, best_delta)

            delta = delta + lr * _ascent_direction(grad, fallback)
            norm = torch.minimum(norm * (1 - (2 * is_adv.to(norm.dtype) - 1) * gamma), worst)
            delta = delta * (norm / _norms(delta).clamp_min(1e-12))
            x_q = ((x + delta) * (levels - 1)).round_().div_(levels - 1).clamp_(0.0, 1.0)
            delta = x_q - x
    # Quantise before projecting (the reference does the opposite) so that the result is
    # guaranteed to lie in the epsilon-ball that SmoothAdv trains against.
    best_delta = (best_delta * (levels - 1)).round_().div_(levels - 1)
    return project_ball((x + best_delta).clamp_(0.0, 1.0), x, epsilon)
