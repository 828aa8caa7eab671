"""Empirical robustness of the smoothed classifier: attack it, then ask PREDICT.

The attack is SmoothAdv's PGD on the smoothed soft classifier G(x) = mean_i F(x + delta_i)
(:func:`smoothmix.methods.attacks.pgd_attack`, docs/MATH.md §3.3), run with many noise draws; the
adversarial point is then classified by PREDICT with fresh noise, so the answer is the
smoothed classifier's own (abstaining) one: the label kept, an abstention, or another class
(:func:`attack_outcome`). :func:`attack_dataset` does both on every selected example of a
dataset into a resumable, shardable result file (:mod:`smoothmix.runner`).

What a certificate promises here, and no more: where CERTIFY (level alpha_C) certified
class c at a radius R >= epsilon, g is c on the ball unless CERTIFY failed, and PREDICT
(level alpha_P) returns a class other than g's with probability <= alpha_P. So at a given
point within epsilon PREDICT returns a *different class* than c with probability at most
alpha_C + alpha_P (about 2 alpha). Abstentions are covered by no bound: near a tie (an
attacked point close to g's decision boundary but still inside the certified ball) PREDICT
abstains most of the time although g is provably constant there. Certified accuracy at
epsilon is therefore not a lower bound on the share of examples whose label is kept
(tests/test_empirical.py shows a linear classifier with 100 % certified at epsilon and most
attacked points abstaining).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothmix.checks import check_count, check_sigma, is_real
from smoothmix.core import Smooth, check_predict_args
from smoothmix.data.datasets import Examples
from smoothmix.device import module_device
from smoothmix.errors import require
from smoothmix.methods.attacks import pgd_attack
from smoothmix.noise import Noise
from smoothmix.run import RunSpec, as_spec
from smoothmix.runner import Row, per_example, run_dataset, spec_settings
from smoothmix.statistics import DEFAULT_ALPHA

__all__ = [
    "ATTACK_N", "ATTACK_NOISE", "ATTACK_STEPS", "attack_and_predict", "attack_dataset",
    "attack_outcome", "check_attack_args", "smoothed_attack",
]

# The attack's defaults, for :func:`attack_dataset` and `smoothmix attack` alike: PGD steps,
# noise draws of the smoothed soft classifier, and PREDICT's samples at x and at the attacked
# point.
ATTACK_STEPS = 20
ATTACK_NOISE = 128
ATTACK_N = 10_000


def attack_dataset(
    model: nn.Module,
    dataset: Examples,
    spec: RunSpec | float | Noise,
    out_path: str | os.PathLike,
    *,
    epsilon: float,
    num_steps: int = ATTACK_STEPS,
    num_noise: int = ATTACK_NOISE,
    n: int = ATTACK_N,
    alpha: float = DEFAULT_ALPHA,
    **extra: Any,
) -> Path:
    """Attack the smoothed classifier at every example ``spec`` selects (PGD in the l2 ball
    of ``epsilon`` on the smoothed soft classifier, ``num_noise`` draws, ``num_steps``
    steps) and run PREDICT (``n``, ``alpha``) at x and at the attacked point. File: ``idx
    label predict correct time adv_predict distance adv_outcome`` with adv_outcome =
    :func:`attack_outcome`: PREDICT abstains near ties, and an abstention is not a failure of
    any certificate, so the three are kept apart. A file of smoothmix 0.1.0 (last column
    ``robust``: the label at both points) resumes in its own format. ``spec`` and ``extra``
    as for :func:`smoothmix.certification.certify_dataset`."""
    spec = as_spec(spec, extra, "attack_dataset")

    def classify(smooth: Smooth, x: torch.Tensor, label: int,
                 generator: torch.Generator) -> Row:
        clean, adv, distance = _attack_and_predict(smooth, x, label, epsilon, num_steps,
                                                   num_noise, n, alpha, spec.batch_size,
                                                   generator)
        return clean, math.nan, (adv, repr(distance), attack_outcome(adv, label))

    check_attack_args(epsilon, num_steps, num_noise)
    check_predict_args(n, alpha, spec.batch_size)
    counts = {"epsilon": float(epsilon), "num_steps": num_steps, "num_noise": num_noise,
              "n": n, "alpha": alpha}
    settings = spec_settings(spec, counts, dataset)
    compute = per_example("attack", classify, model, dataset, spec)
    return run_dataset("attack", compute, model, dataset, out_path, settings, spec)


def attack_outcome(adv_predict: int, label: int) -> str:
    """What PREDICT did at the attacked point: ``kept`` the label, ``abstained`` (-1), or
    ``changed`` to another class. Where CERTIFY certified the label at a radius >= epsilon,
    only ``changed`` is bounded (probability <= CERTIFY's alpha + PREDICT's alpha); an
    abstention near a tie is allowed by every certificate."""
    if adv_predict == label:
        return "kept"
    return "abstained" if adv_predict == Smooth.ABSTAIN else "changed"


def check_attack_args(epsilon: float, num_steps: int, num_noise: int) -> None:
    """SmoothmixError unless the attack settings make sense."""
    require(is_real(epsilon) and 0 <= epsilon < math.inf, f"epsilon must be >= 0, got {epsilon}")
    check_count("num_steps", num_steps)
    check_count("num_noise", num_noise)


def smoothed_attack(
    model: nn.Module,
    x: torch.Tensor,
    label: int,
    sigma: float,
    epsilon: float,
    num_steps: int,
    num_noise: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD (``num_steps`` steps, l2 ball of ``epsilon``) on the smoothed soft classifier at
    one image ``x`` (C x H x W, in [0, 1]) against ``label``, with ``num_noise`` noise draws
    from ``generator`` shared by every step; PGD's random direction where a gradient
    vanishes comes from ``generator`` too, so a seeded generator fixes the attacked point
    whatever the global RNG holds. Returns the adversarial image (C x H x W)."""
    check_attack_args(epsilon, num_steps, num_noise)
    return _smoothed_attack(model, x, label, check_sigma(sigma), epsilon, num_steps, num_noise,
                            generator)


def _smoothed_attack(model: nn.Module, x: torch.Tensor, label: int, sigma: float,
                     epsilon: float, num_steps: int, num_noise: int,
                     generator: torch.Generator | None) -> torch.Tensor:
    """:func:`smoothed_attack` for settings checked where they entered."""
    device = module_device(model, x.device)
    x = x.to(device).unsqueeze(0)
    if epsilon == 0:
        return x[0].clone()
    noise = torch.randn((num_noise, *x.shape), generator=generator, device=device,
                        dtype=x.dtype) * sigma
    y = torch.tensor([int(label)], device=device)
    return pgd_attack(model, x, y, noise, epsilon, num_steps, generator)[0].detach()


def attack_and_predict(
    smooth: Smooth,
    x: torch.Tensor,
    label: int,
    epsilon: float,
    num_steps: int,
    num_noise: int,
    n: int,
    alpha: float,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> tuple[int, int, float]:
    """(PREDICT at x, PREDICT at the adversarial point, l2 distance between them).
    The attack's noise and both PREDICTs' noise come from ``generator``, one after another,
    so every draw is fresh. In grid mode the attacked point is rounded to the 8-bit grid
    before PREDICT (the sound sampler takes only grid inputs); the distance returned is the
    rounded point's, which may exceed epsilon by the rounding."""
    check_attack_args(epsilon, num_steps, num_noise)
    check_predict_args(n, alpha, batch_size)
    return _attack_and_predict(smooth, x, label, epsilon, num_steps, num_noise, n, alpha,
                               batch_size, generator)


def _attack_and_predict(smooth: Smooth, x: torch.Tensor, label: int, epsilon: float,
                        num_steps: int, num_noise: int, n: int, alpha: float, batch_size: int,
                        generator: torch.Generator | None) -> tuple[int, int, float]:
    """:func:`attack_and_predict` for settings checked where they entered (once per run)."""
    clean = smooth._predict(x, n, alpha, batch_size, generator)
    x_adv = _smoothed_attack(smooth.base_classifier, x, label, smooth.sigma, epsilon,
                             num_steps, num_noise, generator)
    x_adv = smooth.noise.snap(x_adv)  # onto the inputs the noise takes (grid noise: the grid)
    adversarial = smooth._predict(x_adv, n, alpha, batch_size, generator)
    distance = float((x_adv - x.to(x_adv.device)).flatten().norm())
    return clean, adversarial, distance
