"""Certified accuracy, ACR, tables and curves from certification result files.

Reads smoothmix's files and the reference ``certify.py``'s (radii with 3 significant
digits, times like ``0:00:14.612345``). Abstentions count as wrong (docs/MATH.md §2): an example is
certified at radius r when ``predict == label`` and ``radius >= r``.

Numbers from different runs are only comparable when the runs certified the same images
with the same σ, N and α. The ``FILE.json`` companion that ``certify`` writes beside each
result file says what its run was (:class:`RunInfo`); :func:`compare_results` turns
incomplete files and differing settings into warnings and groups the comparable files, and
the table bolds "best" only within such a group. CERTIFY can never certify a radius above
σ·Φ⁻¹(α^(1/N)) (all N samples agreeing), so accuracies at larger radii are zero by
construction: tables and plots mark them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoothmix.core import _radius
from smoothmix.denoisers.compose import describe_denoiser
from smoothmix.empirical import attack_outcome
from smoothmix.errors import SmoothmixError, require
from smoothmix.storage.records import read_meta
from smoothmix.storage.shards import parse_shard, selected_indices
from smoothmix.storage.table import ATTACK_OUTCOMES, Table, parse_time, read_rows

__all__ = [
    "BEYOND_CAP", "FORMATS", "AttackResults", "CertificationResults", "Comparison",
    "DecisionResults", "RunInfo", "compare_results", "default_labels", "default_radii",
    "describe_settings", "format_attacks", "format_decisions", "format_table",
    "read_attack", "read_decisions", "read_results", "read_run_info",
    "result_kind",
]

FORMATS = ("markdown", "latex", "csv")
BEYOND_CAP = "\u2020"  # † marks accuracies at radii no run with that N can certify


@dataclass(frozen=True)
class RunInfo:
    """What the run that wrote a result file was, from its ``FILE.json`` companion."""

    kind: str
    sigma: float | None
    n: int | None
    alpha: float | None
    selected: int | None  # rows the run's settings select (its complete size)
    dataset: str | None = None
    split: str | None = None
    # How the radius was computed and the model run; absent keys (older files) mean the
    # defaults they ran with.
    bound: str = "cohen"
    precision: str = "fp32"
    noise: str = "gaussian"  # or "grid255": the sound 8-bit sampler
    # The selection's draws (a row's estimation drew samples - n0) and the evaluation
    # shortcut, whose skipped rows ran no estimation.
    n0: int | None = None
    skip_wrong: bool = False
    # The denoiser in front of the classifier (denoised smoothing), in short; "none" without.
    denoiser: str = "none"
    # The sigma the model was trained at, from the companion's info (0.6 on, where the
    # certifying run knew it; not a setting: a resume does not compare it); None if absent.
    model_sigma: float | None = None

    @property
    def radius_cap(self) -> float | None:
        """σ·Φ⁻¹(α^(1/N)): the radius CERTIFY reports when all N samples agree, the
        largest it can ever certify with this N and α."""
        if self.sigma is None or self.n is None or self.alpha is None:
            return None
        # The file's sigma as recorded: the sigma > 4 guard is for new input, and an old
        # file is analysed whatever it recorded.
        return _radius(self.n, 0, self.n, self.alpha, self.sigma, self.bound)


def read_run_info(path: str | os.PathLike) -> RunInfo | None:
    """The run behind result file ``path`` (None when it has no ``.json`` companion, as
    for the reference code's files)."""
    meta = read_meta(Path(path), required=False)
    if meta is None:
        return None
    settings = meta["settings"]
    try:
        selected = len(selected_indices(int(settings["num_examples"]), int(settings["skip"]),
                                        int(settings["max_idx"]),
                                        parse_shard(str(settings.get("shard", "0/1")))))
    except (KeyError, TypeError, ValueError, SmoothmixError):
        selected = None  # a companion without the selection: completeness is not checked

    def get(key: str, kind: type, where: Mapping[str, Any] = settings) -> Any:
        value = where.get(key)
        try:
            return kind(value) if value is not None else None
        except (TypeError, ValueError):
            raise SmoothmixError(f"{path}.json: setting {key!r} is not a {kind.__name__} "
                                 f"({value!r})") from None

    return RunInfo(kind=str(meta["kind"]), sigma=get("sigma", float), n=get("n", int),
                   alpha=get("alpha", float), selected=selected, dataset=get("dataset", str),
                   split=get("split", str), bound=get("bound", str) or "cohen",
                   precision=get("precision", str) or "fp32",
                   noise=f"grid{settings['grid']}" if settings.get("grid") else "gaussian",
                   n0=get("n0", int), skip_wrong=settings.get("skip_wrong") is True,
                   denoiser=_denoiser(settings.get("denoiser")),
                   model_sigma=get("model_sigma", float, meta.get("info") or {}))


def _denoiser(record: object) -> str:
    """A file's denoiser setting in short (:func:`smoothmix.denoisers.describe_denoiser`)."""
    return describe_denoiser(record if isinstance(record, Mapping) else None)


@dataclass(frozen=True)
class CertificationResults:
    """The rows of one result file as arrays, in file order."""

    path: str
    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    time: np.ndarray  # seconds per example
    run: RunInfo | None = None  # from the .json companion; None for reference files
    # Columns of smoothmix's own files, None where the file has none: ``samples`` (n0 and
    # the estimation's draws), and from 0.5 ``selected`` (the class the n0 step chose) and
    # ``n_label`` (the estimation's votes for the label, -1 where none ran).
    samples: np.ndarray | None = None
    selected: np.ndarray | None = None
    n_label: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def draws(self) -> np.ndarray | None:
        """The estimation's draws per row, ``samples - n0``: N where it drew all, fewer
        after an early abstain, 0 on skipped rows (None when the file does not say)."""
        if self.samples is None or self.run is None or self.run.n0 is None:
            return None
        return self.samples - self.run.n0

    def p_label(self) -> np.ndarray:
        """Per row, the point estimate n_label / draws of p_y = P(f(x + δ) = y), the base
        classifier's accuracy on noisy copies of the image (the metric Sun et al. 2024
        recommend beside ACR); NaN where no estimation ran (n_label -1). After an early
        abstain the estimate is over the draws made before the stop."""
        draws = self.draws
        require(self.n_label is not None and draws is not None
                and not (self.run is not None and self.run.skip_wrong),
                f"{self.path} {self._without_n_label()}; recertify with smoothmix >= 0.5")
        assert self.n_label is not None and draws is not None
        known = (self.n_label >= 0) & (draws > 0)
        return np.where(known, self.n_label / np.maximum(draws, 1), np.nan)

    def _without_n_label(self) -> str:
        """Why this file cannot give p_y."""
        if self.run is None and self.n_label is None:
            return "was written by the reference code (no .json companion): no n_label column"
        if self.run is None:
            return "has lost its .json companion, which records the n0 draws to subtract"
        if self.run.skip_wrong:
            return ("was certified with --skip-wrong: its skipped rows ran no estimation, "
                    "so it has no n_label column for them (rerun without --skip-wrong)")
        return "was written before smoothmix 0.5 and has no n_label column"

    @property
    def complete(self) -> bool:
        """False when the file has fewer rows than its run selected (an interrupted run)."""
        return self.run is None or self.run.selected is None or len(self) >= self.run.selected

    @property
    def radius_cap(self) -> float | None:
        return self.run.radius_cap if self.run is not None else None

    @property
    def correct(self) -> np.ndarray:
        """Whether the smoothed classifier returned the true label (abstain = -1 is wrong)."""
        return self.predict == self.label

    def certified_accuracy(self, radii: Sequence[float] | np.ndarray) -> np.ndarray:
        """Fraction of examples with predict == label and radius >= r, for each r."""
        r = np.asarray(radii, dtype=float)
        return (self.correct[:, None] & (self.radius[:, None] >= r[None, :])).mean(axis=0)

    def acr(self) -> float:
        """Average certified radius (Zhai et al. 2020): mean of radius * 1[predict == label]."""
        return float(np.where(self.correct, self.radius, 0.0).mean())


def read_results(path: str | os.PathLike) -> CertificationResults:
    """Read a certify result file (tab-separated, header ``idx label predict radius ...``)
    into :class:`CertificationResults`: per-row arrays, ``acr()``, ``certified_accuracy(radii)``,
    ``p_label()`` and ``complete`` (whether every row its run selected is there).

    Files of every smoothmix release and of the reference code (no ``.json`` companion) are
    read; a ``certify --radii`` decisions file, or a file without the columns above, is a
    one-line :class:`SmoothmixError` (decisions are read by ``read_decisions``).
    """
    path = Path(path)
    header = _header_of(path)
    require("at_radius" not in header and "decision" not in header,
            f"{path} is a `certify --radii` decisions file (columns tested, at_radius, "
            "decision), not a certify result file; read it with read_decisions")
    need = ("idx", "label", "predict", "radius")
    missing = [c for c in need if c not in header]
    require(not missing, f"{path} has no column(s) {', '.join(missing)} (header {header}); "
            "analyze reads certify result files")
    rows = _read_table(path, need).records()
    idx = np.asarray([int(r["idx"]) for r in rows])
    require(len(np.unique(idx)) == len(idx),
            f"{path} lists some idx more than once (merge shards with `smoothmix merge`)")
    return CertificationResults(
        path=str(path),
        idx=idx,
        label=np.asarray([int(r["label"]) for r in rows]),
        predict=np.asarray([int(r["predict"]) for r in rows]),
        radius=np.asarray([float(r["radius"]) for r in rows], dtype=float),
        time=np.asarray([parse_time(r["time"]) if "time" in r else math.nan for r in rows],
                        dtype=float),
        run=read_run_info(path),
        **{name: np.asarray([int(float(r[name])) for r in rows], dtype=np.int64)
           if name in header else None for name in ("samples", "selected", "n_label")},
    )


def default_radii(results: Sequence[CertificationResults], step: float = 0.25) -> list[float]:
    """0, step, 2*step, ... up to the largest certified radius among correct examples."""
    top = max((float(r.radius[r.correct].max(initial=0.0)) for r in results), default=0.0)
    return [round(i * step, 10) for i in range(int(top // step) + 1)]


def default_labels(paths: Sequence[str]) -> list[str]:
    """File stems, or the full paths where two stems collide."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else str(p) for s, p in zip(stems, paths, strict=True)]


@dataclass(frozen=True)
class Comparison:
    """Which files can be compared: ``groups[i]`` is file i's set of comparable files
    (same σ, N, α, dataset split and certified images); ``warnings`` say what differs."""

    groups: list[int]
    warnings: list[str]

    @property
    def num_groups(self) -> int:
        return len(set(self.groups))


def compare_results(results: Sequence[CertificationResults],
                    labels: Sequence[str] | None = None) -> Comparison:
    """Warnings for incomplete files and for files that differ in σ, N, α or images, and
    the comparable groups (numbered from 0 in order of first appearance)."""
    labels = _labels(results, labels)
    warnings = []
    for label, res in zip(labels, results, strict=True):
        if not res.complete:
            assert res.run is not None and res.run.selected is not None
            warnings.append(f"{label} is incomplete: {len(res)} of the {res.run.selected} rows "
                            "its run selected (rerun its certify command to finish it)")
    if len(results) > 1:
        unknown = [label for label, res in zip(labels, results, strict=True) if res.run is None]
        if unknown:
            warnings.append(f"{', '.join(unknown)} {'has' if len(unknown) == 1 else 'have'} no "
                            ".json companion, so σ, N and α cannot be checked")
        for what, get in (("σ", lambda r: r.sigma), ("N", lambda r: r.n),
                          ("α", lambda r: r.alpha),
                          ("dataset split", lambda r: (r.dataset, r.split)),
                          ("bound (radius formula)", lambda r: r.bound),
                          ("precision (the classifier certified)", lambda r: r.precision),
                          ("noise (float or sound 8-bit grid)", lambda r: r.noise)):
            values = [get(res.run) if res.run is not None else None for res in results]
            known = {v for v in values if v is not None}
            if len(known) > 1:
                warnings.append(f"the files differ in {what}: " + ", ".join(
                    f"{label} {_setting(v)}"
                    for label, v in zip(labels, values, strict=True)))
        images = [frozenset(res.idx.tolist()) for res in results]
        if len(set(images)) > 1:
            warnings.append("the files certify different images: " + ", ".join(
                f"{label} {len(res)}" for label, res in zip(labels, results, strict=True)))
    keys = [_comparison_key(res) for res in results]
    first: dict[tuple, int] = {}
    groups = [first.setdefault(key, len(first)) for key in keys]
    return Comparison(groups=groups, warnings=warnings)


def _comparison_key(res: CertificationResults) -> tuple:
    run = res.run
    settings = (run.sigma, run.n, run.alpha, run.dataset, run.split, run.bound,
                run.precision, run.noise) if run else (None,) * 8
    return (*settings, frozenset(res.idx.tolist()))


def _setting(value: object) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, tuple):
        return "/".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_table(
    results: Sequence[CertificationResults],
    radii: Sequence[float],
    fmt: str = "markdown",
    labels: Sequence[str] | None = None,
) -> str:
    """One row per file: σ, N, α, images, ACR and certified accuracy (%) at each radius.

    Every format gives certified accuracy in percent (CSV unrounded, for further
    processing). In markdown and LaTeX the best value of each column is bold among
    comparable files only (:func:`compare_results`; all of them on a tie of the printed
    values); with more than one group a ``set`` column names each file's group. An
    incomplete file shows ``found of selected`` images; accuracies at radii beyond a file's
    cap σ·Φ⁻¹(α^(1/N)) carry a † and a footnote.
    """
    require(fmt in FORMATS, f"unknown table format {fmt!r}; choose from {', '.join(FORMATS)}")
    require(len(results) >= 1, "no result files to tabulate")
    labels = _labels(results, labels)
    comparison = compare_results(results, labels)
    beyond = [[cap is not None and r > cap for r in radii]
              for cap in (res.radius_cap for res in results)]
    if fmt == "csv":
        return _csv_table(results, radii, labels, comparison)
    latex = fmt == "latex"
    head, body = _table_body(results, radii, labels, comparison, beyond, latex)
    notes = _table_notes(results, labels, beyond, comparison.num_groups > 1, latex)
    return _latex_table(head, body, notes) if latex else _markdown_table(head, body, notes)


def _csv_table(results: Sequence[CertificationResults], radii: Sequence[float],
               labels: Sequence[str], comparison: Comparison) -> str:
    """Unrounded values for further processing, one row per file."""
    head = ["name", "sigma", "N", "alpha", "images", "selected", "set", "radius_cap",
            "ACR", *(f"r={r:g}" for r in radii)]
    rows = []
    for label, res, group in zip(labels, results, comparison.groups, strict=True):
        run = res.run
        rows.append([
            label, *(_csv_setting(v) for v in ((run.sigma, run.n, run.alpha) if run
                                                else (None,) * 3)),
            str(len(res)), _csv_setting(run.selected if run else None), _set_name(group),
            _csv_setting(res.radius_cap), repr(res.acr()),
            *(repr(100 * float(a)) for a in res.certified_accuracy(radii)),
        ])
    return "\n".join(",".join(_csv_field(f) for f in row) for row in [head, *rows]) + "\n"


def _bold_cells(results: Sequence[CertificationResults], radii: Sequence[float],
                comparison: Comparison, beyond: list[list[bool]], latex: bool) -> list[list[str]]:
    """ACR and accuracies as printed, the best of each column bold within a comparable set
    (radii beyond a file's cap take no part) and a dagger beyond the cap."""
    values = [[res.acr(), *(100 * res.certified_accuracy(radii))] for res in results]
    cells = [[f"{row[0]:.3f}", *(f"{v:.2f}" for v in row[1:])] for row in values]
    bold = r"\textbf{%s}" if latex else "**%s**"
    for group in set(comparison.groups):
        members = [i for i, g in enumerate(comparison.groups) if g == group]
        for col in range(len(cells[0]) if len(members) > 1 else 0):
            live = [i for i in members if col == 0 or not beyond[i][col - 1]]
            best = max((float(cells[i][col]) for i in live), default=None)
            for i in live:
                if float(cells[i][col]) == best:
                    cells[i][col] = bold % cells[i][col]
    dagger = r"$^\dagger$" if latex else BEYOND_CAP
    for i, row in enumerate(cells):
        for col, out in enumerate(beyond[i], start=1):
            if out:
                row[col] += dagger
    return cells


def _table_body(results: Sequence[CertificationResults], radii: Sequence[float],
                labels: Sequence[str], comparison: Comparison, beyond: list[list[bool]],
                latex: bool) -> tuple[list[str], list[list[str]]]:
    """Head and rows of the markdown and LaTeX tables."""
    sets = comparison.num_groups > 1
    cells = _bold_cells(results, radii, comparison, beyond, latex)
    setting_head = [r"$\sigma$", "$N$", r"$\alpha$"] if latex else ["σ", "N", "α"]
    extra = _extra_settings(results)  # bound / precision, where a file is not the default
    head = ["", *(["set"] if sets else []), *setting_head, *extra, "images", "ACR",
            *((f"${r:g}$" if latex else f"r = {r:g}") for r in radii)]
    body = []
    for label, res, group, row in zip(labels, results, comparison.groups, cells, strict=True):
        run = res.run
        images = str(len(res)) if res.complete else \
            f"{len(res)} of {run.selected if run else '?'} (incomplete)"
        settings = [_setting(v) if v is not None else "?"
                    for v in ((run.sigma, run.n, run.alpha) if run else (None,) * 3)]
        body.append([label, *([_set_name(group)] if sets else []), *settings,
                     *(str(getattr(run, k)) if run else "?" for k in extra), images, *row])
    return head, body


def markdown_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table of string cells: the header, its rule and the rows, without a final
    newline (the certification tables here and ``reproduce``'s report)."""
    return "\n".join([_md_row(head), "|" + "---|" * len(head), *(_md_row(row) for row in body)])


def _markdown_table(head: list[str], body: list[list[str]], notes: list[str]) -> str:
    return "\n".join([markdown_table(head, body)] + ([""] + notes if notes else [])) + "\n"


def _latex_table(head: list[str], body: list[list[str]], notes: list[str]) -> str:
    escape = str.maketrans({"_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#"})
    lines = [
        r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
        *(" & ".join([row[0].translate(escape), *row[1:]]) + r" \\" for row in body),
        r"\bottomrule",
        *(fr"\multicolumn{{{len(head)}}}{{l}}{{\footnotesize {note}}} \\" for note in notes),
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def _extra_settings(results: Sequence[CertificationResults]) -> list[str]:
    """``bound``, ``precision``, ``noise`` and ``denoiser`` columns, shown as soon as one
    file is not cohen / fp32 / gaussian / without a denoiser."""
    defaults = {"bound": "cohen", "precision": "fp32", "noise": "gaussian", "denoiser": "none"}
    return [k for k, v in defaults.items()
            if any(res.run is not None and getattr(res.run, k) != v for res in results)]


def _table_notes(results: Sequence[CertificationResults], labels: Sequence[str],
                 beyond: list[list[bool]], sets: bool, latex: bool = False) -> list[str]:
    """Footnotes of a table (in LaTeX: maths in math mode, labels escaped)."""
    sigma, n, alpha, cap, dagger = (
        (r"$\sigma$", "$N$", r"$\alpha$", r"$\sigma\Phi^{-1}(\alpha^{1/N})$", r"$^\dagger$")
        if latex else ("σ", "N", "α", "σ·Φ⁻¹(α^(1/N))", BEYOND_CAP))
    escape = str.maketrans({"_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#"} if latex else {})
    notes = []
    if sets:
        notes.append(f"Bold: best within a set of comparable files (same {sigma}, {n}, {alpha} "
                     "and images).")
    capped = [f"{label.translate(escape)} {res.radius_cap:.3g}"
              for label, res, out in zip(labels, results, beyond, strict=True) if any(out)]
    if capped:
        notes.append(f"{dagger} radius beyond the file's cap {cap} ({', '.join(capped)}): no "
                     f"radius there can be certified with this {n} and {alpha}, so the 0 is an "
                     f"artefact of {n}, not of the model.")
    return notes


def _set_name(group: int) -> str:
    return chr(ord("A") + group) if group < 26 else str(group + 1)


def _csv_setting(value: object) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _labels(results: Sequence[CertificationResults], labels: Sequence[str] | None) -> list[str]:
    labels = list(labels) if labels is not None else default_labels([r.path for r in results])
    require(len(labels) == len(results),
            f"{len(labels)} labels for {len(results)} result files")
    return labels


def describe_settings(results: Sequence[CertificationResults]) -> str:
    """``σ = 0.5, N = 10000, α = 0.001, 100 images`` when the files share them (each part
    shown only when shared and known): the caption of a plot."""
    parts = []
    for name, get in (("σ", lambda r: r.sigma), ("N", lambda r: r.n),
                      ("α", lambda r: r.alpha)):
        values = {get(res.run) if res.run is not None else None for res in results}
        if len(values) == 1 and None not in values:
            parts.append(f"{name} = {_setting(values.pop())}")
    sizes = {len(res) for res in results}
    if len({frozenset(res.idx.tolist()) for res in results}) == 1:
        parts.append(f"{sizes.pop()} images")
    return ", ".join(parts)


def _md_row(fields: Sequence[str]) -> str:
    return "| " + " | ".join(fields) + " |"


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


# ------------------------------------------------------- decisions at radii, attacks


def result_kind(path: str | os.PathLike) -> str:
    """"certify", "decide" (``certify --radii``) or "attack" (``smoothmix attack``), from
    the header of result file ``path`` (reference files are certify files)."""
    header = _header_of(path)
    if "decision" in header:
        return "decide"
    return "attack" if "adv_predict" in header else "certify"


@dataclass(frozen=True)
class DecisionResults:
    """A ``certify --radii`` file: per example and radius, the decision and its cost."""

    path: str
    radii: np.ndarray  # sorted
    idx: np.ndarray
    certified: np.ndarray  # bool, examples x radii: certified for the label's class
    samples: np.ndarray  # examples x radii: samples drawn when the radius was decided
    undecided: np.ndarray  # bool, examples x radii: left undecided at the sample cap
    run: RunInfo | None = None  # from the .json companion; None without one (0.2 files)

    @property
    def complete(self) -> bool:
        """False when fewer examples are decided than the run selected (an interrupted run)."""
        return self.run is None or self.run.selected is None or len(self.idx) >= self.run.selected

    def certified_accuracy(self) -> np.ndarray:
        """Fraction of examples certified at each radius (undecided = not certified)."""
        return self.certified.mean(axis=0)

    def mean_samples(self) -> np.ndarray:
        return self.samples.mean(axis=0)


def _header_of(path: str | os.PathLike) -> list[str]:
    """The header of result file ``path``; one line when it is missing, unreadable or empty."""
    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\n")
    except FileNotFoundError:
        raise SmoothmixError(f"result file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SmoothmixError(f"cannot read result file {path}: {exc}") from None
    require(bool(header), f"{path} is empty")
    return header.split("\t")


def _read_table(path: str | os.PathLike, need: Sequence[str]) -> Table:
    """The rows of a result file, parsed by the one row parser (:mod:`smoothmix.storage`);
    a malformed row anywhere is an error naming its line."""
    header = _header_of(path)
    missing = [c for c in need if c not in header]
    require(not missing, f"{path} has no column(s) {', '.join(missing)}")
    table = read_rows(path, analysis=True)
    require(bool(table.lines), f"{path} holds no results")
    return table


# The column names of ``certify --radii`` files before 0.3 (they reused certify's names).
_LEGACY_DECISION_NAMES = {"predict": "tested", "radius": "at_radius",
                          "correct": "certified_correct"}


def read_decisions(path: str | os.PathLike) -> DecisionResults:
    """Read a ``certify --radii`` file (one row per example and radius; files of smoothmix
    0.2, whose columns reused certify's names, too) into :class:`DecisionResults`, with
    ``complete`` (whether every example its run selected is decided)."""
    if "at_radius" not in _header_of(path):
        rows = [{_LEGACY_DECISION_NAMES.get(k, k): v for k, v in row.items()}
                for row in _read_table(path, ("idx", "radius", "decision", "correct",
                                              "samples")).records()]
    else:
        rows = _read_table(path, ("idx", "at_radius", "decision", "certified_correct",
                                  "samples")).records()
    try:
        radii = sorted({float(r["at_radius"]) for r in rows})
        idx = sorted({int(r["idx"]) for r in rows})
        cell = {(int(r["idx"]), float(r["at_radius"])):
                (r["certified_correct"] == "1", int(r["samples"]), r["decision"] == "undecided")
                for r in rows}
    except ValueError:
        raise SmoothmixError(f"{path} has a malformed row") from None
    require(len(cell) == len(rows) == len(idx) * len(radii),
            f"{path}: every example needs exactly one row per radius")
    grid = np.array([[cell[i, r] for r in radii] for i in idx], dtype=float)  # (.., .., 3)
    certified, samples, undecided = grid[..., 0] == 1, grid[..., 1], grid[..., 2] == 1
    return DecisionResults(str(path), np.array(radii), np.array(idx), certified, samples,
                           undecided, read_run_info(path))


@dataclass(frozen=True)
class AttackResults:
    """A ``smoothmix attack`` file: PREDICT at x and at the attacked point.

    ``outcome`` is what PREDICT did at the attacked point: ``kept`` the label,
    ``abstained``, or ``changed`` to another class (read from ``adv_outcome``, or worked out
    from ``adv_predict`` in files of smoothmix 0.1.0, whose last column was ``robust``).
    """

    path: str
    epsilon: float | None  # from the .json companion
    idx: np.ndarray
    correct: np.ndarray  # PREDICT at x returns the label
    outcome: np.ndarray  # "kept" / "abstained" / "changed", at the attacked point
    distance: np.ndarray
    alpha: float | None = None  # PREDICT's, from the .json companion

    def rate(self, outcome: str) -> float:
        """Fraction of the examples with this outcome at the attacked point."""
        require(outcome in ATTACK_OUTCOMES, f"unknown attack outcome {outcome!r}")
        return float((self.outcome == outcome).mean())

    @property
    def robust(self) -> np.ndarray:
        """PREDICT returned the label at x and at the attacked point (the 0.1.0 column).
        Certified accuracy at epsilon is *not* a lower bound on its mean: PREDICT may
        abstain near a tie where g is provably constant (see :func:`format_attacks`)."""
        return self.correct & (self.outcome == "kept")

    def robust_accuracy(self) -> float:
        return float(self.robust.mean())


def read_attack(path: str | os.PathLike) -> AttackResults:
    """Read a ``smoothmix attack`` file (either format)."""
    rows = _read_table(path, ("idx", "label", "correct", "adv_predict", "distance")).records()
    meta = read_meta(Path(path), required=False)
    settings = meta["settings"] if meta else {}
    epsilon, alpha = settings.get("epsilon"), settings.get("alpha")
    try:
        outcome = [r["adv_outcome"] if "adv_outcome" in r
                   else attack_outcome(int(r["adv_predict"]), int(r["label"])) for r in rows]
        results = AttackResults(
            str(path), None if epsilon is None else float(epsilon),
            np.array([int(r["idx"]) for r in rows]),
            np.array([r["correct"] == "1" for r in rows]),
            np.array(outcome),
            np.array([float(r["distance"]) for r in rows]),
            None if alpha is None else float(alpha))
    except (ValueError, TypeError):
        raise SmoothmixError(f"{path} has a malformed row") from None
    require(all(o in ATTACK_OUTCOMES for o in outcome),
            f"{path} has an unknown adv_outcome (not one of {', '.join(ATTACK_OUTCOMES)})")
    return results


def format_decisions(results: Sequence[DecisionResults], fmt: str = "markdown",
                     labels: Sequence[str] | None = None) -> str:
    """Certified accuracy (%) and mean samples per decision at each file's radii."""
    require(fmt in ("markdown", "csv"), f"decision tables come as markdown or csv, not {fmt}")
    names = labels or default_labels([r.path for r in results])
    head = ["name", "images", "radius", "certified accuracy (%)", "mean samples"]
    body = [[name, str(len(res.idx)), _setting(float(r)), f"{100 * acc:.2f}", f"{mean:.0f}"]
            for name, res in zip(names, results, strict=True)
            for r, acc, mean in zip(res.radii, res.certified_accuracy(), res.mean_samples(),
                                    strict=True)]
    return _simple_table(head, body, fmt)


def format_attacks(attacks: Sequence[AttackResults],
                   certified: Sequence[CertificationResults] = (), fmt: str = "markdown",
                   labels: Sequence[str] | None = None) -> str:
    """What PREDICT did at the attacked point, per attack file: the label kept, an
    abstention, or another class (% of the images), beside each certify file's certified
    accuracy at epsilon on the same images and the share of those certified images whose
    attacked point got another class, against its bound.

    The theorem bounds only that share: where CERTIFY (level alpha_C) certified the label
    at a radius >= epsilon, PREDICT (level alpha_P) at a given point within epsilon returns
    another class with probability <= alpha_C + alpha_P per image. Abstentions are bounded
    by nothing (near a tie PREDICT abstains although g is provably constant), so certified
    accuracy at epsilon is not a lower bound on the "kept" share (markdown adds this note).
    """
    require(fmt in ("markdown", "csv"), f"attack tables come as markdown or csv, not {fmt}")
    names = labels or default_labels([a.path for a in attacks])
    cert_names = default_labels([c.path for c in certified])
    head = ["name", "images", "epsilon", "clean accuracy (%)", "kept label at attack (%)",
            "abstained at attack (%)", "changed class at attack (%)"]
    for n in cert_names:
        head += [f"certified at epsilon: {n} (%)", f"changed among certified: {n} (%)",
                 f"bound alpha_C + alpha_P: {n} (%)"]
    body = []
    for name, att in zip(names, attacks, strict=True):
        require(att.epsilon is not None, f"{att.path} has no .json companion naming epsilon")
        row = [name, str(len(att.idx)), _setting(att.epsilon),
               f"{100 * att.correct.mean():.2f}",
               *(f"{100 * att.rate(o):.2f}" for o in ATTACK_OUTCOMES)]
        for cert in certified:
            at = {int(i): k for k, i in enumerate(cert.idx)}
            missing = [int(i) for i in att.idx if int(i) not in at]
            require(not missing, f"{cert.path} lacks idx {missing[:3]} of {att.path}")
            rows = np.array([at[int(i)] for i in att.idx])
            ok = cert.correct[rows] & (cert.radius[rows] >= att.epsilon)
            changed = att.outcome[ok] == "changed"
            cert_alpha = cert.run.alpha if cert.run is not None else None
            bound = (None if cert_alpha is None or att.alpha is None
                     else 100 * (cert_alpha + att.alpha))
            row += [f"{100 * ok.mean():.2f}",
                    f"{100 * changed.mean():.2f}" if ok.any() else "",
                    "" if bound is None else f"{bound:.2f}"]
        body.append(row)
    table = _simple_table(head, body, fmt)
    if fmt == "markdown":
        table += ("\nkept / abstained / changed: what PREDICT returned at the attacked point "
                  "(the label, no class, another class). Where CERTIFY certified the label "
                  "at a radius >= epsilon, another class has probability <= alpha_C + "
                  "alpha_P per image (CERTIFY's plus PREDICT's alpha; blank where a file has "
                  "no .json companion); abstentions are not bounded, so certified accuracy "
                  "at epsilon is not a lower bound on the kept share.\n")
    return table


def _simple_table(head: Sequence[str], body: Sequence[Sequence[str]], fmt: str) -> str:
    if fmt == "csv":
        return "".join(",".join(_csv_field(f) for f in row) + "\n" for row in [head, *body])
    lines = [_md_row(head), _md_row(["---"] * len(head)), *(_md_row(row) for row in body)]
    return "\n".join(lines) + "\n"


def __getattr__(name: str) -> Any:
    # The plot lives in smoothmix.plots (matplotlib loads only when a plot is drawn); it is
    # still importable from here, where it was before 0.5.
    if name == "plot_certified_accuracy":
        from smoothmix.plots import plot_certified_accuracy

        return plot_certified_accuracy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
