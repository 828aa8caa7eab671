"""Plots of certification results: certified accuracy against radius (with the paper's
curves dashed beside ours), and the ECDF of p_y.

Kept apart from :mod:`smoothmix.analysis` (the numbers) so that matplotlib loads only when a
plot is drawn.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoothmix.analysis import CertificationResults, _labels, _setting, describe_settings
from smoothmix.errors import SmoothmixError, require
from smoothmix.storage import atomic_write_with
from smoothmix.storage.records import read_meta

__all__ = ["PaperCurve", "paper_curves", "plot_certified_accuracy", "plot_p_label"]


@dataclass(frozen=True)
class PaperCurve:
    """A published certified-accuracy curve (the authors' mean over their seeds, from
    ``data/published.json``), drawn dashed in the colour of the first file it matches."""

    experiment: str
    method: str
    radii: tuple[float, ...]
    certified: tuple[float, ...]  # percent
    beside: int  # index of the file it is drawn beside


def paper_curves(results: Sequence[CertificationResults], labels: Sequence[str] | None = None,
                 experiment: str | None = None) -> tuple[list[PaperCurve], list[str]]:
    """The published curve of each file's row, and warnings for files that name a row
    without one. A file's experiment is ``experiment`` (``analyze --published``) or the one
    its ``.json`` records (``reproduce`` writes ``experiment`` and ``method``); its method
    the recorded one, else its label or file stem (``certify_`` removed) when that is a row
    of the experiment. The authors' values on the file's own images (every ``skip``-th, the
    ``subsets`` of published.json) where the logs give them, else the fine ``curve`` where
    there is one, else the full-test-set values at the experiment's radii. A file at another
    σ than the experiment's gets no curve (warned)."""
    from smoothmix.reproduce.experiments import get_experiment

    labels = _labels(results, labels)
    curves: dict[tuple[str, str], PaperCurve] = {}
    warnings = []
    for i, (label, res) in enumerate(zip(labels, results, strict=True)):
        meta = read_meta(Path(res.path), required=False)
        settings = meta["settings"] if meta else {}
        name = experiment or settings.get("experiment")
        if name is None:
            continue
        exp = get_experiment(str(name))
        stem = Path(res.path).stem
        candidates = [settings.get("method"), label, stem, stem.removeprefix("certify_")]
        method = next((m for m in candidates if m in exp.published), None)
        pub = exp.published.get(method or "") or {}
        same = (pub.get("subsets") or {}).get(str(settings.get("skip")), {})
        # On the file's own images (every skip-th) where the authors' logs give them, else
        # their full-test-set curve.
        curve = ({"radii": exp.radii, "certified": same["certified"]}
                 if same.get("certified") else pub.get("curve")
                 or ({"radii": exp.radii, "certified": pub["certified"]}
                     if pub.get("certified") else None))
        if curve is None:
            warnings.append(f"{label}: no published curve in {exp.name} for "
                            f"{method or 'its method (name it by --labels)'}")
        elif res.run is not None and res.run.sigma not in (None, exp.sigma):
            warnings.append(f"{label} is at sigma {res.run.sigma:g}, {exp.name}'s published "
                            f"curves at {exp.sigma:g}: not drawn beside it")
        elif method is not None and (exp.name, method) not in curves:
            curves[exp.name, method] = PaperCurve(
                exp.name, method, tuple(float(r) for r in curve["radii"]),
                tuple(float(a) for a in curve["certified"]), i)
    return list(curves.values()), warnings


def plot_certified_accuracy(
    results: Sequence[CertificationResults],
    out_path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    max_radius: float | None = None,
    *,
    dpi: int = 300,
    figsize: tuple[float, float] = (4.0, 3.0),
    published: Sequence[PaperCurve] = (),
    note: str | None = None,
) -> Path:
    """Certified accuracy (%) against radius, one curve per file, saved to ``out_path``.

    Sized for a paper column (``figsize`` in inches, small fonts; vector formats by the
    file suffix, ``dpi`` for raster ones). Curves differ in colour, line style and marker
    so that overlapping ones stay apart; the title gives the shared σ, N, α and images and
    the legend the settings in which files differ. A dotted vertical line marks each
    file's radius cap σ·Φ⁻¹(α^(1/N)) inside the plotted range: beyond it the zero is an
    artefact of N. ``published`` (:func:`paper_curves`): the paper's curves, dashed, in the
    colour of the file each belongs to (our curves are then solid). ``note``: a line under
    the title (a reduced budget, say).
    """
    labels = _labels(results, labels)
    _check_figure(dpi, figsize)
    if max_radius is None:
        top = max([float(r.radius.max(initial=0.0)) for r in results]
                  + [max((r for r, a in zip(c.radii, c.certified, strict=True) if a > 0),
                         default=0.0) for c in published])
        max_radius = 1.05 * top or 1.0
    grid = np.linspace(0.0, max_radius, 500)
    shared = describe_settings(results)
    with _figure(figsize) as (fig, ax):
        colors = _draw_curves(ax, results, labels, grid, shared, solid=bool(published))
        for curve in published:
            ax.plot(curve.radii, curve.certified, linestyle=(0, (4, 2)), linewidth=1.0,
                    color=colors[curve.beside], label=f"{curve.method} (paper)")
        ax.set_xlabel(r"radius ($\ell_2$)")
        ax.set_ylabel("certified accuracy (%)")
        ax.set_xlim(0, max_radius)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        title = "\n".join(t for t in (shared, note) if t)
        if title:
            ax.set_title(title)
        ax.legend()
        return _save(fig, out_path, dpi)


def plot_p_label(results: Sequence[CertificationResults], out_path: str | os.PathLike,
                 labels: Sequence[str] | None = None, *, lower: bool = False, dpi: int = 300,
                 figsize: tuple[float, float] = (4.0, 3.0)) -> Path:
    """The ECDF of p_y, one step curve per file: the share of images (%) whose p_y is at
    most t, against t (:mod:`smoothmix.label_probability`); with ``lower`` the
    Clopper-Pearson lower bounds' ECDF dashed beside each. A curve that stays low until t
    near 1 is a model accurate under noise on most images; a step at the left is the
    images it gives up, which ACR does not show."""
    from smoothmix.label_probability import p_label, require_p_label

    labels = _labels(results, labels)
    require_p_label(results, labels)
    _check_figure(dpi, figsize)
    with _figure(figsize) as (fig, ax):
        for label, res in zip(labels, results, strict=True):
            x, share = p_label(res).ecdf()
            (line,) = ax.step(np.r_[0.0, x, 1.0], 100 * np.r_[0.0, share, share[-1:]],
                              where="post", linewidth=1.2, label=label)
            if lower:
                x, share = p_label(res, lower=True).ecdf()
                ax.step(np.r_[0.0, x, 1.0], 100 * np.r_[0.0, share, share[-1:]], where="post",
                        linewidth=1.0, linestyle=(0, (4, 2)), color=line.get_color(),
                        label=f"{label} (lower bound)")
        ax.set_xlabel(r"$p_y$ (accuracy of the base classifier under noise)")
        ax.set_ylabel(r"images with $p_y \leq t$ (%)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        shared = describe_settings(results)
        if shared:
            ax.set_title(shared)
        ax.legend(loc="best")
        return _save(fig, out_path, dpi)


def _check_figure(dpi: int, figsize: tuple[float, float]) -> None:
    require(dpi >= 1, f"dpi must be >= 1, got {dpi}")
    require(len(figsize) == 2 and all(v > 0 for v in figsize),
            f"figure size must be two positive inches, got {figsize}")


@contextlib.contextmanager
def _figure(figsize: tuple[float, float]) -> Iterator[tuple[Any, Any]]:
    """A headless figure and its axes, sized for a paper column (small fonts), closed after."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 7}):
        fig, ax = plt.subplots(figsize=figsize)
        try:
            yield fig, ax
        finally:
            plt.close(fig)


def _save(fig: Any, out_path: str | os.PathLike, dpi: int) -> Path:
    """Write the figure to ``out_path`` whole or not at all (:func:`atomic_write_with`), in
    the format its suffix names (matplotlib's default format without one)."""
    fig.tight_layout()
    out = Path(out_path)
    fmt = out.suffix[1:].lower() or None
    try:
        atomic_write_with(out, lambda fh: fig.savefig(fh, dpi=dpi, format=fmt))
    except (OSError, ValueError) as exc:
        raise SmoothmixError(f"cannot write plot {out}: {exc}") from None
    return out


def _draw_curves(ax: Any, results: Sequence[CertificationResults], labels: Sequence[str],
                 grid: np.ndarray, shared: str, solid: bool = False) -> list[str]:
    """One curve per file (colour, line style and marker all differ; all ``solid`` beside
    the paper's dashed curves), and a dotted line at each radius cap inside the plotted
    range (files that share a cap share the line). Returns the curves' colours."""
    styles = ("-",) if solid else ("-", "--", "-.", ":")
    colors = []
    markers = ("o", "s", "^", "D", "v", "x", "P", "*")
    caps = {res.radius_cap for res in results}
    marked: list[float] = []
    for i, (label, res) in enumerate(zip(labels, results, strict=True)):
        text = label + _legend_settings(res, shared)
        (line,) = ax.plot(grid, 100 * res.certified_accuracy(grid), label=text,
                          linestyle=styles[i % len(styles)], marker=markers[i % len(markers)],
                          markevery=(i * 7 % 50, 50), markersize=3.5, linewidth=1.2)
        colors.append(line.get_color())
        cap = res.radius_cap
        if cap is not None and cap < grid[-1] and cap not in marked:
            color = line.get_color() if len(caps) > 1 else "0.3"
            ax.axvline(cap, color=color, linestyle=":", linewidth=0.8)
            ax.annotate(f"cap {cap:.2f}", (cap, 100), xytext=(-2, -2 - 8 * len(marked)),
                        textcoords="offset points", ha="right", va="top", fontsize=6,
                        color=color)
            marked.append(cap)
    return colors


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
