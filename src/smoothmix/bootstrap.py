"""Paired bootstrap comparison of two certification runs on the same images.

One training seed per method and a few hundred certified images cannot rank methods whose
ACRs differ by a few thousandths. The paired bootstrap states how far the data go: it
resamples *images* (with replacement, the same resample for both runs, since the runs
certified the same images and their per-image outcomes are correlated) and reports a
percentile interval for the difference in ACR and in certified accuracy at each radius.
It measures the spread due to the choice of test images only: the spread between training
seeds is not in it, so an interval that excludes 0 says the two *models* differ on this
test distribution, not that the two *methods* do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smoothmix.analysis import CertificationResults
from smoothmix.checks import check_count
from smoothmix.errors import require

__all__ = ["PairedDifference", "paired_bootstrap"]


@dataclass(frozen=True)
class PairedDifference:
    """``a`` minus ``b`` on the same images: the observed difference and its bootstrap
    percentile interval at level ``level``, for ACR and for certified accuracy (fractions
    in [0, 1]) at each radius."""

    images: int
    radii: tuple[float, ...]
    acr: float
    acr_interval: tuple[float, float]
    certified: tuple[float, ...]
    certified_intervals: tuple[tuple[float, float], ...]
    level: float
    resamples: int

    def acr_excludes_zero(self) -> bool:
        """Whether the ACR interval lies entirely on one side of 0."""
        lo, hi = self.acr_interval
        return lo > 0 or hi < 0


def paired_bootstrap(a: CertificationResults, b: CertificationResults,
                     radii: Sequence[float], *, resamples: int = 10_000,
                     level: float = 0.95, seed: int = 0) -> PairedDifference:
    """Difference ``a - b`` in ACR and certified accuracy at ``radii`` on the images both
    runs certified (every image of each: the runs must cover the same idx set), with a
    paired percentile bootstrap interval over images."""
    check_count("resamples", resamples)
    require(0 < level < 1, f"level must be in (0, 1), got {level}")
    require(set(a.idx.tolist()) == set(b.idx.tolist()),
            f"{a.path} and {b.path} certified different images ({len(a)} and {len(b)} "
            "rows): a paired comparison needs the same ones")
    order_a, order_b = np.argsort(a.idx), np.argsort(b.idx)
    r = np.asarray(radii, dtype=float)
    # per image: its certified radius when correct (0 otherwise) and the indicator at each r
    rad_a = np.where(a.correct, a.radius, 0.0)[order_a]
    rad_b = np.where(b.correct, b.radius, 0.0)[order_b]
    cert_a = (a.correct[:, None] & (a.radius[:, None] >= r[None, :]))[order_a].astype(float)
    cert_b = (b.correct[:, None] & (b.radius[:, None] >= r[None, :]))[order_b].astype(float)
    d_rad, d_cert = rad_a - rad_b, cert_a - cert_b
    rng = np.random.default_rng(seed)
    n = len(d_rad)
    boot_acr, boot_cert = np.empty(resamples), np.empty((resamples, len(r)))
    block = max(1, 2_000_000 // n)  # resamples per block: bounded memory for any n
    for start in range(0, resamples, block):
        picks = rng.integers(0, n, size=(min(block, resamples - start), n))
        boot_acr[start:start + len(picks)] = d_rad[picks].mean(axis=1)
        boot_cert[start:start + len(picks)] = d_cert[picks].mean(axis=1)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    acr_lo, acr_hi = np.percentile(boot_acr, q)
    cert_q = np.percentile(boot_cert, q, axis=0) if len(r) else np.zeros((2, 0))
    return PairedDifference(
        images=n, radii=tuple(float(x) for x in r), acr=float(d_rad.mean()),
        acr_interval=(float(acr_lo), float(acr_hi)),
        certified=tuple(float(x) for x in d_cert.mean(axis=0)),
        certified_intervals=tuple((float(lo), float(hi))
                                  for lo, hi in zip(cert_q[0], cert_q[1], strict=True)),
        level=level, resamples=resamples)
