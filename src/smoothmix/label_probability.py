"""The empirical distribution of p_y, the metric beside ACR.

p_y = P(f(x + δ) = y) is the base classifier's accuracy on noisy copies of an image x with
label y. Sun et al. (2024, "Average certified radius is a poor metric for randomized
smoothing") show that ACR can be raised by giving up hard inputs, and recommend reporting
the empirical distribution of p_y over the test images instead. A certify file of smoothmix
>= 0.5 holds its data: per row ``n_label``, the estimation's votes for the label, out of
``samples - n0`` draws (:meth:`smoothmix.analysis.CertificationResults.p_label`).

Per image this module takes either the point estimate ``n_label / draws`` or its one-sided
Clopper-Pearson lower bound at the file's α (:func:`smoothmix.core.clopper_pearson_lower`),
and summarises the distribution as its ECDF: the share of images with p_y >= t at a few
thresholds (:data:`THRESHOLDS`) and its quantiles (:data:`QUANTILES`). Files without the
columns (older releases, the reference code, ``--skip-wrong`` runs) are refused in one line
that names all of them (:func:`require_p_label`): never skipped.

After an early abstain the estimate is over the draws made before the stop, so it is a
stopped estimate (slightly biased low for images near the certification threshold). The
lower bound does not take the stopped count over the draws made: the stop depends on the
counts, so that bound would not hold at level α. It takes the count over the planned N
instead, CP(k_t, N, α). The full run's count K_N is at least k_t, and the bound grows with
the count, so CP(k_t, N, α) <= CP(K_N, N, α), a fixed-N bound with coverage >= 1 - α.
Rows that drew all N samples are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smoothmix.analysis import CertificationResults, _labels, _setting, _simple_table
from smoothmix.core import clopper_pearson_lower
from smoothmix.errors import require

__all__ = ["QUANTILES", "THRESHOLDS", "LabelProbability", "format_p_label", "p_label",
           "require_p_label"]

# Shares of images with p_y >= t: 1/2 is where CERTIFY can certify at all; the others are
# the certified radii σ·Φ⁻¹(t) ≈ 1.28σ, 2.33σ and 3.09σ.
THRESHOLDS = (0.5, 0.9, 0.99, 0.999)
QUANTILES = (0.1, 0.25, 0.5)  # the lower tail: the hard images ACR lets a method give up


@dataclass(frozen=True)
class LabelProbability:
    """Per image of one result file, p_y as the point estimate or its lower bound (NaN where
    no estimation ran), with what it is."""

    values: np.ndarray
    lower: bool  # the Clopper-Pearson lower bound rather than the point estimate
    alpha: float | None  # the level of the lower bound (the file's α)

    @property
    def kind(self) -> str:
        """``point`` or ``lower (α=…)``: the ``estimate`` column of the table."""
        return f"lower (α={_setting(self.alpha)})" if self.lower else "point"

    @property
    def known(self) -> np.ndarray:
        return self.values[~np.isnan(self.values)]

    def share_at_least(self, thresholds: Sequence[float]) -> np.ndarray:
        """The ECDF's complement: the share of images with p_y >= t, for each t (images
        without an estimate count as below every t)."""
        t = np.asarray(thresholds, dtype=float)
        with np.errstate(invalid="ignore"):
            return (self.values[:, None] >= t[None, :]).mean(axis=0)

    def quantiles(self, levels: Sequence[float]) -> np.ndarray:
        """Quantiles of p_y over the images with an estimate (the ECDF's inverse, taking
        the lower of two values at a step: ``method="inverted_cdf"``)."""
        known = self.known
        if not len(known):
            return np.full(len(levels), np.nan)
        return np.quantile(known, np.asarray(levels, dtype=float), method="inverted_cdf")

    def ecdf(self) -> tuple[np.ndarray, np.ndarray]:
        """The ECDF's steps: sorted p_y values and the share of images at or below each."""
        known = np.sort(self.known)
        return known, np.arange(1, len(known) + 1) / max(len(self.values), 1)


def require_p_label(results: Sequence[CertificationResults],
                    labels: Sequence[str] | None = None) -> None:
    """One-line SmoothmixError naming every file that cannot give p_y (no ``n_label``
    column, no ``.json`` companion, or a ``--skip-wrong`` run), and why."""
    labels = _labels(results, labels)
    lacking = [f"{res.path} ({res._without_n_label()})"
               for res in results
               if res.n_label is None or res.draws is None
               or (res.run is not None and res.run.skip_wrong)]
    require(not lacking, "p_y needs the n_label column of smoothmix >= 0.5 certify files "
            f"(recertify without --skip-wrong); {len(lacking)} of {len(results)} file(s) lack "
            f"it: {'; '.join(lacking)}")


def p_label(res: CertificationResults, lower: bool = False) -> LabelProbability:
    """p_y per image of ``res``: ``n_label / draws``, or (``lower``) its one-sided
    Clopper-Pearson lower bound at the file's α over the planned N, early-stopped rows
    included (with probability >= 1 - α per image, p_y is at least that; see the module
    docstring for why a stopped row's count is set over N, not over its draws)."""
    point = res.p_label()  # the one-line error for a file without the column
    if not lower:
        return LabelProbability(point, False, None)
    alpha = res.run.alpha if res.run is not None else None
    planned = res.run.n if res.run is not None else None
    require(alpha is not None and planned is not None,
            f"{res.path}.json records no alpha or N for the lower bound of p_y")
    assert alpha is not None and planned is not None and res.n_label is not None
    bound = np.array([clopper_pearson_lower(int(k), planned, alpha) if np.isfinite(p) else np.nan
                      for k, p in zip(res.n_label, point, strict=True)])
    return LabelProbability(bound, True, alpha)


def format_p_label(results: Sequence[CertificationResults], fmt: str = "markdown",
                   labels: Sequence[str] | None = None, lower: bool = False,
                   thresholds: Sequence[float] = THRESHOLDS,
                   quantiles: Sequence[float] = QUANTILES) -> str:
    """The distribution of p_y per file: images, mean, the share (%) with p_y >= t at each
    threshold, and quantiles; with ``lower`` a second row per file for the Clopper-Pearson
    lower bound. Markdown or CSV (CSV unrounded); every file must have the column
    (:func:`require_p_label`)."""
    require(fmt in ("markdown", "csv"), f"p_y tables come as markdown or csv, not {fmt}")
    labels = _labels(results, labels)
    require_p_label(results, labels)
    head = ["name", "estimate", "images", "mean p_y", *(f"p_y >= {t:g} (%)" for t in thresholds),
            *(f"q{100 * q:g}" for q in quantiles)]
    csv = fmt == "csv"
    body = []
    for label, res in zip(labels, results, strict=True):
        for dist in [p_label(res)] + ([p_label(res, lower=True)] if lower else []):
            mean = float(dist.known.mean()) if len(dist.known) else float("nan")
            shares = 100 * dist.share_at_least(thresholds)
            body.append([label, dist.kind, str(len(res)), repr(mean) if csv else f"{mean:.4f}",
                         *(repr(float(s)) if csv else f"{s:.2f}" for s in shares),
                         *(repr(float(q)) if csv else f"{q:.4f}"
                           for q in dist.quantiles(quantiles))])
    table = _simple_table(head, body, fmt)
    if not csv:
        table += ("\np_y: the base classifier's accuracy on noisy copies of each image "
                  "(n_label / draws; Sun et al. 2024), beside ACR. qX: the X% quantile over "
                  "images." + (" lower: the one-sided Clopper-Pearson bound at the file's α."
                               if lower else "") + "\n")
    return table
