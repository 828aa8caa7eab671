"""Decisions "robust at radius r" with far fewer samples than CERTIFY (docs/MATH.md §2.1).

For an image x, a class c and radii r_1..r_k, let p0_j = Phi(r_j / sigma). The smoothed
classifier is robust at r_j (returns c on the whole ball) when p_c > p0_j. Each procedure
here draws noise samples in segments, looks at the votes for c after each segment, and
claims "certified at r_j" only when a test at level alpha rejects p_c <= p0_j; it gives up on
r_j ("not-certified") when the opposite test rejects at level ``beta`` (that only removes
claims, so beta affects power, never soundness), and stops at the sample cap ("undecided",
which counts as not certified). Soundness is per image: P(any false claim) <= alpha.

* ``kt`` - the betting confidence sequence with the Krichevsky-Trofimov (Beta(1/2, 1/2))
  mixture: claim r_j once A >= p0_j N and log KT(A, N) - A log p0_j - (N - A) log(1 - p0_j)
  >= log(1/alpha). By Ville's inequality the mixture likelihood ratio exceeds 1/alpha at some
  time with probability <= alpha, so it may be checked at any look, however chosen.
* ``union`` - a union bound over checkpoints N_t (every integer to 28, then x1.1): at N_t
  claim r_j if P_{p0_j}(Bin(N_t, p0_j) >= A_{N_t}) <= alpha_t, alpha_t = 5 alpha/((t+4)(t+5)),
  whose sum over t >= 1 is alpha. Every checkpoint inside a segment is evaluated, from the
  per-sample votes.
* ``staged`` - Horvath et al. (2022): stages of n_1 < n_2 < n_3 fresh samples (1 : 10 : 100
  of the cap), each a Clopper-Pearson test at level alpha/3 on that stage's samples alone.

One sequence serves every radius at level alpha: each statistic is monotone in p0 (a larger
p0 is harder to reject), so a false claim at any radius implies that the true p_c itself was
rejected at some look, an event of probability <= alpha.

The class c is the label (evaluation) or the argmax of ``n0`` separate selection samples
(deployment); c is then independent of every test sample, so selection costs no alpha.

:func:`run_pool` drives many images through shared forward batches: a pool of unfinished
images is refilled so that every batch is full. Each image draws its noise from its own
generator in blocks of a fixed number of rows (leftover rows wait for its next piece), and
looks where its own procedure says, so its stream and decisions do not depend on how its
samples were split between batches or which images shared them: a resumed run, or one
with another batch size, gives the same rows (on the same kind of device). The votes on a
batch are :func:`smoothmix.votes.base_votes`, the counter CERTIFY uses; only the noise
blocking differs (per-image 16-row blocks, which the batch-independence above needs), and it
is part of the recorded stream of every ``--radii`` file, so it stays as it is.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import gammaln
from scipy.stats import binom, norm
from torch import nn

from smoothmix.core import clopper_pearson_lower, clopper_pearson_upper
from smoothmix.device import module_device
from smoothmix.errors import require
from smoothmix.execution import Execution, resolve_execution
from smoothmix.grid import GridNoise
from smoothmix.noise import GridGaussianNoise, Noise, make_noise
from smoothmix.votes import base_votes, voting

__all__ = ["CERTIFIED", "DECISIONS", "NOT_CERTIFIED", "PROCEDURES", "SEQUENCES", "UNDECIDED",
           "KTProcedure", "PoolItem", "Procedure", "StagedProcedure", "UnionProcedure",
           "kt_log_evidence", "make_procedure", "null_probabilities", "run_pool",
           "stage_sizes", "union_alpha", "union_checkpoints"]

SEQUENCES = ("kt", "union", "staged")
CERTIFIED, NOT_CERTIFIED, UNDECIDED = "certified", "not-certified", "undecided"
DECISIONS = (CERTIFIED, NOT_CERTIFIED, UNDECIDED)

# Looks of kt and union come after 16 samples, then every x1.25: early enough that a
# confident image (p ~ 1) is decided at r = sigma after ~60 samples (docs/MATH.md §2.1), few enough
# that the per-look cost stays small. kt may look anywhere; union evaluates its own
# checkpoints inside each segment, so the look schedule costs it nothing either.
_FIRST_LOOK = 16
_GROWTH = 1.25
_STAGE_WEIGHTS = (1, 10, 100)
_NOISE_BLOCK = 16  # rows per draw from an image's generator


def null_probabilities(radii: Sequence[float], sigma: float) -> np.ndarray:
    """p0 = Phi(r / sigma) for each radius: robust at r means p_c > p0."""
    return norm.cdf(np.asarray(radii, dtype=float) / sigma)


def kt_log_evidence(a: int, n: int, p0: np.ndarray) -> np.ndarray:
    """log of the KT mixture likelihood ratio against Bin(n, p0) after a successes in n:
    log KT(a, n) - a log p0 - (n - a) log(1 - p0), with KT(a, n) = G(a + 1/2) G(n - a + 1/2)
    / (pi G(n + 1)) (G = Gamma), the Beta(1/2, 1/2) mixture probability of the sequence."""
    log_kt = gammaln(a + 0.5) + gammaln(n - a + 0.5) - math.log(math.pi) - gammaln(n + 1)
    return log_kt - a * np.log(p0) - (n - a) * np.log1p(-p0)


def union_checkpoints(cap: int) -> list[int]:
    """The union-bound checkpoints N_1 < N_2 < ... up to ``cap``: every integer to 28, then
    x1.1 (rounded up), and ``cap`` itself as the last (a fixed schedule, so still valid).
    The rounding is exact integer arithmetic: ceil(n * 1.1) in floating point goes one too
    far whenever n * 1.1 is an integer (380 * 1.1 = 418.00000000000006)."""
    points, n = [], 1
    while n < cap:
        points.append(n)
        n = n + 1 if n < 28 else -(-11 * n // 10)
    return [*points, cap]


def union_alpha(t: int | np.ndarray, alpha: float) -> float | np.ndarray:
    """alpha_t = 5 alpha / ((t + 4)(t + 5)) for checkpoint t = 1, 2, ...: sums to alpha."""
    return 5.0 * alpha / ((t + 4) * (t + 5))


def stage_sizes(cap: int) -> list[int]:
    """Stage sizes 1 : 10 : 100 whose sum is at most ``cap`` (all of it in the last)."""
    total = sum(_STAGE_WEIGHTS)
    first = [max(1, cap * w // total) for w in _STAGE_WEIGHTS[:-1]]
    return [*first, cap - sum(first)]


@dataclass
class Procedure(abc.ABC):
    """Decisions at every radius for one image: feed it the predictions it asks for.

    ``cls`` is the class tested (None: select it from the first ``n0`` predictions).
    ``decisions[j]`` and ``samples[j]`` hold radius j's decision and the samples drawn for
    the image (selection included) when it was taken.
    """

    p0: np.ndarray
    alpha: float
    beta: float
    cap: int
    cls: int | None = None
    n0: int = 0
    drawn: int = 0  # all predictions fed, selection included
    n: int = 0  # test samples (for cls) so far
    a: int = 0  # of which voted cls
    decisions: list[str] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    _selection: list[np.ndarray] = field(default_factory=list)
    _target: int = 0  # test-sample count of the next look
    _segment_start: int = 0  # test-sample count when the current segment began
    _segment_hits: list[np.ndarray] = field(default_factory=list)  # its votes so far

    def __post_init__(self) -> None:
        self.decisions = [UNDECIDED] * len(self.p0)
        self.samples = [0] * len(self.p0)
        self._target = self._next_look(0)

    @property
    def selecting(self) -> bool:
        return self.cls is None

    @property
    def done(self) -> bool:
        return not self.selecting and (self.n >= self.cap or UNDECIDED not in self.decisions)

    def want(self) -> int:
        """Predictions to draw before the next look (0 when done)."""
        if self.selecting:
            return self.n0 - self.drawn
        return 0 if self.done else self._target - self.n

    def feed(self, preds: np.ndarray, num_classes: int) -> None:
        """Take the next ``want()`` predictions (or part of them, in order) and look."""
        require(0 < len(preds) <= self.want(), "fed more predictions than asked for")
        self.drawn += len(preds)
        if self.selecting:
            self._selection.append(preds)
            if self.drawn == self.n0:
                votes = np.bincount(np.concatenate(self._selection), minlength=num_classes)
                self.cls = int(votes[:num_classes].argmax())  # slot num_classes: rejected
            return
        hits = preds == self.cls
        self._segment_hits.append(hits)
        self.n += len(preds)
        self.a += int(hits.sum())
        if self.n == self._target:  # a look: the segment is complete
            self._look(np.concatenate(self._segment_hits), self._segment_start)
            self._segment_start, self._target = self.n, self._next_look(self.n)
            self._segment_hits = []
        if self.n >= self.cap:
            self.samples = [s if d != UNDECIDED else self.drawn
                            for d, s in zip(self.decisions, self.samples, strict=True)]

    def _decide(self, claim: np.ndarray, give_up: np.ndarray) -> None:
        for j in range(len(self.p0)):
            if self.decisions[j] == UNDECIDED and (claim[j] or give_up[j]):
                self.decisions[j] = CERTIFIED if claim[j] else NOT_CERTIFIED
                self.samples[j] = self.drawn

    def _next_look(self, n: int) -> int:
        """The test-sample count of the look that follows one at ``n`` samples."""
        return min(self.cap, max(n + 1, _FIRST_LOOK, math.ceil(n * _GROWTH)))

    @abc.abstractmethod
    def _look(self, hits: np.ndarray, start_n: int) -> None:
        """Decide what the votes so far allow; ``hits`` are the segment's votes for cls,
        which began after ``start_n`` test samples."""


class KTProcedure(Procedure):
    def _look(self, hits: np.ndarray, start_n: int) -> None:
        evidence = kt_log_evidence(self.a, self.n, self.p0)
        above = self.a >= self.p0 * self.n
        # The same mixture against p0 from the other side (KT is symmetric) gives up.
        self._decide(above & (evidence >= math.log(1 / self.alpha)),
                     ~above & (evidence >= math.log(1 / self.beta)))


class UnionProcedure(Procedure):
    def _look(self, hits: np.ndarray, start_n: int) -> None:
        points = np.asarray(union_checkpoints(self.cap))
        inside = np.flatnonzero((points > start_n) & (points <= self.n))
        if not len(inside):
            return
        n_t = points[inside][:, None]
        t = inside[:, None] + 1  # checkpoints are numbered from 1
        a_t = (self.a - int(hits.sum()) + np.cumsum(hits))[n_t - start_n - 1]
        p0 = self.p0[None, :]
        # Every checkpoint of the segment against every radius at once; the first that
        # decides a radius is the one a sample-by-sample run would have stopped at.
        claim = binom.sf(a_t - 1, n_t, p0) <= union_alpha(t, self.alpha)
        give_up = binom.cdf(a_t, n_t, p0) <= union_alpha(t, self.beta)
        decided = claim | give_up
        first = decided.argmax(axis=0)
        cols = np.arange(len(self.p0))
        any_decided = decided.any(axis=0)
        self._decide(any_decided & claim[first, cols], any_decided & give_up[first, cols]
                     & ~claim[first, cols])


class StagedProcedure(Procedure):
    """Stages of fresh samples for the one class (selected once, on separate samples:
    it is then independent of every stage, which is all the stage tests need)."""

    def _stage_ends(self) -> list[int]:
        return list(np.cumsum(stage_sizes(self.cap)))

    def _next_look(self, n: int) -> int:
        return next((end for end in self._stage_ends() if end > n), self.cap)

    def _look(self, hits: np.ndarray, start_n: int) -> None:
        # The segment is exactly one stage: its votes alone are the stage's test.
        size, a = len(hits), int(hits.sum())
        lower = clopper_pearson_lower(a, size, self.alpha / len(_STAGE_WEIGHTS))
        upper = clopper_pearson_upper(a, size, self.beta)
        self._decide(lower >= self.p0, upper < self.p0)


PROCEDURES: dict[str, type[Procedure]] = {
    "kt": KTProcedure,
    "union": UnionProcedure,
    "staged": StagedProcedure,
}


def make_procedure(sequence: str, radii: Sequence[float], sigma: float, alpha: float,
                   cap: int, cls: int | None, n0: int, beta: float | None = None) -> Procedure:
    """A fresh procedure for one image (``cls=None``: select the class on ``n0`` samples).
    ``beta`` is the give-up level (power only); default ``alpha``."""
    require(sequence in PROCEDURES, f"unknown sequence {sequence!r}; choose one of "
            f"{', '.join(SEQUENCES)}")
    return PROCEDURES[sequence](null_probabilities(radii, sigma), alpha,
                                alpha if beta is None else beta, cap, cls, n0)


@dataclass
class PoolItem:
    """One image in the pool: ``key`` is returned to the caller when it is done. ``noise``
    (a :class:`smoothmix.noise.Noise`; None: :func:`run_pool`'s) draws its noisy copies; a
    draw the noise rejects votes for no class (a failure for the class tested). A
    :class:`smoothmix.grid.GridNoise` sampler is taken as the grid noise around it (older
    callers passed one)."""

    key: object
    x: torch.Tensor
    generator: torch.Generator
    procedure: Procedure
    noise: Noise | None = None
    spare: torch.Tensor | None = None  # noise rows drawn but not used yet
    spare_rejected: torch.Tensor | None = None
    prepared: object = None  # what the noise prepared for this image, once
    # Its share of the pool's wall time: of each batch it took rows in, the batch's seconds
    # times its rows over the batch's (images share batches, so the time from its first
    # batch to its last counts the others' rows too and sums to far more than the run took).
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.noise, GridNoise):
            self.noise = GridGaussianNoise.wrap(self.noise)

    def draw(self, rows: int, noise: Noise, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The image's next ``rows`` noisy copies and which of them the noise rejected
        (``noise`` unless the item has its own): its stream, drawn in fixed blocks, is the
        same however the rows are split between batches."""
        noise = self.noise or noise
        if self.prepared is None:
            self.prepared = noise.prepare(self.x.to(device))
        spare = [] if self.spare is None or self.spare_rejected is None or not len(self.spare) \
            else [(self.spare, self.spare_rejected)]
        have = len(spare[0][0]) if spare else 0
        if have < rows:
            blocks = math.ceil((rows - have) / _NOISE_BLOCK)
            spare += [noise.block(self.prepared, _NOISE_BLOCK, self.generator)
                      for _ in range(blocks)]
            self.spare = torch.cat([noisy for noisy, _ in spare])
            self.spare_rejected = torch.cat([flags for _, flags in spare])
        assert self.spare is not None and self.spare_rejected is not None
        out, flags = self.spare[:rows], self.spare_rejected[:rows]
        self.spare, self.spare_rejected = self.spare[rows:], self.spare_rejected[rows:]
        return out, flags


def run_pool(
    model: nn.Module,
    items: Iterable[PoolItem],
    noise: Noise | float,
    num_classes: int,
    batch_size: int,
    on_done: Callable[[PoolItem], None],
    execution: Execution | None = None,
) -> None:
    """Run every item's procedure to the end, sharing forward batches of ``batch_size``.

    A batch takes from each image in the pool, in order, what it wants before its next
    look (as much as fits; the rest goes in the next batch), and new images join the pool
    while the batch has room: every batch is full until the last images run out.
    ``on_done`` is called for each image as soon as it is decided; its ``seconds`` is then
    its share of the wall time (see :class:`PoolItem`). ``noise`` draws the
    copies of items without their own (a sigma: Gaussian noise). ``execution`` says how
    the model runs (default: :func:`smoothmix.execution.resolve_execution`'s rule).
    """
    noise = make_noise(noise)
    device = module_device(model, torch.device("cpu"))
    if execution is None:
        execution = resolve_execution(model, device, batch_size)
    pending: Iterator[PoolItem] = iter(items)
    pool: list[PoolItem] = []
    with voting(model, execution, device) as voter:
        while pieces := _batch(pool, pending, batch_size):
            start = time.perf_counter()
            votes = _votes(voter, pieces, noise, device, execution, num_classes)
            offset = 0
            for item, piece in pieces:
                item.procedure.feed(votes[offset: offset + piece], num_classes)
                offset += piece
            seconds = time.perf_counter() - start
            for item, piece in pieces:
                item.seconds += seconds * piece / offset
            for item in [it for it, _ in pieces if it.procedure.done]:
                pool.remove(item)
                on_done(item)


def _batch(pool: list[PoolItem], pending: Iterator[PoolItem], batch_size: int
           ) -> list[tuple[PoolItem, int]]:
    """The next batch as (image, rows) pieces: what each image of the pool wants, in
    order, then new images (added to ``pool``) while there is room; empty when all are
    done."""
    pieces: list[tuple[PoolItem, int]] = []
    room = batch_size
    for item in pool:
        if room == 0:
            return pieces
        pieces.append((item, min(item.procedure.want(), room)))
        room -= pieces[-1][1]
    while room > 0 and (new := next(pending, None)) is not None:
        pool.append(new)
        pieces.append((new, min(new.procedure.want(), room)))
        room -= pieces[-1][1]
    return pieces


def _votes(model: nn.Module, pieces: list[tuple[PoolItem, int]], noise: Noise,
           device: torch.device, execution: Execution, num_classes: int) -> np.ndarray:
    """The votes (:func:`smoothmix.votes.base_votes`) on one batch made of each image's
    next noisy copies, forward chunk by forward chunk.

    The votes come back to the host once per batch (the looks need them). Written
    device-agnostic but not yet run on a GPU: there each 16-row noise block is one small
    kernel, which may cost more than the forward for small models (measure before tuning).
    """
    images, rejected = zip(*(item.draw(piece, noise, device) for item, piece in pieces),
                           strict=True)
    batch = execution.prepare_input(torch.cat(images))
    chunks = zip(batch.split(execution.chunk), torch.cat(rejected).split(execution.chunk),
                 strict=True)
    return torch.cat([base_votes(model, part, flags, num_classes)
                      for part, flags in chunks]).cpu().numpy()
