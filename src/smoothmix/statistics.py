"""What CERTIFY and PREDICT can do at a level alpha, and the checks that refuse the rest.

* :func:`certifying_votes` - k*, the fewest votes out of n with which CERTIFY does not
  abstain (the early-abstain threshold of :mod:`smoothmix.votes`).
* :func:`smallest_certifying_n` / :func:`smallest_predicting_n` - the smallest sample
  counts with which CERTIFY / PREDICT can return a class at all.
* :func:`check_certify_args` / :func:`check_predict_args` / :func:`check_bound` - one-line
  errors for arguments that cannot work, raised before any sample is drawn.

The bounds themselves are :mod:`smoothmix.core`'s (the one Clopper-Pearson implementation).
"""

from __future__ import annotations

import functools
import math

from scipy.stats import binomtest

from smoothmix.checks import check_alpha, check_count
from smoothmix.errors import require

__all__ = ["BOUNDS", "DEFAULT_ALPHA", "DEFAULT_N", "DEFAULT_N0", "certifying_votes",
           "check_bound", "check_certify_args", "check_predict_args", "smallest_certifying_n",
           "smallest_predicting_n"]

BOUNDS = ("cohen", "two-sided")

# CERTIFY's and PREDICT's defaults everywhere (the Python entry points and the CLI): Cohen et
# al.'s protocol, n0 selection samples, n estimation samples, failure probability alpha.
# ``smoothmix reproduce`` reads the published protocol from its own data (published.json).
DEFAULT_N0 = 100
DEFAULT_N = 100_000
DEFAULT_ALPHA = 0.001


def _lower(n_a: int, n: int, alpha: float) -> float:
    # Imported when first used: smoothmix.core imports this module.
    from smoothmix.core import clopper_pearson_lower
    return clopper_pearson_lower(n_a, n, alpha)


def check_bound(bound: object) -> str:
    """The bound's name, or a one-line error naming the valid ones."""
    require(bound in BOUNDS, f"unknown bound {bound!r}; choose one of {', '.join(BOUNDS)}")
    return str(bound)


@functools.lru_cache(maxsize=64)
def smallest_certifying_n(alpha: float) -> int:
    """Smallest n for which CERTIFY at level ``alpha`` can return a class at all.

    Even with all n votes for one class the bound is alpha ** (1/n), which must reach 1/2,
    so n >= log2(1/alpha); the float estimate is corrected against the exact bound.
    """
    check_alpha(alpha)
    n = max(1, math.ceil(math.log2(1.0 / alpha)))
    while _lower(n, n, alpha) < 0.5:
        n += 1
    while n > 1 and _lower(n - 1, n - 1, alpha) >= 0.5:
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
        if _lower(mid, n, alpha) >= 0.5:
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
