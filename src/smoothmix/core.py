"""The statistical core: CERTIFY and PREDICT of Cohen, Rosenfeld & Kolter (2019).

The API matches Cohen's ``core.Smooth`` so that existing code ports by changing one import.
Soundness rests on three rules kept here and nowhere else: the class is selected on
``n0`` samples and bounded on ``n`` *fresh* ones; the bound is the exact one-sided
Clopper-Pearson interval; and PREDICT abstains unless a two-sided binomial test separates
the top two classes at level ``alpha``.
"""

from __future__ import annotations

import functools
import math
import operator
import time
from typing import NamedTuple

import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

from smoothmix.errors import SmoothmixError, is_integer, require

ABSTAIN = -1
# Early-abstain checks per estimation run: each reads a count back to the host, so their
# number is fixed; more checks stop closer to the first futile sample.
FUTILITY_CHECKS = 7

# The CPU forward chunk is tuned once per Smooth object and block shape, as soon as that
# object has been asked for (or told to expect, see Smooth.expect: a dataset run) at least
# _TUNE_MIN_SAMPLES samples of the shape in all, so that the timing (about
# 12 x _TUNE_MAX_CHUNK rows at most) stays small against the run and then serves every
# later call. CPU throughput saturates well below _TUNE_MAX_CHUNK rows.
_TUNE_MIN_SAMPLES = 50_000
_TUNE_MAX_CHUNK = 4096


def clopper_pearson_lower(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial
    proportion after ``n_a`` successes in ``n`` trials (0 when ``n_a == 0``)."""
    require(n >= 1 and 0 <= n_a <= n, f"need 0 <= n_a <= n and n >= 1, got n_a={n_a}, n={n}")
    _check_alpha(alpha)
    if n_a == 0:
        return 0.0
    return float(beta.ppf(alpha, n_a, n - n_a + 1))


def certified_radius(p_lower: float, sigma: float) -> float:
    """The l2 radius sigma * Phi^-1(p_lower) certified by a lower bound p_lower >= 1/2 on
    the top-class probability under N(0, sigma^2 I) noise."""
    _check_sigma(sigma)
    require(0.5 <= p_lower <= 1.0, f"p_lower={p_lower} < 1/2 certifies nothing (abstain)")
    return float(sigma * norm.ppf(p_lower))


@functools.lru_cache(maxsize=64)
def smallest_certifying_n(alpha: float) -> int:
    """Smallest n for which CERTIFY at level ``alpha`` can return a class at all.

    Even with all n votes for one class the bound is alpha ** (1/n), which must reach 1/2,
    so n >= log2(1/alpha); the float estimate is corrected against the exact bound.
    """
    _check_alpha(alpha)
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
    _check_alpha(alpha)
    n = max(1, math.ceil(math.log2(2.0 / alpha)))
    while binomtest(n, n, 0.5).pvalue > alpha:
        n += 1
    while n > 1 and binomtest(n - 1, n - 1, 0.5).pvalue <= alpha:
        n -= 1
    return n


def check_certify_args(n0: int, n: int, alpha: float, batch_size: int) -> None:
    """SmoothmixError unless CERTIFY(n0, n, alpha) is well posed and can certify at all."""
    _check_count("n0", n0)
    _check_count("batch_size", batch_size)
    _check_alpha(alpha)
    _check_count("n", n, minimum=0)
    n_min = smallest_certifying_n(alpha)
    require(n >= n_min, f"n={n} can never certify at alpha={alpha}: use n >= {n_min}")


def check_predict_args(n: int, alpha: float, batch_size: int) -> None:
    """SmoothmixError unless PREDICT(n, alpha) is well posed and can return a class at all."""
    _check_count("batch_size", batch_size)
    _check_alpha(alpha)
    _check_count("n", n, minimum=0)
    n_min = smallest_predicting_n(alpha)
    require(n >= n_min, f"n={n} can never predict at alpha={alpha}: use n >= {n_min}")


class Certificate(NamedTuple):
    """What CERTIFY returned for one image and what it cost."""

    prediction: int  # the certified class, or -1 (abstained, or skipped)
    radius: float  # l2 radius, 0.0 when prediction is -1
    samples: int  # noise samples drawn: n0 for the selection + those of the estimation
    status: str  # "certified", "abstain", or "skipped" (selection != label, see certificate)


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
    ) -> None:
        """``base_classifier`` maps N x C x H x W images in [0, 1] to N x num_classes logits.
        ``chunk_size`` overrides how many noisy images go through one forward pass
        (by default it is chosen for throughput within each call's ``batch_size``)."""
        require(isinstance(base_classifier, nn.Module),
                f"base_classifier must be a torch.nn.Module, got {type(base_classifier).__name__}"
                " (Smooth(base_classifier, num_classes, sigma))")
        require(is_integer(num_classes) and num_classes >= 2,
                f"num_classes must be >= 2 (an integer: Smooth(base_classifier, num_classes, "
                f"sigma)), got {num_classes!r}")
        _check_sigma(sigma)
        require(chunk_size is None or chunk_size >= 1, f"chunk_size must be >= 1, got {chunk_size}")
        self.base_classifier = base_classifier
        self.num_classes = int(num_classes)
        self.sigma = float(sigma)
        self.chunk_size = chunk_size
        self._tuned: dict[tuple, int] = {}
        self._requested: dict[tuple, int] = {}  # samples asked for, per block shape

    def expect(self, x: torch.Tensor, samples: int, batch_size: int) -> None:
        """Announce about ``samples`` samples of images like ``x`` in blocks of
        ``batch_size`` to come (a dataset run), so that the CPU chunk is tuned at the first
        call when the whole run pays for the timing, not only after 50,000 samples."""
        key = (tuple(x.shape), x.dtype, batch_size)
        self._requested[key] = self._requested.get(key, 0) + samples

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> tuple[int, float]:
        """CERTIFY: (class, l2 radius), or (-1, 0.0) when it abstains. With probability at
        least 1 - alpha the returned class is g's prediction on the whole ball."""
        result = self.certificate(x, n0, n, alpha, batch_size, generator)
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
    ) -> Certificate:
        """CERTIFY with its cost: the same answer as :meth:`certify` on the same noise.

        Early abstain (SPEC 2.1): once even all remaining estimation votes could not lift
        the selected class to k* = :func:`certifying_votes` votes, the full run would
        abstain, so sampling stops there; the answer is identical, only cheaper
        (``early_abstain=False`` draws all n, for testing that claim).

        ``label`` (evaluation only): when the n0 selection is not the label the estimation
        is skipped, since whatever it returned would score 0 in certified accuracy and ACR;
        the result is then (-1, 0.0, n0, "skipped").
        """
        check_certify_args(n0, n, alpha, batch_size)
        counts0, _ = self.sample_counts(x, n0, batch_size, generator)
        c_hat = int(counts0.argmax())
        if label is not None and c_hat != int(label):
            return Certificate(ABSTAIN, 0.0, n0, "skipped")
        # Fresh samples: reusing the selection votes would bias the bound upwards.
        need = certifying_votes(n, alpha) if early_abstain else None
        counts, drawn = self.sample_counts(x, n, batch_size, generator, watch=c_hat, need=need)
        p_lower = clopper_pearson_lower(int(counts[c_hat]), n, alpha) if drawn == n else 0.0
        if p_lower < 0.5:
            return Certificate(ABSTAIN, 0.0, n0 + drawn, "abstain")
        return Certificate(c_hat, certified_radius(p_lower, self.sigma), n0 + n, "certified")

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
        counts, _ = self.sample_counts(x, n, batch_size, generator)
        top2 = counts.topk(2)
        n_a, n_b = (int(v) for v in top2.values.tolist())
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
    ) -> tuple[torch.Tensor, int]:
        """Votes of the base classifier on ``num`` noisy copies of ``x``: an int64 tensor of
        length num_classes, left on the classifier's device, and how many copies were drawn.

        With ``watch`` and ``need``, drawing may stop once class ``watch`` can no longer
        reach ``need`` votes out of ``num``. That check reads a count back to the host (a
        sync on CUDA), so it is made at most ``FUTILITY_CHECKS`` times per call, at evenly
        spaced points of the range where it can succeed (past num - need samples): the
        number of host reads does not grow with the number of blocks. Once futile, always
        futile (votes + remaining never grows), so a later check gives the same answer.

        Noise is drawn in blocks of ``batch_size`` (so a seeded generator gives the same
        noise whatever chunk the model is fed); each block goes through the model in chunks
        of the size that runs fastest (see :meth:`_chunk_size`). Public so that every vote
        count in the package (CAT-RS targets too) comes from this one counter.
        """
        _check_image(x)
        _check_count("num", num)
        _check_count("batch_size", batch_size)
        device = module_device(self.base_classifier, x.device)
        if generator is not None and generator.device.type != device.type:
            raise SmoothmixError(f"generator is on {generator.device}, the classifier on {device}")
        x = x.to(device)
        block_size = min(num, batch_size)
        noisy = torch.empty((block_size, *x.shape), dtype=x.dtype, device=device)
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        ones = torch.ones(block_size, dtype=torch.long, device=device)
        was_training = self.base_classifier.training
        self.base_classifier.eval()  # train-mode batch norm would make the votes dependent
        drawn = 0
        checks: list[int] = []  # sample counts at which to test futility, ascending
        if need is not None and watch is not None:
            first = max(0, num - need + 1)  # fewer samples cannot rule out `need` votes
            checks = sorted({first + (num - first) * j // (FUTILITY_CHECKS + 1)
                             for j in range(1, FUTILITY_CHECKS + 1)})
        try:
            with torch.inference_mode():
                chunk = self._chunk_size(x, block_size, num)
                for start in range(0, num, block_size):
                    if checks and start >= checks[0]:
                        checks = [c for c in checks if c > start]
                        if int(counts[watch]) + (num - start) < need:
                            break
                    block = noisy[: min(block_size, num - start)]
                    block.normal_(0.0, self.sigma, generator=generator).add_(x)
                    for part in block.split(chunk):
                        logits = self.base_classifier(part)
                        if start == 0:
                            self._check_logits(logits, len(part))
                        # index_add_, not bincount: CUDA's bincount reads the
                        # predictions' min/max back to the host on every call.
                        counts.index_add_(0, logits.argmax(1), ones[: len(part)])
                    drawn += len(block)
        finally:
            self.base_classifier.train(was_training)
        return counts, drawn

    def _chunk_size(self, x: torch.Tensor, block_size: int, num: int) -> int:
        """Rows per forward pass for blocks of ``block_size`` noisy copies of images like x,
        in a call that draws ``num`` samples.

        Accelerators get the whole block. On a CPU the best size depends on the model, the
        cache and the machine's load (LeNet on 2 idle cores is ~1.6x faster at 250 rows than
        at 1000; on busy cores 1000 wins), so once this object has been asked for enough
        samples of this shape (see _TUNE_MIN_SAMPLES) a few sizes are timed once on copies of
        x (leaving the generator untouched) and the fastest is kept for every later call.
        """
        if self.chunk_size is not None:
            return min(self.chunk_size, block_size)
        key = (tuple(x.shape), x.dtype, block_size)
        self._requested[key] = self._requested.get(key, 0) + num
        tune = self._requested[key] >= _TUNE_MIN_SAMPLES
        if x.device.type == "cpu" and tune and key not in self._tuned:
            top = min(block_size, _TUNE_MAX_CHUNK)
            copies = x.expand(top, *x.shape).contiguous()
            sizes = sorted({max(1, top >> k) for k in range(5)}, reverse=True)
            for size in sizes:
                self.base_classifier(copies[:size])  # warm-up: kernel selection per shape
            seconds = dict.fromkeys(sizes, math.inf)
            for _ in range(2):  # interleaved rounds, best of each: robust to load spikes
                for size in sizes:
                    start = time.perf_counter()
                    for part in copies.split(size):
                        self.base_classifier(part)
                    seconds[size] = min(seconds[size], time.perf_counter() - start)
            self._tuned[key] = min(seconds, key=seconds.get)
        return self._tuned.get(key, block_size)

    def _check_logits(self, logits: torch.Tensor, rows: int) -> None:
        require(
            logits.shape == (rows, self.num_classes),
            f"base classifier returned logits of shape {tuple(logits.shape)} for {rows} "
            f"images; expected {rows} x {self.num_classes} (num_classes={self.num_classes})",
        )


def _check_image(x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise SmoothmixError(f"x must be a torch.Tensor image C x H x W, got {type(x).__name__}")
    hint = " (a batch? pass one image x[i])" if x.dim() == 4 else ""
    require(x.dim() == 3, f"x must be one image of shape C x H x W, got {tuple(x.shape)}{hint}")
    require(x.is_floating_point(), f"x must be a float image in [0, 1], got dtype {x.dtype}")


def module_device(module: nn.Module, default: torch.device) -> torch.device:
    """The device of the module's first parameter or buffer (``default`` if it has none)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return default


def _check_sigma(sigma: float) -> None:
    require(
        _is_real(sigma) and math.isfinite(sigma) and sigma > 0,
        f"sigma must be a positive number in [0, 1] pixel units, got {sigma!r}",
    )


def _check_alpha(alpha: float) -> None:
    require(
        _is_real(alpha) and 0 < alpha < 1, f"alpha must lie strictly between 0 and 1, got {alpha}"
    )


def _check_count(name: str, value: int, minimum: int = 1) -> None:
    try:
        ok = operator.index(value) >= minimum
    except TypeError:
        ok = False
    require(ok, f"{name} must be an integer >= {minimum}, got {value!r}")


def _is_real(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (bool, str))
