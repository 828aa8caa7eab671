"""The statistical core: CERTIFY and PREDICT of Cohen, Rosenfeld & Kolter (2019).

The API matches Cohen's ``core.Smooth`` so that existing code ports by changing one import.
Soundness rests on rules kept here and nowhere else: the class is selected on ``n0``
samples and bounded on ``n`` *fresh* ones; the bound is the exact one-sided Clopper-Pearson
interval (:func:`clopper_pearson_lower` / ``_upper``, the only implementation in the
package); PREDICT abstains unless a two-sided binomial test separates the top two classes at
level ``alpha``; and votes are independent draws of the base classifier in eval mode, a draw
the grid sampler rejects voting for no class (:func:`voting`, :func:`base_votes`: the one
vote counter, which :meth:`Smooth.sample_counts` and the pool of :mod:`smoothmix.sequences`
both use). How the classifier is run (precision, layout, chunk) is
:mod:`smoothmix.execution`'s.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

from smoothmix.checks import check_alpha, check_count, check_num_classes, check_sigma
from smoothmix.device import module_device
from smoothmix.errors import SmoothmixError, require
from smoothmix.execution import Execution, prepare_model, resolve_execution
from smoothmix.grid import GridNoise

__all__ = [  # module_device moved to smoothmix.device; importing it from here still works
    "ABSTAIN", "BOUNDS", "FUTILITY_CHECKS", "Certificate", "Smooth", "base_votes",
    "certified_radius", "certifying_votes", "check_bound", "check_certify_args",
    "check_predict_args", "clopper_pearson_lower", "clopper_pearson_upper", "futility_checks",
    "module_device", "radius_from_counts", "smallest_certifying_n", "smallest_predicting_n",
    "voting",
]

ABSTAIN = -1
BOUNDS = ("cohen", "two-sided")
# Early-abstain checks per estimation run: each reads a count back to the host, so their
# number is fixed; more checks stop closer to the first futile sample.
FUTILITY_CHECKS = 7


def clopper_pearson_lower(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial
    proportion after ``n_a`` successes in ``n`` trials (0 when ``n_a == 0``)."""
    require(n >= 1 and 0 <= n_a <= n, f"need 0 <= n_a <= n and n >= 1, got n_a={n_a}, n={n}")
    check_alpha(alpha)
    if n_a == 0:
        return 0.0
    return float(beta.ppf(alpha, n_a, n - n_a + 1))


def clopper_pearson_upper(n_b: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound on a binomial
    proportion after ``n_b`` successes in ``n`` trials (1 when ``n_b == n``)."""
    require(n >= 1 and 0 <= n_b <= n, f"need 0 <= n_b <= n and n >= 1, got n_b={n_b}, n={n}")
    check_alpha(alpha)
    if n_b == n:
        return 1.0
    return float(beta.ppf(1.0 - alpha, n_b + 1, n - n_b))


def radius_from_counts(n_a: int, n_b: int, n: int, alpha: float, sigma: float,
                       bound: str = "cohen") -> float | None:
    """The certified l2 radius from the estimation counts, or None to abstain.

    ``cohen``: sigma * Phi^-1(p_A) with p_A the (1 - alpha) lower bound on the selected
    class, i.e. the runner-up bounded by 1 - p_A (CERTIFY). ``two-sided``: Cohen's theorem
    in full, (sigma / 2) (Phi^-1(p_A) - Phi^-1(p_B)), with p_A the lower bound of n_a and
    p_B the upper bound of n_b (the largest other class's votes) each at alpha / 2. The
    runner-up is picked from the data, yet its bound holds: the true runner-up's count is at
    most n_b and the upper bound grows with the count. ``n_b`` is ignored by ``cohen``.
    """
    return _radius(n_a, n_b, n, alpha, check_sigma(sigma), bound)


def _radius(n_a: int, n_b: int, n: int, alpha: float, sigma: float, bound: str) -> float | None:
    """:func:`radius_from_counts` without the sigma check: for a sigma checked where it
    entered (:class:`Smooth`), or recorded by a file that is only being read (an old file's
    sigma is what it is; the sigma > 4 guard is for new input)."""
    check_bound(bound)
    if bound == "cohen":
        p_lower = clopper_pearson_lower(n_a, n, alpha)
        return float(sigma * norm.ppf(p_lower)) if p_lower >= 0.5 else None
    require(n_a + n_b <= n, f"need n_a + n_b <= n, got n_a={n_a}, n_b={n_b}, n={n}")
    p_lower = clopper_pearson_lower(n_a, n, alpha / 2)
    p_upper = clopper_pearson_upper(n_b, n, alpha / 2)
    if p_lower <= max(0.5, p_upper):
        return None
    return float(sigma / 2 * (norm.ppf(p_lower) - norm.ppf(p_upper)))


def check_bound(bound: object) -> str:
    """The bound's name, or a one-line error naming the valid ones."""
    require(bound in BOUNDS, f"unknown bound {bound!r}; choose one of {', '.join(BOUNDS)}")
    return str(bound)


def certified_radius(p_lower: float, sigma: float) -> float:
    """The l2 radius sigma * Phi^-1(p_lower) certified by a lower bound p_lower >= 1/2 on
    the top-class probability under N(0, sigma^2 I) noise."""
    check_sigma(sigma)
    require(0.5 <= p_lower <= 1.0, f"p_lower={p_lower} < 1/2 certifies nothing (abstain)")
    return float(sigma * norm.ppf(p_lower))


@functools.lru_cache(maxsize=64)
def smallest_certifying_n(alpha: float) -> int:
    """Smallest n for which CERTIFY at level ``alpha`` can return a class at all.

    Even with all n votes for one class the bound is alpha ** (1/n), which must reach 1/2,
    so n >= log2(1/alpha); the float estimate is corrected against the exact bound.
    """
    check_alpha(alpha)
    n = max(1, math.ceil(math.log2(1.0 / alpha)))
    while clopper_pearson_lower(n, n, alpha) < 0.5:
        n += 1
    while n > 1 and clopper_pearson_lower(n - 1, n - 1, alpha) >= 0.5:
        n -= 1
    return n


@functools.lru_cache(maxsize=64)
def certifying_votes(n: int, alpha: float) -> int:
    """k* = min{k : CP_lower(k, n, alpha) >= 1/2}: the fewest votes for the selected class
    out of ``n`` with which CERTIFY does not abstain (n + 1 when none suffice).

    The bound increases with k, so a binary search over [0, n] finds it exactly.
    """
    lo, hi = 0, n + 1  # invariant: bound(lo - 1) < 1/2, and hi certifies (n + 1: sentinel)
    while lo < hi:
        mid = (lo + hi) // 2
        if clopper_pearson_lower(mid, n, alpha) >= 0.5:
            hi = mid
        else:
            lo = mid + 1
    return lo


@functools.lru_cache(maxsize=64)
def smallest_predicting_n(alpha: float) -> int:
    """Smallest n for which PREDICT at level ``alpha`` can return a class at all: the
    two-sided binomial p-value of n votes against 0 is 2 / 2**n, which must be <= alpha."""
    check_alpha(alpha)
    n = max(1, math.ceil(math.log2(2.0 / alpha)))
    while binomtest(n, n, 0.5).pvalue > alpha:
        n += 1
    while n > 1 and binomtest(n - 1, n - 1, 0.5).pvalue <= alpha:
        n -= 1
    return n


def check_certify_args(n0: int, n: int, alpha: float, batch_size: int) -> None:
    """SmoothmixError unless CERTIFY(n0, n, alpha) is well posed and can certify at all."""
    check_count("n0", n0)
    check_count("batch_size", batch_size)
    check_alpha(alpha)
    check_count("n", n, minimum=0)
    n_min = smallest_certifying_n(alpha)
    require(n >= n_min, f"n={n} can never certify at alpha={alpha}: use n >= {n_min}")


def check_predict_args(n: int, alpha: float, batch_size: int) -> None:
    """SmoothmixError unless PREDICT(n, alpha) is well posed and can return a class at all."""
    check_count("batch_size", batch_size)
    check_alpha(alpha)
    check_count("n", n, minimum=0)
    n_min = smallest_predicting_n(alpha)
    require(n >= n_min, f"n={n} can never predict at alpha={alpha}: use n >= {n_min}")


class Certificate(NamedTuple):
    """What CERTIFY returned for one image and what it cost."""

    prediction: int  # the certified class, or -1 (abstained, or skipped)
    radius: float  # l2 radius, 0.0 when prediction is -1
    samples: int  # noise samples drawn: n0 for the selection + those of the estimation
    status: str  # "certified", "abstain", or "skipped" (selection != label, see certificate)
    n_a: int = -1  # estimation votes for the selected class (-1: no estimation ran)
    n_b: int = -1  # the largest estimation count among the other classes


class Smooth:
    """A smoothed classifier g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, sigma^2 I)."""

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        base_classifier: nn.Module,
        num_classes: int,
        sigma: float,
        *,
        chunk_size: int | None = None,
        precision: str | None = None,
        layout: str | None = None,
        compile: bool | None = None,
        execution: Execution | None = None,
        grid: int | None = None,
    ) -> None:
        """``base_classifier`` maps N x C x H x W images in [0, 1] to N x num_classes logits.

        How it is run (:mod:`smoothmix.execution`): ``precision`` "fp32" (default) or
        "bf16" (autocast: the certificate is then about the classifier as run in bf16),
        ``layout`` "channels_last" or "contiguous" (default: channels_last for conv nets on
        a CPU), ``chunk_size`` rows per forward pass (default: a fixed rule, never timing,
        so that separate processes vote identically), ``compile`` (torch.compile). Or a
        resolved ``execution`` (a dataset run's, recorded in its result file).

        ``grid=255``: inputs are 8-bit images (a/255) and the noise is the sound integer
        sampler of :mod:`smoothmix.grid` (Voracek & Hein 2023), so that no base classifier
        can exploit float rounding of x + noise; docs/grid.md has the mathematics."""
        require(isinstance(base_classifier, nn.Module),
                f"base_classifier must be a torch.nn.Module, got {type(base_classifier).__name__}"
                " (Smooth(base_classifier, num_classes, sigma))")
        num_classes = check_num_classes(num_classes)
        sigma = check_sigma(sigma)
        if chunk_size is not None:
            check_count("chunk_size", chunk_size)
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = sigma
        self.chunk_size = chunk_size
        self._request: dict[str, Any] = {"precision": precision, "layout": layout,
                                         "chunk": chunk_size, "compile": compile}
        self._execution = execution
        self._resolved: dict[tuple[str, int], Execution] = {}
        require(grid is None or (isinstance(grid, int) and not isinstance(grid, bool)
                                 and grid >= 1),
                f"grid must be the number of levels of the input grid (255), got {grid!r}")
        self.grid = GridNoise(self.sigma, grid) if grid is not None else None
        if execution is None:  # check the names now, not at the first image
            resolve_execution(base_classifier, torch.device("cpu"), 1, **self._request)

    def execution(self, device: torch.device, batch_size: int) -> Execution:
        """How blocks of ``batch_size`` noisy copies are run on ``device``."""
        if self._execution is not None:
            return self._execution.for_block(batch_size)
        key = (str(device), batch_size)
        if key not in self._resolved:
            self._resolved[key] = resolve_execution(self.base_classifier, device, batch_size,
                                                    **self._request)
        return self._resolved[key]

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
        bound: str = "cohen",
    ) -> tuple[int, float]:
        """CERTIFY: (class, l2 radius), or (-1, 0.0) when it abstains. With probability at
        least 1 - alpha the returned class is g's prediction on the whole ball.
        ``bound``: ``cohen`` (CERTIFY) or ``two-sided`` (see :func:`radius_from_counts`)."""
        result = self.certificate(x, n0, n, alpha, batch_size, generator, bound=bound)
        return result.prediction, result.radius

    def certificate(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
        *,
        label: int | None = None,
        early_abstain: bool = True,
        bound: str = "cohen",
    ) -> Certificate:
        """CERTIFY with its cost: the same answer as :meth:`certify` on the same noise.

        Early abstain (docs/MATH.md §2.1): once even all remaining estimation votes could not lift
        the selected class to k* = :func:`certifying_votes` votes, the full run would
        abstain, so sampling stops there; the answer is identical, only cheaper
        (``early_abstain=False`` draws all n, for testing that claim).

        ``label`` (evaluation only): when the n0 selection is not the label the estimation
        is skipped, since whatever it returned would score 0 in certified accuracy and ACR;
        the result is then (-1, 0.0, n0, "skipped").

        ``bound`` is the radius formula (:func:`radius_from_counts`): ``cohen`` (CERTIFY, as
        the published tables) or ``two-sided`` (larger where votes spread over classes).
        """
        check_certify_args(n0, n, alpha, batch_size)
        check_bound(bound)
        return self._certificate(x, n0, n, alpha, batch_size, generator, label=label,
                                 early_abstain=early_abstain, bound=bound)

    def _certificate(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                     generator: torch.Generator | None = None, *, label: int | None = None,
                     early_abstain: bool = True, bound: str = "cohen") -> Certificate:
        """:meth:`certificate` for arguments already checked where they entered (the
        dataset runners check them once per run, not once per image)."""
        counts0, _ = self.sample_counts(x, n0, batch_size, generator)
        c_hat = int(counts0.argmax())
        if label is not None and c_hat != int(label):
            return Certificate(ABSTAIN, 0.0, n0, "skipped")
        # Fresh samples: reusing the selection votes would bias the bound upwards.
        level = alpha if bound == "cohen" else alpha / 2  # the level of p_A's bound
        need = certifying_votes(n, level) if early_abstain else None
        counts, drawn = self.sample_counts(x, n, batch_size, generator, watch=c_hat, need=need,
                                           with_rejected=True)
        n_a = int(counts[c_hat])
        # Grid mode: rejected draws count against c_hat (n stays nominal) and for the
        # runner-up, which keeps both bounds conservative.
        others = counts[: self.num_classes].clone()
        others[c_hat] = 0
        n_b = int(others.max()) + int(counts[self.num_classes])
        radius = _radius(n_a, n_b, n, alpha, self.sigma, bound) if drawn == n else None
        if radius is None:
            return Certificate(ABSTAIN, 0.0, n0 + drawn, "abstain", n_a, n_b)
        return Certificate(c_hat, radius, n0 + n, "certified", n_a, n_b)

    def predict(
        self,
        x: torch.Tensor,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> int:
        """PREDICT: g's class, or -1 to abstain; returns a class other than g(x) with
        probability at most alpha."""
        check_predict_args(n, alpha, batch_size)
        return self._predict(x, n, alpha, batch_size, generator)

    def _predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int,
                 generator: torch.Generator | None = None) -> int:
        """:meth:`predict` for arguments already checked where they entered."""
        counts, _ = self.sample_counts(x, n, batch_size, generator, with_rejected=True)
        top2 = counts[: self.num_classes].topk(2)
        n_a, n_b = (int(v) for v in top2.values.tolist())
        n_b += int(counts[self.num_classes])  # grid mode: rejected draws side with the runner-up
        if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2.indices[0])

    def sample_counts(
        self,
        x: torch.Tensor,
        num: int,
        batch_size: int,
        generator: torch.Generator | None,
        watch: int | None = None,
        need: int | None = None,
        *,
        with_rejected: bool = False,
    ) -> tuple[torch.Tensor, int]:
        """Votes of the base classifier on ``num`` noisy copies of ``x``: an int64 tensor of
        length num_classes, left on the classifier's device, and how many copies were drawn.

        With ``watch`` and ``need``, drawing may stop once class ``watch`` can no longer
        reach ``need`` votes out of ``num``, checked at the points of :func:`futility_checks`
        (each check reads a count back to the host). Once futile, always futile (votes +
        remaining never grows), so a later check gives the same answer.

        In grid mode (``Smooth(..., grid=255)``) a draw the sound sampler rejects votes for
        no class; ``with_rejected`` appends their count as slot ``num_classes``, which
        CERTIFY and PREDICT count against the selected class and for the runner-up.

        Noise is drawn and fed to the model one chunk at a time, as :meth:`execution`
        resolves it (fixed rows, never more than ``batch_size``), so a seeded generator
        gives the same votes for the same execution. Public so that every vote count in
        the package (CAT-RS targets too) comes from this one counter.
        """
        _check_image(x)
        check_count("num", num)
        check_count("batch_size", batch_size)
        device = module_device(self.base_classifier, x.device)
        if generator is not None and generator.device.type != device.type:
            raise SmoothmixError(f"generator is on {generator.device}, the classifier on {device}")
        execution = self.execution(device, min(num, batch_size))
        draw = self._sampler(x.to(device), execution, generator)
        checks, (watched, needed) = [], (0, 0)
        if watch is not None and need is not None:
            checks, (watched, needed) = futility_checks(num, need), (watch, need)
        # Slot num_classes counts the grid sampler's rejected draws (always 0 otherwise).
        counts = torch.zeros(self.num_classes + 1, dtype=torch.long, device=device)
        ones = torch.ones(execution.chunk, dtype=torch.long, device=device)
        drawn = 0
        with voting(self.base_classifier, execution, device) as model:
            for start in range(0, num, execution.chunk):
                if checks and start >= checks[0]:
                    checks = [c for c in checks if c > start]
                    if int(counts[watched]) + (num - start) < needed:
                        break
                rows = min(execution.chunk, num - start)
                votes = base_votes(model, *draw(rows), self.num_classes)
                # index_add_, not bincount: CUDA's bincount reads the votes' min/max back to
                # the host on every call.
                counts.index_add_(0, votes, ones[:rows])
                drawn += rows
        return (counts if with_rejected else counts[: self.num_classes]), drawn

    def _sampler(self, x: torch.Tensor, execution: Execution, generator: torch.Generator | None
                 ) -> Callable[[int], tuple[torch.Tensor, torch.Tensor | None]]:
        """``draw(rows)``: the next ``rows`` noisy copies of ``x`` as the model takes them,
        and which ones the grid sampler rejected (None without a grid). Every call reuses
        one buffer of ``execution.chunk`` rows: the chunk just drawn is still in cache when
        the model reads it, and the chunk is a recorded setting, so the stream stays
        reproducible."""
        x_in, to_model = execution.noise_layout(x)
        noisy = torch.empty((execution.chunk, *x_in.shape), dtype=x.dtype, device=x.device)
        grid = self.grid
        codes = grid.to_codes(x_in).contiguous() if grid is not None else None

        def draw(rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            block, rejected = noisy[:rows], None
            if grid is not None and codes is not None:
                _, rejected = grid.sample(codes, rows, generator, out=block)
            else:
                block.normal_(0.0, self.sigma, generator=generator).add_(x_in)
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
    """The model to vote with, as ``execution`` runs it, under inference mode and its
    autocast; in eval mode meanwhile (train-mode batch norm would make each copy's vote
    depend on the others in its batch, and the votes must be independent), its mode
    restored after. Layout and compile are set before inference mode, which would otherwise
    turn converted weights into inference tensors."""
    prepared = prepare_model(model, execution)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), execution.autocast(device):
            yield prepared
    finally:
        model.train(was_training)


def base_votes(model: nn.Module, noisy: torch.Tensor, rejected: torch.Tensor | None,
               num_classes: int) -> torch.Tensor:
    """The base classifier's vote on each noisy row (a vector on the model's device): its
    top-1 class, or ``num_classes`` for a draw the grid sampler rejected, which votes for
    no class. The one place votes are made: :meth:`Smooth.sample_counts` counts them, the
    pool of :mod:`smoothmix.sequences` feeds them to each image's procedure in order."""
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


def _check_image(x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise SmoothmixError(f"x must be a torch.Tensor image C x H x W, got {type(x).__name__}")
    hint = " (a batch? pass one image x[i])" if x.dim() == 4 else ""
    require(x.dim() == 3, f"x must be one image of shape C x H x W, got {tuple(x.shape)}{hint}")
    require(x.is_floating_point(), f"x must be a float image in [0, 1], got dtype {x.dtype}")
