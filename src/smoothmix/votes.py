"""The one vote counter: the base classifier's votes on noisy copies of an image.

Votes are independent draws of the base classifier in eval mode (:func:`voting`); a draw the
noise rejects (the sound grid sampler's) votes for no class (:func:`base_votes`). CERTIFY,
PREDICT and the CAT-RS targets count votes with :func:`count_votes`, the pool of
:mod:`smoothmix.sequences` feeds :func:`base_votes` to each image's procedure in order.

Early abstain (docs/MATH.md §2.1) lives here too: with ``watch`` and ``need`` an estimation
run stops once class ``watch`` can no longer reach ``need`` votes, checked at the points of
:func:`futility_checks` (each check reads a count back to the host, so their number is fixed).

Progress: inside :func:`smoothmix.progress.show_samples` (re-exported here for the core), each
drawn block advances the open bar; the draws are the same with or without one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from smoothmix.checks import check_count
from smoothmix.errors import SmoothmixError, require
from smoothmix.execution import Execution, prepare_model
from smoothmix.noise import Noise
from smoothmix.progress import sample_counter, show_samples

__all__ = ["FUTILITY_CHECKS", "Votes", "base_votes", "check_image", "count_votes",
           "futility_checks", "show_samples", "voting"]

# Early-abstain checks per estimation run: each reads a count back to the host, so their
# number is fixed; more checks stop closer to the first futile sample.
FUTILITY_CHECKS = 7


class Votes(NamedTuple):
    """What :func:`count_votes` counted on one image."""

    counts: torch.Tensor  # int64, one entry per class, on the classifier's device
    # draws the noise rejected (they voted for no class): a 0-dim int64 tensor on the
    # classifier's device, read by the caller only when needed (each read is a host sync)
    rejected: torch.Tensor
    drawn: int  # noisy copies drawn (fewer than asked after an early stop)

    def read(self) -> tuple[list[int], int]:
        """The counts and the rejected draws as Python ints, in one read of the device (one
        host sync): what CERTIFY and PREDICT compute their bounds from."""
        *counts, rejected = torch.cat([self.counts, self.rejected.view(1)]).tolist()
        return counts, rejected


def count_votes(model: nn.Module, noise: Noise, x: torch.Tensor, num: int, num_classes: int,
                execution: Execution, generator: torch.Generator | None = None, *,
                watch: int | None = None, need: int | None = None) -> Votes:
    """The votes of ``model`` on ``num`` noisy copies of ``x`` (on the model's device, as
    the generator, if given).

    Noise is drawn and fed to the model one chunk at a time, as ``execution`` says (fixed
    rows), so a seeded generator gives the same votes for the same execution. With ``watch``
    and ``need``, drawing may stop once class ``watch`` can no longer reach ``need`` votes
    out of ``num``; once futile, always futile (votes + remaining never grows), so a later
    check would give the same answer.
    """
    check_count("num", num)
    if generator is not None and generator.device.type != x.device.type:
        raise SmoothmixError(f"generator is on {generator.device}, the classifier on {x.device}")
    draw = _noisy_copies(noise, x, execution, generator)
    checks, (watched, needed) = [], (0, 0)
    if watch is not None and need is not None:
        checks, (watched, needed) = futility_checks(num, need), (watch, need)
    # Slot num_classes counts the rejected draws (always 0 for a noise that never rejects).
    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=x.device)
    ones = torch.ones(execution.chunk, dtype=torch.long, device=x.device)
    drawn, shown = 0, sample_counter()  # the bar of Smooth.certify(..., progress=True)
    with voting(model, execution, x.device) as voter:
        for start in range(0, num, execution.chunk):
            if checks and start >= checks[0]:
                checks = [c for c in checks if c > start]
                if int(counts[watched]) + (num - start) < needed:
                    break
            rows = min(execution.chunk, num - start)
            votes = base_votes(voter, *draw(rows), num_classes)
            # index_add_, not bincount: CUDA's bincount reads the votes' min/max back to
            # the host on every call.
            counts.index_add_(0, votes, ones[:rows])
            drawn += rows
            if shown is not None:
                shown(rows)
    return Votes(counts[:num_classes], counts[num_classes], drawn)


def _noisy_copies(noise: Noise, x: torch.Tensor, execution: Execution,
                  generator: torch.Generator | None
                  ) -> Callable[[int], tuple[torch.Tensor, torch.Tensor | None]]:
    """``draw(rows)``: the next ``rows`` noisy copies of ``x`` as the model takes them, and
    which ones the noise rejected (None: it never rejects). Every call reuses one buffer of
    ``execution.chunk`` rows: the chunk just drawn is still in cache when the model reads
    it, and the chunk is a recorded setting, so the stream stays reproducible."""
    x_in, to_model = execution.noise_layout(x)
    buffer = torch.empty((execution.chunk, *x_in.shape), dtype=x.dtype, device=x.device)
    prepared: Any = noise.prepare(x_in)

    def draw(rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        block = buffer[:rows]
        rejected = noise.draw(prepared, block, generator)
        return to_model(block), rejected

    return draw


def futility_checks(num: int, need: int) -> list[int]:
    """The sample counts, ascending, at which an estimation run of ``num`` samples tests
    whether ``need`` votes are still reachable: :data:`FUTILITY_CHECKS` evenly spaced
    points of the range where the test can succeed (past num - need samples), so the number
    of host reads does not grow with the number of blocks."""
    first = max(0, num - need + 1)  # fewer samples cannot rule out `need` votes
    return sorted({first + (num - first) * j // (FUTILITY_CHECKS + 1)
                   for j in range(1, FUTILITY_CHECKS + 1)})


@contextlib.contextmanager
def voting(model: nn.Module, execution: Execution, device: torch.device
           ) -> Iterator[nn.Module]:
    """The model to vote with, as ``execution`` runs it (:func:`prepare_model`: the user's
    module, or a prepared copy of it), under inference mode and its autocast; in eval mode
    meanwhile (train-mode batch norm would make each copy's vote depend on the others in its
    batch, and the votes must be independent), its mode restored after. Layout and compile
    are set before inference mode, which would otherwise turn converted weights into
    inference tensors."""
    prepared = prepare_model(model, execution)
    was_training = getattr(prepared, "_orig_mod", prepared).training
    prepared.eval()
    try:
        with torch.inference_mode(), execution.autocast(device):
            yield prepared
    finally:
        prepared.train(was_training)


def base_votes(model: nn.Module, noisy: torch.Tensor, rejected: torch.Tensor | None,
               num_classes: int) -> torch.Tensor:
    """The base classifier's vote on each noisy row (a vector on the model's device): its
    top-1 class, or ``num_classes`` for a draw the noise rejected, which votes for no
    class. The one place votes are made: :func:`count_votes` counts them, the pool of
    :mod:`smoothmix.sequences` feeds them to each image's procedure in order."""
    logits = model(noisy)
    require(
        logits.shape == (len(noisy), num_classes),
        f"base classifier returned logits of shape {tuple(logits.shape)} for {len(noisy)} "
        f"images; expected {len(noisy)} x {num_classes} (num_classes={num_classes})",
    )
    votes = logits.argmax(1)
    if rejected is not None:
        votes.masked_fill_(rejected, num_classes)
    return votes


def check_image(x: object) -> None:
    """SmoothmixError unless ``x`` is one float image C x H x W."""
    if not isinstance(x, torch.Tensor):
        raise SmoothmixError(f"x must be a torch.Tensor image C x H x W, got {type(x).__name__}")
    hint = " (a batch? pass one image x[i])" if x.dim() == 4 else ""
    require(x.dim() == 3, f"x must be one image of shape C x H x W, got {tuple(x.shape)}{hint}")
    require(x.is_floating_point(), f"x must be a float image in [0, 1], got dtype {x.dtype}")
    # A NaN pixel makes every logit NaN, and argmax then votes class 0 on every draw: a
    # "certificate" at the largest radius for garbage. Pixels past [0, 1] (a 0..255 image, a
    # normalised one) would be certified in units the user did not mean.
    low, high = torch.stack(torch.aminmax(x.detach())).tolist()  # one host read
    require(math.isfinite(low) and math.isfinite(high), "x has NaN or infinite pixels")
    scale = " (0..255? divide by 255)" if high > 1.5 else ""
    require(low >= 0.0 and high <= 1.0,
            f"x must be an image in [0, 1] (normalise inside the model), got pixels in "
            f"[{low:.4g}, {high:.4g}]{scale}")
