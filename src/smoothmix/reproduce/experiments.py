"""The catalogue of published experiments (``data/published.json``) and their rows.

An *experiment* is a published table: a dataset and a σ (``mnist-0.50``, ...). Its rows are
the methods with published values and the methods with a training preset
(``{dataset}-{method}-{sigma}``, see :mod:`smoothmix.training.presets`); a row needs a preset
to be run and published values to be compared. A *figure* of an experiment (the η figure of
``mnist-1.00``) adds rows that run only when named: they are not part of the table's
default rows. The published protocol (n0, N, α) is read from the same file, so it is
declared once.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from smoothmix.errors import require


@dataclass(frozen=True)
class Protocol:
    """The published CERTIFY protocol (``published.json``'s ``protocol``)."""

    n0: int
    n: int
    alpha: float


@lru_cache(maxsize=1)
def _published() -> dict[str, Any]:
    text = resources.files("smoothmix.data").joinpath("published.json").read_text("utf-8")
    return json.loads(text)


def published_protocol() -> Protocol:
    """n0, N and α of the published tables, from ``published.json``."""
    proto = _published()["protocol"]
    return Protocol(n0=int(proto["n0"]), n=int(proto["n"]), alpha=float(proto["alpha"]))


_PROTOCOL = published_protocol()
N0 = _PROTOCOL.n0
FULL_N = _PROTOCOL.n
ALPHA = _PROTOCOL.alpha


@dataclass(frozen=True)
class Experiment:
    """One published table (and the figures drawn at its σ)."""

    name: str
    dataset: str
    sigma: float
    skip: int  # the published protocol's test subset: every skip-th test image
    test_images: int
    radii: tuple[float, ...]
    # method -> {"acr", optional "certified", "note", ...}: the table's rows, then the
    # figures' rows (an empty entry: no published values yet)
    published: dict[str, dict[str, Any]]
    # figure key -> (its title, its rows): rows that run only when named
    figures: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)

    def preset_name(self, method: str) -> str:
        return f"{self.dataset}-{method}-{self.sigma:.2f}"

    def with_preset(self) -> list[str]:
        """Every row with a training preset for this table, in :meth:`methods`' order."""
        found = _preset_rows(self.dataset, self.sigma)
        return [m for m in self.methods() if m in found]

    def runnable(self) -> list[str]:
        """The default rows: those with a training preset, the figures' rows aside."""
        named_only = {m for _, rows in self.figures.values() for m in rows}
        return [m for m in self.with_preset() if m not in named_only]

    def methods(self) -> list[str]:
        """Every row, in the paper's order (the published rows, the figures' rows), then
        presets without one."""
        extra = _preset_rows(self.dataset, self.sigma)
        return list(self.published) + [m for m in extra if m not in self.published]

    def figure_of(self, method: str) -> str | None:
        """The title of the figure ``method`` is a row of, or None."""
        return next((title for title, rows in self.figures.values()
                     if method in rows), None)


def _preset_rows(dataset: str, sigma: float) -> list[str]:
    """The method ids (the middle of ``{dataset}-{method}-{sigma}``) of the presets of one
    dataset and σ, in the presets' order."""
    from smoothmix.training.kinds import method_trains
    from smoothmix.training.presets import PRESETS

    prefix, suffix = f"{dataset}-", f"-{sigma:.2f}"
    # Rows are smoothed classifiers: the denoiser presets (which need a classifier) are not.
    return [name[len(prefix):-len(suffix)] for name, p in PRESETS.items()
            if p.dataset == dataset and p.sigma == sigma
            and name.startswith(prefix) and name.endswith(suffix)
            and method_trains(p.method) == "classifier"]


def list_experiments() -> list[str]:
    return list(_published()["experiments"])


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; an unknown name is a one-line error with the nearest
    names and all of them (a handful)."""
    data = _published()["experiments"]
    near = difflib.get_close_matches(str(name), data, n=2) if name not in data else []
    guess = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
    require(name in data, f"unknown experiment {name!r}{guess}; valid experiments: "
            f"{', '.join(data)} (`smoothmix reproduce --list` describes them)")
    e = data[name]
    figures = {key: (str(fig["title"]), tuple(fig["rows"]))
               for key, fig in (e.get("figures") or {}).items()}
    published = dict(e["methods"])
    for fig in (e.get("figures") or {}).values():
        published.update({m: v for m, v in fig["rows"].items() if m not in published})
    return Experiment(name=name, dataset=e["dataset"], sigma=float(e["sigma"]),
                      skip=int(e["skip"]), test_images=int(e["test_images"]),
                      radii=tuple(float(r) for r in e["radii"]), published=published,
                      figures=figures)


def select_methods(experiment: Experiment, methods: list[str] | None) -> list[str]:
    """The methods to run (default: every row with a preset, the figures' rows aside);
    one-line errors otherwise."""
    runnable = experiment.runnable()
    if not methods:
        require(bool(runnable), f"{experiment.name} has no method with a training preset")
        return runnable
    with_preset = experiment.with_preset()
    for m in methods:
        require(m in experiment.methods() or m in with_preset, _elsewhere(experiment, m) or
                f"unknown method {m!r} for {experiment.name}; its methods: "
                f"{', '.join(experiment.methods())}")
        require(m in with_preset, f"method {m!r} has no training preset for {experiment.name} "
                f"(no preset {experiment.preset_name(m)}; published values only); methods "
                f"with a preset: {', '.join(with_preset)}" + _also_at(experiment, m))
    require(len(set(methods)) == len(methods), f"--methods repeats a method: {methods}")
    return list(methods)


def _elsewhere(experiment: Experiment, method: str) -> str | None:
    """For a row that exists with a preset only at another σ of the dataset (the η rows,
    the one-step row): the one line that says where; None for a row known nowhere."""
    others = _experiments_with(experiment, method)
    if not others:
        return None
    figure = others[0].figure_of(method)
    if figure is not None:
        rows = [m for _, fig_rows in others[0].figures.values() if method in fig_rows
                for m in fig_rows]
        what = f"the rows of the {figure} exist at σ = {_sigmas(others)}: {', '.join(rows)}"
    else:
        what = f"row {method} exists at σ = {_sigmas(others)}"
    return (f"no preset {experiment.preset_name(method)}; {what} (smoothmix reproduce "
            f"{others[0].name} --methods {method})")


def _also_at(experiment: Experiment, method: str) -> str:
    others = _experiments_with(experiment, method)
    return (f"; {method} has a preset at σ = {_sigmas(others)} ({others[0].name})"
            if others else "")


def _experiments_with(experiment: Experiment, method: str) -> list[Experiment]:
    """The other experiments of the dataset where ``method`` is a row with a preset."""
    found = []
    for name in list_experiments():
        other = get_experiment(name)
        if (other.dataset == experiment.dataset and other.name != experiment.name
                and method in other.with_preset()):
            found.append(other)
    return found


def _sigmas(experiments: list[Experiment]) -> str:
    return ", ".join(f"{e.sigma:.2f}" for e in experiments)


def describe_experiments() -> str:
    """What ``smoothmix reproduce --list`` prints."""
    from smoothmix.training.presets import get_preset

    proto = published_protocol()
    lines = [f"Full budget: the presets; CERTIFY n0={proto.n0}, N={proto.n:,}, "
             f"alpha={proto.alpha}. Published values: {_published()['source']}", ""]
    for name in list_experiments():
        e = get_experiment(name)
        test = "full test set" if e.skip == 1 else f"every {e.skip}th validation image"
        lines.append(f"{name}: {e.dataset}, sigma={e.sigma:g}, {test} ({e.test_images} "
                     f"images), radii {', '.join(f'{r:g}' for r in e.radii)}")
        with_preset = e.with_preset()
        for m in e.methods():
            what = "no preset: published values only"
            if m in with_preset:
                p = get_preset(e.preset_name(m))
                what = f"preset {p.name} ({p.epochs} epochs)"
            figure = e.figure_of(m)
            if figure is not None:
                what += f", {figure}: runs when named"
            lines.append(f"  {m:18s} {what}; {_published_cell(e.published.get(m))}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _published_cell(pub: dict[str, Any] | None) -> str:
    if not pub or pub.get("acr") is None:
        return "published: —"
    shown = f"published ACR {pub['acr']:.3f}"
    if pub.get("certified"):
        shown += " | " + " ".join(f"{a:g}" for a in pub["certified"])
    if pub.get("note"):
        shown += f" ({pub['note']})"
    return shown


__all__ = ["ALPHA", "FULL_N", "N0", "Experiment", "Protocol", "describe_experiments",
           "get_experiment", "list_experiments", "published_protocol", "select_methods"]
