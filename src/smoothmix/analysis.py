"""Certified accuracy, ACR, tables and curves from certification result files.

Reads smoothmix's files and the reference ``certify.py``'s (radii with 3 significant
digits, times like ``0:00:14.612345``). Abstentions count as wrong (SPEC §2): an example is
certified at radius r when ``predict == label`` and ``radius >= r``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smoothmix.errors import SmoothmixError, require

FORMATS = ("markdown", "latex", "csv")


@dataclass(frozen=True)
class CertificationResults:
    """The rows of one result file as arrays, in file order."""

    path: str
    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    time: np.ndarray  # seconds per example

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def correct(self) -> np.ndarray:
        """Whether the smoothed classifier returned the true label (abstain = -1 is wrong)."""
        return self.predict == self.label

    def certified_accuracy(self, radii: Sequence[float]) -> np.ndarray:
        """Fraction of examples with predict == label and radius >= r, for each r."""
        r = np.asarray(radii, dtype=float)
        return (self.correct[:, None] & (self.radius[:, None] >= r[None, :])).mean(axis=0)

    def acr(self) -> float:
        """Average certified radius (Zhai et al. 2020): mean of radius * 1[predict == label]."""
        return float(np.where(self.correct, self.radius, 0.0).mean())


def read_results(path: str | os.PathLike) -> CertificationResults:
    """Read a certify result file (tab-separated, header ``idx label predict radius ...``)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SmoothmixError(f"result file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SmoothmixError(f"cannot read result file {path}: {exc}") from None
    require(bool(lines), f"{path} is empty")
    header = lines[0].split("\t")
    need = ("idx", "label", "predict", "radius")
    missing = [c for c in need if c not in header]
    require(not missing, f"{path} has no column(s) {', '.join(missing)} (header {header}); "
            "analyze reads certify result files")
    cols = {name: header.index(name) for name in need}
    time_col = header.index("time") if "time" in header else None
    table: dict[str, list] = {name: [] for name in (*need, "time")}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            for name in ("idx", "label", "predict"):
                table[name].append(int(fields[cols[name]]))
            table["radius"].append(float(fields[cols["radius"]]))
            table["time"].append(
                parse_time(fields[time_col]) if time_col is not None else math.nan
            )
        except (ValueError, IndexError):
            raise SmoothmixError(f"{path}: line {number} is malformed: {line[:80]!r}") from None
    require(bool(table["idx"]), f"{path} holds no results")
    idx = np.asarray(table["idx"])
    require(len(np.unique(idx)) == len(idx),
            f"{path} lists some idx more than once (merge shards with `smoothmix merge`)")
    return CertificationResults(
        path=str(path),
        idx=idx,
        label=np.asarray(table["label"]),
        predict=np.asarray(table["predict"]),
        radius=np.asarray(table["radius"], dtype=float),
        time=np.asarray(table["time"], dtype=float),
    )


def parse_time(text: str) -> float:
    """Seconds from ``12.5`` (smoothmix) or ``H:MM:SS.ffffff`` / ``D day, H:MM:SS`` (the
    reference code's ``str(timedelta)``)."""
    days = 0.0
    if "day" in text:
        day_part, text = text.split(",")
        days = float(day_part.split()[0])
    parts = [float(p) for p in text.strip().split(":")]
    if len(parts) > 3:
        raise ValueError(text)
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return days * 86400 + seconds


def default_radii(results: Sequence[CertificationResults], step: float = 0.25) -> list[float]:
    """0, step, 2*step, ... up to the largest certified radius among correct examples."""
    top = max((float(r.radius[r.correct].max(initial=0.0)) for r in results), default=0.0)
    return [round(i * step, 10) for i in range(int(top // step) + 1)]


def default_labels(paths: Sequence[str]) -> list[str]:
    """File stems, or the full paths where two stems collide."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else str(p) for s, p in zip(stems, paths, strict=True)]


def format_table(
    results: Sequence[CertificationResults],
    radii: Sequence[float],
    fmt: str = "markdown",
    labels: Sequence[str] | None = None,
) -> str:
    """One row per file: number of examples, ACR and certified accuracy (%) at each radius.

    In markdown and LaTeX the best value of each column is bold (all of them on a tie of
    the printed values); CSV gives unrounded numbers for further processing.
    """
    require(fmt in FORMATS, f"unknown table format {fmt!r}; choose from {', '.join(FORMATS)}")
    require(len(results) >= 1, "no result files to tabulate")
    labels = list(labels) if labels is not None else default_labels([r.path for r in results])
    require(len(labels) == len(results),
            f"{len(labels)} labels for {len(results)} result files")
    radius_names = [f"{r:g}" for r in radii]
    if fmt == "csv":
        head = ["name", "examples", "ACR", *(f"r={r}" for r in radius_names)]
        rows = [
            [label, str(len(res)), repr(res.acr()),
             *(repr(float(a)) for a in res.certified_accuracy(radii))]
            for label, res in zip(labels, results, strict=True)
        ]
        return "\n".join(",".join(_csv_field(f) for f in row) for row in [head, *rows]) + "\n"

    values = [
        [f"{res.acr():.3f}", *(f"{100 * a:.2f}" for a in res.certified_accuracy(radii))]
        for res in results
    ]
    bold = r"\textbf{%s}" if fmt == "latex" else "**%s**"
    for col in range(len(values[0])):
        best = max(float(row[col]) for row in values)
        for row in values:
            if float(row[col]) == best:
                row[col] = bold % row[col]
    head = ["", "examples", "ACR", *(f"r = {r}" for r in radius_names)]
    body = [[label, str(len(res)), *row]
            for label, res, row in zip(labels, results, values, strict=True)]
    if fmt == "markdown":
        lines = [_md_row(head), "|" + "---|" * len(head), *(_md_row(row) for row in body)]
        return "\n".join(lines) + "\n"
    escape = str.maketrans({"_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#"})
    lines = [
        r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
        r"\toprule",
        " & ".join(["", "examples", "ACR", *(f"${r}$" for r in radius_names)]) + r" \\",
        r"\midrule",
        *(" & ".join([row[0].translate(escape), *row[1:]]) + r" \\" for row in body),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def plot_certified_accuracy(
    results: Sequence[CertificationResults],
    out_path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    max_radius: float | None = None,
) -> Path:
    """Certified accuracy against radius, one curve per file, saved to ``out_path``."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    labels = list(labels) if labels is not None else default_labels([r.path for r in results])
    require(len(labels) == len(results), f"{len(labels)} labels for {len(results)} result files")
    if max_radius is None:
        max_radius = 1.05 * max(float(r.radius.max(initial=0.0)) for r in results) or 1.0
    grid = np.linspace(0.0, max_radius, 500)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, res in zip(labels, results, strict=True):
        ax.plot(grid, res.certified_accuracy(grid), label=label)
    ax.set_xlabel(r"radius ($\ell_2$)")
    ax.set_ylabel("certified accuracy")
    ax.set_xlim(0, max_radius)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out_path)
    try:
        fig.savefig(out)
    except (OSError, ValueError) as exc:
        raise SmoothmixError(f"cannot write plot {out}: {exc}") from None
    finally:
        plt.close(fig)
    return out


def _md_row(fields: Sequence[str]) -> str:
    return "| " + " | ".join(fields) + " |"


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
