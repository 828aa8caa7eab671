"""CERTIFY's exact pieces against ground truth that shares none of their code (MATH.md §2, 2.1).

* The Clopper-Pearson bound against its definition, the binomial tail: at p = the lower
  bound after k successes in n, P_p(X >= k) = alpha. (The comparison with statsmodels in
  test_core.py runs the same Beta quantile, so it cannot catch a wrong level.) The tail is
  summed term by term in 40-digit arithmetic, and also taken from scipy's binom.sf.
* Early abstain on scripted vote streams: a base classifier that answers a fixed sequence
  of classes, fed through the real Smooth, with the final count just below, at and just
  above k* and the failures first, last or spread; the shortcut must give the full run's
  answer.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy.stats import binom, norm
from torch import nn

from smoothmix.core import Smooth, certifying_votes, clopper_pearson_lower

# ------------------------------------------------------------------ Clopper-Pearson

GRID_N = (1, 2, 7, 100, 1000, 10_000, 100_000)
GRID_ALPHA = (1e-6, 0.001, 0.01, 0.05, 0.25)


def grid() -> list[tuple[int, int, float]]:
    return [(k, n, alpha) for n in GRID_N for alpha in GRID_ALPHA
            for k in sorted({1, 2, n // 3, n // 2, n - 1, n}) if 1 <= k <= n]


def upper_tail(k: int, n: int, p: float) -> mpmath.mpf:
    """P(Bin(n, p) >= k) for the float p, summed term by term at 40 digits (until the
    terms, past the mode, no longer move the sum)."""
    with mpmath.workdps(40):
        p = mpmath.mpf(p)
        odds = p / (1 - p)
        term = mpmath.binomial(n, k) * p**k * (1 - p) ** (n - k)
        total = mpmath.mpf(0)
        for j in range(k, n + 1):
            total += term
            if j >= n * p and term < total * mpmath.mpf(10) ** -30:
                break
            term *= (n - j) * odds / (j + 1)
        return total


def tail_errors(bound) -> list[float]:
    """Relative error of P_p(X >= k) = alpha at p = bound(k, n, alpha), over the grid."""
    errors = []
    for k, n, alpha in grid():
        p = bound(k, n, alpha)
        exact = float(upper_tail(k, n, p))
        assert binom.sf(k - 1, n, p) == pytest.approx(exact, rel=1e-9)  # scipy agrees
        errors.append(abs(exact - alpha) / alpha)
    return errors


def test_clopper_pearson_lower_bound_solves_the_binomial_tail_equation():
    assert max(tail_errors(clopper_pearson_lower)) < 1e-9
    for n in GRID_N:
        assert clopper_pearson_lower(0, n, 0.01) == 0.0  # no successes: nothing to bound


def test_the_tail_check_catches_a_bound_at_twice_the_level():
    def doubled(k: int, n: int, alpha: float) -> float:
        return clopper_pearson_lower(k, n, min(2 * alpha, 0.999))

    errors = tail_errors(doubled)
    assert min(errors) > 0.5  # P_p(X >= k) = 2 alpha there, not alpha, at every point


# ------------------------------------------------------------------ early abstain


class Scripted(nn.Module):
    """Answers the classes of ``script`` in order, one per image it is shown."""

    def __init__(self, script: list[int]) -> None:
        super().__init__()
        self.script, self.seen = torch.tensor(script), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = self.script[self.seen: self.seen + len(x)]
        assert len(classes) == len(x), "asked for more votes than scripted"
        self.seen += len(x)
        return nn.functional.one_hot(classes, 2).float()


def stream(n: int, votes: int, order: str) -> list[int]:
    """n estimation votes, ``votes`` of them for class 1: the failures (class 0) first,
    last, evenly spread, or at random places."""
    failures = n - votes
    if order == "first":
        return [0] * failures + [1] * votes
    if order == "last":
        return [1] * votes + [0] * failures
    if order == "spread":
        at = {round((i + 0.5) * n / failures) for i in range(failures)} if failures else set()
        assert len(at) == failures
        return [0 if t in at else 1 for t in range(n)]
    rng = np.random.default_rng(votes)
    out = np.ones(n, dtype=int)
    out[rng.choice(n, failures, replace=False)] = 0
    return out.tolist()


N0, N, ALPHA, SIGMA = 10, 200, 0.01, 0.5
K_STAR = certifying_votes(N, ALPHA)


@pytest.mark.parametrize("batch", [1, 16, 64])
@pytest.mark.parametrize("order", ["first", "last", "spread", "random"])
@pytest.mark.parametrize("votes", [K_STAR - 1, K_STAR, K_STAR + 1])
def test_early_abstain_gives_the_full_runs_answer_on_scripted_streams(votes, order, batch):
    script = [1] * N0 + stream(N, votes, order)  # the selection votes for class 1
    assert sum(script[N0:]) == votes
    runs = {}
    for early in (False, True):
        model = Scripted(script)
        smooth = Smooth(model, 2, SIGMA, chunk_size=batch)
        runs[early] = smooth.certificate(torch.zeros(1, 1, 2), N0, N, ALPHA, batch,
                                         early_abstain=early)
        assert model.seen == runs[early].samples  # it says what it drew
    full, early = runs[False], runs[True]
    assert (early.prediction, early.radius, early.status) == \
        (full.prediction, full.radius, full.status)
    assert full.samples == N0 + N
    if votes >= K_STAR:  # certified: needs all n samples, and gets them
        assert full.status == "certified" and early.samples == N0 + N
        bound = clopper_pearson_lower(votes, N, ALPHA)
        assert full.radius == pytest.approx(SIGMA * norm.ppf(bound), rel=1e-12)
    else:
        assert full[:4] == (-1, 0.0, N0 + N, "abstain")
        if order == "first":  # futile once the failures exceed n - k*: it stops early
            assert early.samples < N0 + N
            assert early.samples - N0 > N - K_STAR
        if order == "last":  # futile only at the very end: nothing to save
            assert early.samples == N0 + N


def test_the_threshold_is_where_the_bound_crosses_one_half():
    assert clopper_pearson_lower(K_STAR, N, ALPHA) >= 0.5 > \
        clopper_pearson_lower(K_STAR - 1, N, ALPHA)
    assert math.isclose(float(upper_tail(K_STAR, N, 0.5)), binom.sf(K_STAR - 1, N, 0.5),
                        rel_tol=1e-9)
    assert binom.sf(K_STAR - 1, N, 0.5) <= ALPHA < binom.sf(K_STAR - 2, N, 0.5)
