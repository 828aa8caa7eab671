"""The two-sided radius (docs/MATH.md §2.2) against hand computation and exact probabilities.

1. Both bounds against Clopper-Pearson quantiles found by bisection on exact binomial sums
   (no Beta quantile function), including the cap (n_A = n), n_B = 0 and abstentions.
2. The exact non-coverage of each one-sided bound, by binomial sums over a fine grid of p and
   the points next to every jump, at the level the radius uses (α/2); a copy at α fails.
3. Monte Carlo through the real ``Smooth.certificate(bound="two-sided")`` on a classifier
   whose class probabilities are known in closed form, compared with exact rates computed by
   enumerating the multinomial counts: false certificates stay below α, and the harness
   catches an unsound radius and mis-levelled bounds.
4. Result files, resume refusal and the CLI flag; 5. analyze's warning and bound column.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from itertools import accumulate
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import pytest
import torch
from scipy.special import gammaln, ndtri
from scipy.stats import binom, binomtest
from torch import nn

import smoothmix.core as core
from smoothmix.analysis import compare_results, format_table, read_results
from smoothmix.certification import certify_dataset
from smoothmix.cli import main
from smoothmix.core import Smooth, clopper_pearson_lower, clopper_pearson_upper, radius_from_counts
from smoothmix.errors import SmoothmixError
from smoothmix.run import RunSpec

PHI_INV = NormalDist().inv_cdf  # not scipy's: the hand computation shares nothing with core


# --------------------------------------------------------------------------- 1. by hand


def binomial_tail(k: int, n: int, p: float, upper: bool) -> float:
    """P(X >= k) (upper) or P(X <= k) for X ~ Bin(n, p), summed term by term in log space."""
    j = np.arange(k, n + 1) if upper else np.arange(0, k + 1)
    if p in (0.0, 1.0):
        return float(np.any(j == (n if p == 1.0 else 0)))
    logs = (gammaln(n + 1) - gammaln(j + 1) - gammaln(n - j + 1)
            + j * math.log(p) + (n - j) * math.log1p(-p))
    top = logs.max()
    return float(math.exp(top) * math.fsum(np.exp(logs - top)))


def bisect(f: Callable[[float], bool]) -> float:
    """The p in [0, 1] where the monotone predicate f flips from False to True."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if f(mid):
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def hand_lower(k: int, n: int, a: float) -> float:
    """The p with P_p(X >= k) = a (0 for k = 0): P_p(X >= k) grows with p."""
    return 0.0 if k == 0 else bisect(lambda p: binomial_tail(k, n, p, upper=True) >= a)


def hand_upper(k: int, n: int, a: float) -> float:
    """The p with P_p(X <= k) = a (1 for k = n): P_p(X <= k) falls with p."""
    return 1.0 if k == n else bisect(lambda p: binomial_tail(k, n, p, upper=False) <= a)


def hand_radius(n_a: int, n_b: int, n: int, alpha: float, sigma: float,
                bound: str) -> float | None:
    if bound == "cohen":
        p_a = hand_lower(n_a, n, alpha)
        return sigma * PHI_INV(p_a) if p_a >= 0.5 else None
    p_a, p_b = hand_lower(n_a, n, alpha / 2), hand_upper(n_b, n, alpha / 2)
    if p_a <= max(0.5, p_b):
        return None
    return sigma / 2 * (PHI_INV(p_a) - (PHI_INV(p_b) if p_b < 1 else math.inf))


def test_hand_quantiles_have_their_closed_forms():
    # Unanimous votes: P_p(X >= n) = p^n = a and P_p(X <= 0) = (1 - p)^n = a.
    for n, a in ((10, 0.001), (1000, 0.05), (100_000, 0.0005)):
        assert hand_lower(n, n, a) == pytest.approx(a ** (1 / n), rel=1e-12)
        assert hand_upper(0, n, a) == pytest.approx(1 - a ** (1 / n), rel=1e-9)
    assert binomial_tail(3, 5, 0.5, upper=True) == pytest.approx(0.5, rel=1e-14)


CASES = [  # n_a, n_b, n, alpha, sigma
    (100_000, 0, 100_000, 0.001, 1.0),  # the cap
    (10_000, 0, 10_000, 0.001, 0.5),  # the cap at N = 10,000
    (180, 0, 200, 0.05, 0.5),  # n_B = 0 below the cap (formula only: the rest must be somewhere)
    (12_000, 5_000, 20_000, 0.001, 0.25),  # votes spread: two-sided larger
    (600, 150, 1000, 0.01, 0.25),
    (97, 2, 100, 0.1, 1.0),
    (70, 29, 100, 0.1, 1.0),  # one runner-up takes the rest: two-sided smaller (α/2)
    (520, 480, 1000, 0.001, 0.5),  # p_A <= 1/2: both abstain
    (5, 0, 5, 0.2, 1.0),
]


@pytest.mark.parametrize("n_a, n_b, n, alpha, sigma", CASES)
def test_both_radii_match_the_hand_computation(n_a, n_b, n, alpha, sigma):
    assert clopper_pearson_lower(n_a, n, alpha / 2) == pytest.approx(
        hand_lower(n_a, n, alpha / 2), rel=1e-9, abs=1e-15)
    assert clopper_pearson_upper(n_b, n, alpha / 2) == pytest.approx(
        hand_upper(n_b, n, alpha / 2), rel=1e-9, abs=1e-15)
    for bound in ("cohen", "two-sided"):
        ours = radius_from_counts(n_a, n_b, n, alpha, sigma, bound)
        hand = hand_radius(n_a, n_b, n, alpha, sigma, bound)
        assert (ours is None) == (hand is None), (bound, ours, hand)
        if hand is not None:
            assert ours == pytest.approx(hand, rel=1e-8)


def test_the_cap_at_n_100000():
    # All votes for A: p_A = (α/2)^(1/n), p_B = 1 - p_A, so R = σ Φ⁻¹((α/2)^(1/n)).
    for sigma in (0.25, 1.0):
        two = radius_from_counts(100_000, 0, 100_000, 0.001, sigma, "two-sided")
        cohen = radius_from_counts(100_000, 0, 100_000, 0.001, sigma, "cohen")
        assert two == pytest.approx(sigma * PHI_INV(0.0005 ** 1e-5), rel=1e-9)
        assert cohen == pytest.approx(sigma * PHI_INV(0.001 ** 1e-5), rel=1e-9)
        assert round(two / sigma, 3) == 3.788 and round(cohen / sigma, 3) == 3.811


def test_where_cohen_certifies_and_two_sided_abstains():
    # The fewest votes that Cohen certifies with are too few at α/2: only two-sided abstains.
    n, alpha = 1000, 0.001
    k = next(k for k in range(n // 2, n + 1) if hand_lower(k, n, alpha) >= 0.5)
    assert hand_lower(k, n, alpha / 2) < 0.5
    assert radius_from_counts(k, n - k, n, alpha, 0.5, "cohen") > 0
    assert radius_from_counts(k, n - k, n, alpha, 0.5, "two-sided") is None
    assert radius_from_counts(k - 1, 0, n, alpha, 0.5, "cohen") is None


def test_every_count_pair_at_small_n():
    """All (n_A, n_B) with n_A + n_B <= n = 30: the hand radius, the abstain rule, and the
    facts of §2.2: p̄_B <= 1 - p̲_A (so the ½ in max(½, p̄_B) is what binds), and the
    two-sided radius is never below Cohen's computed at α/2."""
    n, alpha, sigma = 30, 0.2, 1.0
    lower = [hand_lower(k, n, alpha / 2) for k in range(n + 1)]
    upper = [hand_upper(k, n, alpha / 2) for k in range(n + 1)]
    certified = 0
    for n_a in range(n + 1):
        for n_b in range(n - n_a + 1):
            assert upper[n_b] <= 1 - lower[n_a] + 1e-12
            ours = radius_from_counts(n_a, n_b, n, alpha, sigma, "two-sided")
            if lower[n_a] <= 0.5:
                assert ours is None
                continue
            certified += 1
            hand = sigma / 2 * (PHI_INV(lower[n_a]) - PHI_INV(upper[n_b]))
            assert ours == pytest.approx(hand, rel=1e-8)
            half = radius_from_counts(n_a, n_b, n, alpha / 2, sigma, "cohen")
            assert ours >= half * (1 - 1e-12)
    assert certified > 50
    with pytest.raises(SmoothmixError, match="n_a \\+ n_b <= n"):
        radius_from_counts(20, 11, n, alpha, sigma, "two-sided")


# --------------------------------------------------------------------------- 2. exact levels


def levels_used(monkeypatch, bound: str) -> dict[str, tuple]:
    """The (count, n, level) with which radius_from_counts calls each Clopper-Pearson bound."""
    seen: dict[str, tuple] = {}

    def spy(name, real):
        def wrapped(k, n, alpha):
            seen[name] = (k, n, alpha)
            return real(k, n, alpha)
        return wrapped

    monkeypatch.setattr(core, "clopper_pearson_lower", spy("lower", clopper_pearson_lower))
    monkeypatch.setattr(core, "clopper_pearson_upper", spy("upper", clopper_pearson_upper))
    radius_from_counts(70, 20, 100, 0.01, 1.0, bound)
    monkeypatch.undo()
    return seen


def max_noncoverage(bound: Callable[[int, int], float], n: int, side: str,
                    grid: int = 4000) -> tuple[float, float]:
    """sup over p of P_p(the bound fails), exactly (binomial sums): the lower bound fails
    when bound(X) > p, the upper one when bound(X) < p. Returns (the maximum over a grid of
    p plus the floats next to every jump, the maximum over the grid alone). The failure
    probability jumps at each bound(k) and is largest just before (lower) or after (upper)."""
    k = np.arange(n + 1)
    values = np.array([bound(int(i), n) for i in k])
    if side == "lower":
        jumps = np.nextafter(values[(values > 0) & (values <= 1)], 0.0)
    else:
        jumps = np.nextafter(values[(values >= 0) & (values < 1)], 1.0)
    best = []
    for ps, pmf in (grid_pmf(n, grid), (jumps, binom.pmf(k[:, None], n, jumps[None, :]))):
        fails = values[:, None] > ps[None, :] if side == "lower" else \
            values[:, None] < ps[None, :]
        best.append(float((pmf * fails).sum(axis=0).max()))
    return max(best), best[0]


@functools.cache
def grid_pmf(n: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """p on a grid of ``grid`` intervals of [0, 1] (interior points) and P_p(X = k), k x p."""
    ps = np.linspace(0.0, 1.0, grid + 1)[1:-1]
    return ps, binom.pmf(np.arange(n + 1)[:, None], n, ps[None, :])


def holds_at_level(bound: Callable[[int, int], float], n: int, side: str,
                   target: float) -> bool:
    """Whether P_p(the bound fails) <= target for every p (floating-point slack 1e-6)."""
    return max_noncoverage(bound, n, side)[0] <= target * (1 + 1e-6)


def test_the_radius_bounds_each_probability_at_half_alpha(monkeypatch):
    assert levels_used(monkeypatch, "two-sided") == {"lower": (70, 100, 0.005),
                                                      "upper": (20, 100, 0.005)}
    assert levels_used(monkeypatch, "cohen") == {"lower": (70, 100, 0.01)}


@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.2])
@pytest.mark.parametrize("n", [50, 200])
def test_each_bound_fails_with_probability_at_most_half_alpha(n, alpha):
    target = alpha / 2  # the levels radius_from_counts uses (test above)
    lower = lambda k, m: clopper_pearson_lower(k, m, alpha / 2)  # noqa: E731
    upper = lambda k, m: clopper_pearson_upper(k, m, alpha / 2)  # noqa: E731
    for bound, side in ((lower, "lower"), (upper, "upper")):
        sup, on_grid = max_noncoverage(bound, n, side)
        assert holds_at_level(bound, n, side, target), (side, sup)
        assert sup >= 0.8 * target  # Clopper-Pearson is conservative, but its sup is reached
        assert on_grid <= sup
    # Each bound at the full α (a radius that forgot to split α) fails the same check.
    for side, mis in (("lower", lambda k, m: clopper_pearson_lower(k, m, alpha)),
                      ("upper", lambda k, m: clopper_pearson_upper(k, m, alpha))):
        assert not holds_at_level(mis, n, side, target)
        assert max_noncoverage(mis, n, side)[0] > 1.9 * target


# --------------------------------------------------------------------------- 3. Monte Carlo

SIGMA, N0, N, ALPHA = 1.0, 10, 100, 0.1


class Bands(nn.Module):
    """f(z) = the number of thresholds below the first coordinate z of the (noisy) input.

    At x with first coordinate x_0, class c has probability Φ((t_c - x_0)/σ) - Φ((t_{c-1} -
    x_0)/σ) under N(0, σ²) noise; with thresholds t_c = σ Φ⁻¹(p_0 + ... + p_c) the class
    probabilities at x = 0 are exactly p (up to float32 thresholds)."""

    def __init__(self, thresholds: list[float]) -> None:
        super().__init__()
        self.register_buffer("thresholds", torch.tensor(thresholds, dtype=torch.float32))
        self.num_classes = len(thresholds) + 1

    @classmethod
    def for_probabilities(cls, p: tuple[float, ...], sigma: float) -> Bands:
        return cls([sigma * PHI_INV(c) for c in list(accumulate(p))[:-1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = torch.bucketize(x.flatten(1)[:, 0].contiguous(), self.thresholds)
        return nn.functional.one_hot(classes, self.num_classes).float()


class Recording(Smooth):
    """Smooth that keeps every vote count it drew, so a test knows the selected class."""

    def votes(self, *args, **kwargs):
        votes = super().votes(*args, **kwargs)
        self.calls.append(votes.counts.clone())
        return votes


class Trial(NamedTuple):
    selected: int  # ĉ_A of the n0 selection votes (the pipeline's own rule: first argmax)
    n_a: int
    n_b: int
    prediction: int
    radius: float
    p_lower: float  # the bounds radius_from_counts computed, as returned to it
    p_upper: float


@functools.cache
def run_trials(p: tuple[float, ...], trials: int, seed: int,
               check_early_abstain: int = 200) -> list[Trial]:
    """``trials`` runs of the real two-sided CERTIFY at x = 0, each with its own seed
    (cached: tests that read the same trials share them)."""
    seen: dict[str, float] = {}

    def spy(name, real):
        def wrapped(k, n, alpha):
            seen[name] = value = real(k, n, alpha)
            return value
        return wrapped

    smooth = Recording(Bands.for_probabilities(p, SIGMA), len(p), SIGMA)
    x = torch.zeros(1, 1, 1)
    out = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core, "clopper_pearson_lower", spy("lower", clopper_pearson_lower))
        patch.setattr(core, "clopper_pearson_upper", spy("upper", clopper_pearson_upper))
        for t in range(trials):
            smooth.calls = []
            seen.clear()
            gen = torch.Generator().manual_seed(seed * 1_000_003 + t)
            # All n samples, so that the counts are complete for the re-implementations.
            cert = smooth.certificate(x, N0, N, ALPHA, 1000, gen, bound="two-sided",
                                      early_abstain=False)
            selection, counts = smooth.calls
            selected = int(selection.argmax())
            others = torch.cat([counts[:selected], counts[selected + 1:]])
            assert (cert.n_a, cert.n_b) == (int(counts[selected]), int(others.max()))
            assert cert.samples == N0 + N
            if cert.prediction != -1:
                assert cert.prediction == selected
            out.append(Trial(selected, cert.n_a, cert.n_b, cert.prediction, cert.radius,
                             seen["lower"], seen["upper"]))
    for t in range(check_early_abstain):  # the default path answers the same
        gen = torch.Generator().manual_seed(seed * 1_000_003 + t)
        cert = smooth.certificate(x, N0, N, ALPHA, 1000, gen, bound="two-sided")
        assert (cert.prediction, cert.radius) == (out[t].prediction, out[t].radius)
    return out


def true_radius(p: tuple[float, ...]) -> float:
    """(σ/2)(Φ⁻¹(p_A) - Φ⁻¹(p_B)) with the true top two probabilities; no sound certificate
    exceeds it, since both bounds holding implies the reported radius is at most this."""
    top, second = sorted(p, reverse=True)[:2]
    return SIGMA / 2 * (PHI_INV(top) - PHI_INV(second))


def false_certificate(p, selected: int, radius: float | None) -> bool:
    """A certificate (radius not None) for a class other than the top one, or beyond the
    true two-sided radius."""
    if radius is None:
        return False
    return selected != int(np.argmax(p)) or radius > true_radius(p) * (1 + 1e-9)


def bounds_fail(p, selected: int, p_lower: float, p_upper: float) -> bool:
    """The event that two-sided CERTIFY's level α bounds: p̲ above the selected class's
    probability, or p̄ below the largest other one."""
    return p_lower > p[selected] or p_upper < max(q for c, q in enumerate(p) if c != selected)


def radius_two_sided(n_a, n_b, level_a, level_b) -> float | None:
    """A local re-implementation of the two-sided radius with given levels (level_b = None:
    the runner-up's point estimate n_b / n instead of a bound)."""
    p_lower = clopper_pearson_lower(n_a, N, level_a)
    p_upper = n_b / N if level_b is None else clopper_pearson_upper(n_b, N, level_b)
    if p_lower <= max(0.5, p_upper):
        return None
    return SIGMA / 2 * float(ndtri(p_lower) - ndtri(p_upper))  # inf when p_upper = 0


def outcomes(n: int, classes: int) -> np.ndarray:
    """Every vote vector of n votes over ``classes`` classes (rows)."""
    grids = np.meshgrid(*[np.arange(n + 1)] * (classes - 1), indexing="ij")
    rest = n - sum(grids)
    keep = rest >= 0
    return np.stack([g[keep] for g in grids] + [rest[keep]], axis=1)


def multinomial_pmf(counts: np.ndarray, p) -> np.ndarray:
    n = int(counts[0].sum())
    log = gammaln(n + 1) - gammaln(counts + 1).sum(axis=1) \
        + (counts * np.log(np.asarray(p))).sum(axis=1)
    return np.exp(log)


def exact_rates(p, level_a: float, level_b: float | None) -> tuple[float, float]:
    """(P(false certificate), P(bounds fail)) of the two-sided CERTIFY (n0, n) with p̲ at
    level_a and p̄ at level_b (None: the point estimate), by summing over every selection
    and estimation outcome; the selection is the first argmax of the n0 votes, as in core."""
    p = np.asarray(p, dtype=float)
    select = outcomes(N0, len(p))
    chosen = np.bincount(select.argmax(axis=1), weights=multinomial_pmf(select, p),
                         minlength=len(p))
    counts = outcomes(N, len(p))
    weight = multinomial_pmf(counts, p)
    lower = np.array([clopper_pearson_lower(k, N, level_a) for k in range(N + 1)])
    upper = np.arange(N + 1) / N if level_b is None else \
        np.array([clopper_pearson_upper(k, N, level_b) for k in range(N + 1)])
    false = fail = 0.0
    for c in range(len(p)):
        others = [o for o in range(len(p)) if o != c]
        p_lower, p_upper = lower[counts[:, c]], upper[counts[:, others].max(axis=1)]
        ok = p_lower > np.maximum(0.5, p_upper)
        radius = np.where(ok, SIGMA / 2 * (ndtri(p_lower) - ndtri(p_upper)), -np.inf)
        bad = ok & ((c != p.argmax()) | (radius > true_radius(tuple(p)) * (1 + 1e-9)))
        false += chosen[c] * weight[bad].sum()
        fail += chosen[c] * weight[(p_lower > p[c]) | (p_upper < p[others].max())].sum()
    return float(false), float(fail)


def within(bad: int, trials: int, rate: float) -> bool:
    """The count agrees with the exact rate (two-sided binomial test at 1e-3)."""
    return binomtest(bad, trials, rate).pvalue > 1e-3


def at_most_alpha(bad: int, trials: int) -> bool:
    """Not significantly above α (one-sided binomial test at 1e-3)."""
    return binomtest(bad, trials, ALPHA, alternative="greater").pvalue > 1e-3


# (probabilities at x = 0 with the top class not first, trials, seed). A: p̲ and p̄ both fail
# often (see the power test), so bound failures are frequent; B: certifies most of the time;
# C: two classes tied for second (the runner-up is chosen from the data).
CASE_A = ((0.165, 0.51, 0.325), 5000, 1)
CASE_B = ((0.05, 0.6, 0.35), 3000, 3)
CASE_C = ((0.17, 0.6, 0.17, 0.06), 2000, 2)


@pytest.mark.parametrize("p, trials, seed", [
    *(pytest.param(*case, marks=pytest.mark.slow) for case in (CASE_A, CASE_B, CASE_C)),
    *((p, 1000, seed) for p, _, seed in (CASE_A, CASE_B, CASE_C)),  # the fast tier's size
])
def test_false_certificates_and_bound_failures_stay_below_alpha(p, trials, seed):
    false_rate, fail_rate = exact_rates(p, ALPHA / 2, ALPHA / 2)
    assert false_rate <= fail_rate <= ALPHA  # a false certificate needs a failed bound
    runs = run_trials(p, trials, seed)
    false = sum(false_certificate(p, r.selected, r.radius if r.prediction != -1 else None)
                for r in runs)
    fails = sum(bounds_fail(p, r.selected, r.p_lower, r.p_upper) for r in runs)
    assert at_most_alpha(false, trials) and at_most_alpha(fails, trials)
    assert within(false, trials, false_rate), (false, trials, false_rate)
    assert within(fails, trials, fail_rate), (fails, trials, fail_rate)
    assert sum(r.prediction != -1 for r in runs) > 0.03 * trials  # it does certify


@pytest.mark.slow
def test_the_harness_catches_mis_levelled_bounds_and_an_unbounded_runner_up():
    """The same trials' counts fed to wrong re-implementations.

    Both bounds at α instead of α/2 (case A): their joint failure rate is ≈ 1.44 α, so the
    bound-failure count exceeds the tolerance. The *radius* of that variant stays below the
    true one more often than 1 - α even so (exact false-certificate rate ≈ 0.047 < α): the
    radius is too large only when the errors of p̲_A and p̄_B add up, which is rarer than
    either bound failing, so counting false certificates cannot see this mis-levelling
    (the exact test of each bound above does). It does see a radius that uses the
    runner-up's point estimate n_B / n (case B: rate ≈ 0.157)."""
    p, trials, seed = CASE_A
    runs = run_trials(p, trials, seed)
    false_mis, fail_mis = exact_rates(p, ALPHA, ALPHA)
    assert fail_mis > 1.4 * ALPHA and false_mis < ALPHA
    fails = sum(bounds_fail(p, r.selected, clopper_pearson_lower(r.n_a, N, ALPHA),
                            clopper_pearson_upper(r.n_b, N, ALPHA)) for r in runs)
    assert within(fails, trials, fail_mis) and not at_most_alpha(fails, trials)

    p, trials, seed = CASE_B
    runs = run_trials(p, trials, seed)
    false_point, _ = exact_rates(p, ALPHA / 2, None)
    assert false_point > 1.5 * ALPHA
    false = sum(false_certificate(p, r.selected, radius_two_sided(r.n_a, r.n_b, ALPHA / 2, None))
                for r in runs)
    assert within(false, trials, false_point) and not at_most_alpha(false, trials)


# --------------------------------------------------------------------------- 4. result files


class BandData:
    """Images 1 x 2 x 2 whose first pixel places them among Bands' thresholds: some with
    votes spread over three or four classes, some confident, some on a threshold."""

    num_classes = 4
    # Pixels stay in [0, 1] (Smooth refuses others): the first pixel of each image, from
    # -1..3 mapped onto 0..1 with the thresholds and sigma, which leaves every probability as it is.
    firsts = [(f + 1) / 4 for f in (-0.6, -0.2, 0.0, 0.15, 0.3, 0.45, 0.8, 1.2, -1.0, 0.05, 3.0)]

    def __len__(self) -> int:
        return len(self.firsts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.full((1, 2, 2), 0.5)
        x[0, 0, 0] = self.firsts[i]
        label = sum(t < self.firsts[i] for t in THRESHOLDS)
        return x, int(label)


FILE_SIGMA = 0.5 / 4
FILE_SPEC = RunSpec.of(FILE_SIGMA, batch_size=128, progress=False, seed=5)
FILE_SETTINGS = dict(n0=20, n=400, alpha=0.01)  # certify_dataset's own arguments
THRESHOLDS = [(t + 1) / 4 for t in (-0.3, 0.0, 0.3)]


def file_rows(path) -> dict[int, dict[str, str]]:
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")
    return {int(f[0]): dict(zip(head, f, strict=True))
            for f in (line.split("\t") for line in lines[1:])}


@pytest.fixture(scope="module")
def result_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_sided")
    model = Bands(THRESHOLDS)
    files = {bound: certify_dataset(model, BandData(), FILE_SPEC, root / f"{bound}.tsv",
                                    bound=bound, **FILE_SETTINGS)
             for bound in ("cohen", "two-sided")}
    return model, files


def _recomputed(row: dict[str, str], bound: str) -> float:
    radius = radius_from_counts(int(row["n_a"]), int(row["n_b"]), FILE_SETTINGS["n"],
                                FILE_SETTINGS["alpha"], FILE_SIGMA, bound)
    return 0.0 if radius is None else radius


def test_rows_carry_the_counts_of_their_radius(result_files):
    _, files = result_files
    two, cohen = file_rows(files["two-sided"]), file_rows(files["cohen"])
    full = FILE_SETTINGS["n0"] + FILE_SETTINGS["n"]
    assert sorted(two) == sorted(cohen) == list(range(len(BandData())))
    for idx, row in two.items():
        assert row["bound"] == "two-sided" and cohen[idx]["bound"] == "cohen"
        # The two-sided row's radius is the formula of its own counts.
        assert float(row["radius"]) == _recomputed(row, "two-sided")
        assert (row["predict"] == "-1") == (row["status"] == "abstain")
        # The same seed draws the same samples: where both ran all n, the counts agree and
        # each file's radius follows from them at its own α.
        if int(row["samples"]) == full and int(cohen[idx]["samples"]) == full:
            assert (row["n_a"], row["n_b"]) == (cohen[idx]["n_a"], cohen[idx]["n_b"])
            assert float(cohen[idx]["radius"]) == _recomputed(row, "cohen")
        # What benchmarks/two_sided_bound.py relies on: Cohen's file alone gives the
        # two-sided radius, even where Cohen stopped early (then both abstain).
        assert _recomputed(cohen[idx], "two-sided") == float(row["radius"])
        assert float(cohen[idx]["radius"]) == _recomputed(cohen[idx], "cohen")
    statuses = [r["status"] for r in two.values()]
    assert "certified" in statuses and "abstain" in statuses
    radii = [(float(two[i]["radius"]), float(cohen[i]["radius"])) for i in two]
    assert any(t > c > 0 for t, c in radii) and any(c > t > 0 for t, c in radii)
    assert any(int(r["samples"]) < full for r in two.values())  # an early abstain
    meta = json.loads(files["two-sided"].with_name("two-sided.tsv.json").read_text())
    assert meta["settings"]["bound"] == "two-sided"
    assert "bound" not in json.loads(files["cohen"].with_name("cohen.tsv.json").read_text())[
        "settings"]


@pytest.mark.parametrize("written, other", [("cohen", "two-sided"), ("two-sided", "cohen")])
def test_resuming_with_another_bound_is_refused(tmp_path, result_files, written, other):
    model, files = result_files
    path = tmp_path / "part.tsv"
    lines = files[written].read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-3]))  # an unfinished run of that bound
    path.with_name("part.tsv.json").write_text(
        files[written].with_name(files[written].name + ".json").read_text())
    before = (path.read_bytes(), path.with_name("part.tsv.json").read_bytes())
    with pytest.raises(SmoothmixError) as info:
        certify_dataset(model, BandData(), FILE_SPEC, path, bound=other, **FILE_SETTINGS)
    message = str(info.value)
    assert "bound" in message and len(message.splitlines()) == 1, message
    assert (path.read_bytes(), path.with_name("part.tsv.json").read_bytes()) == before
    # The same bound resumes it.
    certify_dataset(model, BandData(), FILE_SPEC, path, bound=written, **FILE_SETTINGS)
    untimed = lambda rows: {i: {k: v for k, v in r.items() if k != "time"}  # noqa: E731
                            for i, r in rows.items()}
    assert untimed(file_rows(path)) == untimed(file_rows(files[written]))


def test_an_unknown_bound_is_an_argparse_error(capsys, tmp_path):
    # Checked where it enters, before the checkpoint is read: one line, exit 2.
    capsys.readouterr()
    assert main(["certify", "ckpt.pth", "--dataset", "mnist", "--sigma", "0.5",
                 "--out", str(tmp_path / "o.tsv"), "--bound", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["smoothmix certify: error: unknown bound 'nope'; choose one of cohen, "
                   "two-sided"]
    assert not (tmp_path / "o.tsv").exists()
    with pytest.raises(SmoothmixError, match="unknown bound 'nope'; choose one of"):
        radius_from_counts(5, 0, 5, 0.2, 1.0, "nope")


# --------------------------------------------------------------------------- 5. analyze


def test_analyze_warns_about_different_bounds_and_shows_them(result_files):
    _, files = result_files
    results = [read_results(files["cohen"]), read_results(files["two-sided"])]
    assert [r.run.bound for r in results] == ["cohen", "two-sided"]
    comparison = compare_results(results, ["c", "t"])
    assert any("bound" in w and "c cohen" in w and "t two-sided" in w
               for w in comparison.warnings), comparison.warnings
    assert comparison.groups == [0, 1]  # not compared with each other
    table = format_table(results, [0.0, 0.25], labels=["c", "t"]).splitlines()
    head = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert "bound" in head and "set" in head
    col = head.index("bound")
    assert [[cell.strip() for cell in line.strip("|").split("|")][col]
            for line in table[2:4]] == ["cohen", "two-sided"]
    # The caps follow the bound: σΦ⁻¹(α^(1/N)) and σΦ⁻¹((α/2)^(1/N)).
    assert results[0].radius_cap == pytest.approx(FILE_SIGMA * PHI_INV(0.01 ** (1 / 400)))
    assert results[1].radius_cap == pytest.approx(FILE_SIGMA * PHI_INV(0.005 ** (1 / 400)))
    # Files of one bound: no warning about it and no bound column.
    same = [read_results(files["cohen"]), read_results(files["cohen"])]
    assert not any("bound" in w for w in compare_results(same).warnings)
    assert "bound" not in format_table(same, [0.0]).splitlines()[0]
