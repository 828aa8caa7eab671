"""The over-confidence diagnostic of docs/MATH.md §3.7 (the SmoothMix paper's motivating table).

From each test image, run SmoothMix's unrestricted search on the smoothed soft classifier
(:func:`smoothmix.methods.attacks.smoothmix_search`, the attack the training uses) and, at
every point of its path, estimate by Monte Carlo how much of the smoothed vote the true
class keeps and how much the strongest other class gathers. A well-calibrated smoothed
classifier loses confidence on the way out instead of becoming confidently wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from smoothmix.checks import check_count, check_sigma, is_real
from smoothmix.errors import require
from smoothmix.methods.attacks import smoothmix_search
from smoothmix.progress import Progress

__all__ = ["ConfidenceRow", "format_rows", "overconfidence", "vote_fractions"]


@dataclass(frozen=True)
class ConfidenceRow:
    """Means over the test images at one path length."""

    path_length: float  # t * step_size (the search's path length, an upper bound on ||x~ - x||)
    mean_distance: float  # measured mean ||x~ - x||_2 (the [0,1] clamp can make it shorter)
    true_class: float  # E[P_delta(f(x~ + delta) = y)]
    max_other_class: float  # E[max_{c != y} P_delta(f(x~ + delta) = c)]


@torch.no_grad()
def vote_fractions(model: nn.Module, x: torch.Tensor, sigma: float, num_classes: int, n: int,
                   chunk: int = 1000) -> torch.Tensor:
    """Monte-Carlo estimate of P_delta(f(x_b + delta) = c) for a batch: B x num_classes."""
    counts = torch.zeros(x.shape[0], num_classes, device=x.device)
    per_chunk = max(1, chunk // x.shape[0])  # noise draws per image in one forward
    for start in range(0, n, per_chunk):
        k = min(per_chunk, n - start)
        noisy = x.unsqueeze(0) + sigma * torch.randn((k, *x.shape), device=x.device,
                                                     dtype=x.dtype)
        votes = model(noisy.flatten(0, 1)).argmax(1).view(k, x.shape[0])
        counts += F.one_hot(votes, num_classes).sum(0)
    return counts / n


def overconfidence(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    sigma: float,
    num_classes: int,
    *,
    step_size: float = 1.0,
    num_steps: int = 5,
    num_noise: int = 4,
    n: int = 1000,
    batch_size: int = 50,
    progress: bool = True,
    precision: str = "fp32",
) -> list[ConfidenceRow]:
    """docs/MATH.md §3.7 rows for path lengths 0, step_size, ..., num_steps * step_size.

    ``images`` (N x C x H x W in [0, 1]) and ``labels`` live on the model's device; the
    search uses ``num_noise`` draws per image (as in training) and the reported
    probabilities ``n`` fresh draws per point. ``progress``: a bar on terminals, a line at
    least once a minute in logs. ``precision`` "bf16" runs every forward under bf16
    autocast (the model as certified in bf16).
    """
    from smoothmix.execution import check_precision, warn_if_bf16_emulated

    check_precision(precision)
    if precision == "bf16":
        warn_if_bf16_emulated(images.device)
    sigma = check_sigma(sigma)
    require(is_real(step_size) and step_size > 0, f"step size must be > 0, got {step_size!r}")
    for name, value in (("num_steps", num_steps), ("num_noise", num_noise), ("n", n),
                        ("batch_size", batch_size)):
        check_count(name, value)
    require(images.dim() == 4 and len(images) == len(labels) and len(images) >= 1,
            f"need N x C x H x W images with N labels, got {tuple(images.shape)} and "
            f"{tuple(labels.shape)}")
    model.eval()
    sums = torch.zeros(num_steps + 1, 3, dtype=torch.float64)
    bar = Progress(len(images), unit="img", desc="diagnose", disable=not progress)
    for start in range(0, len(images), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        noise = sigma * torch.randn((num_noise, *x.shape), device=x.device, dtype=x.dtype)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            path = smoothmix_search(model, x, y, noise, num_steps, step_size)
        for t, x_t in enumerate(path):
            x_t = x_t.float()
            with torch.autocast(x.device.type, dtype=torch.bfloat16,
                                enabled=precision == "bf16"):
                probs = vote_fractions(model, x_t, sigma, num_classes, n)
            true = probs.gather(1, y.unsqueeze(1)).squeeze(1)
            other = probs.scatter(1, y.unsqueeze(1), -1.0).max(1).values
            dist = (x_t - x).flatten(1).norm(dim=1)
            sums[t] += torch.stack([dist.sum(), true.sum(), other.sum()]).double().cpu()
        bar.update(len(x))
    bar.close()
    means = (sums / len(images)).tolist()
    return [ConfidenceRow(t * step_size, d, p, q) for t, (d, p, q) in enumerate(means)]


def format_rows(rows: Sequence[ConfidenceRow]) -> str:
    """A markdown table of the rows (probabilities in %)."""
    lines = ["| path length | mean distance | P(true class) % | max P(other class) % |",
             "|---|---|---|---|"]
    lines += [f"| {r.path_length:g} | {r.mean_distance:.3f} | {100 * r.true_class:.1f} | "
              f"{100 * r.max_other_class:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"
