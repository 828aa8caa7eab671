"""Plots of certification results: certified accuracy against radius.

Kept apart from :mod:`smoothmix.analysis` (the numbers) so that matplotlib loads only when a
plot is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smoothmix.analysis import CertificationResults, _labels, _setting, describe_settings
from smoothmix.errors import SmoothmixError, require

__all__ = ["plot_certified_accuracy"]


def plot_certified_accuracy(
    results: Sequence[CertificationResults],
    out_path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    max_radius: float | None = None,
    *,
    dpi: int = 300,
    figsize: tuple[float, float] = (4.0, 3.0),
) -> Path:
    """Certified accuracy (%) against radius, one curve per file, saved to ``out_path``.

    Sized for a paper column (``figsize`` in inches, small fonts; vector formats by the
    file suffix, ``dpi`` for raster ones). Curves differ in colour, line style and marker
    so that overlapping ones stay apart; the title gives the shared σ, N, α and images and
    the legend the settings in which files differ. A dotted vertical line marks each
    file's radius cap σ·Φ⁻¹(α^(1/N)) inside the plotted range: beyond it the zero is an
    artefact of N.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    labels = _labels(results, labels)
    require(dpi >= 1, f"dpi must be >= 1, got {dpi}")
    require(len(figsize) == 2 and all(v > 0 for v in figsize),
            f"figure size must be two positive inches, got {figsize}")
    if max_radius is None:
        max_radius = 1.05 * max(float(r.radius.max(initial=0.0)) for r in results) or 1.0
    grid = np.linspace(0.0, max_radius, 500)
    shared = describe_settings(results)
    with plt.rc_context({"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 7}):
        fig, ax = plt.subplots(figsize=figsize)
        _draw_curves(ax, results, labels, grid, shared)
        ax.set_xlabel(r"radius ($\ell_2$)")
        ax.set_ylabel("certified accuracy (%)")
        ax.set_xlim(0, max_radius)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if shared:
            ax.set_title(shared)
        ax.legend()
        fig.tight_layout()
        out = Path(out_path)
        try:
            fig.savefig(out, dpi=dpi)
        except (OSError, ValueError) as exc:
            raise SmoothmixError(f"cannot write plot {out}: {exc}") from None
        finally:
            plt.close(fig)
    return out


def _draw_curves(ax: Any, results: Sequence[CertificationResults], labels: Sequence[str],
                 grid: np.ndarray, shared: str) -> None:
    """One curve per file (colour, line style and marker all differ), and a dotted line at
    each radius cap inside the plotted range (files that share a cap share the line)."""
    styles = ("-", "--", "-.", ":")
    markers = ("o", "s", "^", "D", "v", "x", "P", "*")
    caps = {res.radius_cap for res in results}
    marked: list[float] = []
    for i, (label, res) in enumerate(zip(labels, results, strict=True)):
        text = label + _legend_settings(res, shared)
        (line,) = ax.plot(grid, 100 * res.certified_accuracy(grid), label=text,
                          linestyle=styles[i % len(styles)], marker=markers[i % len(markers)],
                          markevery=(i * 7 % 50, 50), markersize=3.5, linewidth=1.2)
        cap = res.radius_cap
        if cap is not None and cap < grid[-1] and cap not in marked:
            color = line.get_color() if len(caps) > 1 else "0.3"
            ax.axvline(cap, color=color, linestyle=":", linewidth=0.8)
            ax.annotate(f"cap {cap:.2f}", (cap, 100), xytext=(-2, -2 - 8 * len(marked)),
                        textcoords="offset points", ha="right", va="top", fontsize=6,
                        color=color)
            marked.append(cap)


def _legend_settings(res: CertificationResults, shared: str) -> str:
    """The settings of ``res`` not already in the shared title."""
    run = res.run
    parts = []
    for name, value in (("σ", run.sigma if run else None), ("N", run.n if run else None),
                        ("α", run.alpha if run else None)):
        if value is not None and f"{name} = " not in shared:
            parts.append(f"{name}={_setting(value)}")
    if "images" not in shared:
        parts.append(f"{len(res)} img" if res.complete else
                     f"{len(res)} of {res.run.selected} img, incomplete")  # type: ignore[union-attr]
    return f" ({', '.join(parts)})" if parts else ""
