"""The report of a ``reproduce`` run: ``table.md`` (ours beside the published values),
``curves.png`` (the paper's curves dashed beside ours; a reduced budget says so) and
``summary.json``, from the certification and decision files. Every markdown table is
rendered by :func:`smoothmix.analysis.markdown_table`; the terminal gets a narrow table
(:func:`format_terminal`: ours and the paper's, one value per cell)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothmix.reproduce.budget import Budget, which_images
from smoothmix.reproduce.experiments import ALPHA, FULL_N, N0, Experiment

TABLE_NAME = "table.md"
PLOT_NAME = "curves.png"
SUMMARY_NAME = "summary.json"
TERMINAL_WIDTH = 100  # the terminal's table and its notes fit this many characters


def write_report(exp: Experiment, out: Path, methods: list[str], budget: Budget,
                 timings: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """``table.md``, ``curves.png`` and ``summary.json`` from the certification files."""
    from smoothmix.analysis import read_decisions, read_results
    from smoothmix.core import radius_from_counts
    from smoothmix.plots import paper_curves, plot_certified_accuracy
    from smoothmix.storage import atomic_write
    from smoothmix.training.callbacks import LOG_NAME

    results = [read_results(out / f"certify_{m}.tsv") for m in methods]
    before = _rows_before(out / SUMMARY_NAME)
    radii = list(exp.radii)
    skip = budget.skip or exp.skip
    rows = []
    for m, res in zip(methods, results, strict=True):
        pub = exp.published.get(m) or {}
        same = _published_subset(pub, skip, budget.max_idx, exp)
        ours_acc = [round(100 * float(a), 4) for a in res.certified_accuracy(radii)]
        row = {
            "method": m, "preset": exp.preset_name(m), "examples": len(res),
            "acr": res.acr(), "certified_accuracy": ours_acc,
            "published_acr": pub.get("acr"), "published_certified_accuracy":
            pub.get("certified"), "published_note": pub.get("note"),
            "published_same_images": same is not None,
            "published_same_images_acr": (same or {}).get("acr"),
            "published_same_images_acr_range": (same or {}).get("acr_range"),
            "published_same_images_certified_accuracy": (same or {}).get("certified"),
            "published_same_images_certified_range": (same or {}).get("certified_range"),
            "published_certified_range": pub.get("certified_range"),
            # This invocation's wall time per stage (a resumed run counts only its part)...
            **(timings or {}).get(m, {}),
            # ...summed over every invocation that wrote this summary (the decisions' rows
            # share a pool, so their files cannot give it; a rerun that finds a stage done
            # adds its few tenths)...
            "stage_seconds_all_invocations": stage_seconds_all_invocations(
                before.get(m), (timings or {}).get(m, {})),
            # ...and the whole run's, as its files record it across every resume.
            **_recorded_seconds(out / m / LOG_NAME, res),
        }
        decide = out / f"decide_{m}.tsv"
        if budget.decide_radii is not None and decide.exists():
            dec = read_decisions(decide)
            row["decisions"] = {"examples": len(dec.idx), "radii": dec.radii.tolist(),
                                "certified_accuracy": [round(100 * float(a), 4)
                                                       for a in dec.certified_accuracy()],
                                "mean_samples": dec.mean_samples().tolist()}
        rows.append(row)
    n = budget.n or FULL_N
    cap = radius_from_counts(n, 0, n, ALPHA, exp.sigma, budget.bound or "cohen") or 0.0
    table = _format(exp, rows, budget, cap)
    atomic_write(out / TABLE_NAME, table)
    plot_certified_accuracy(results, out / PLOT_NAME, labels=methods,
                            published=paper_curves(results, methods, exp.name)[0],
                            note=_plot_note(budget))
    summary = {"experiment": exp.name, "dataset": exp.dataset, "sigma": exp.sigma,
               "budget": dataclasses.asdict(budget), "budget_line": budget.describe(exp),
               "full_budget": budget.is_full(), "n0": N0, "n": budget.n or FULL_N,
               "alpha": ALPHA, "radius_cap": cap, "radii": radii, "rows": rows, "table": table}
    atomic_write(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    return summary


def _plot_note(budget: Budget) -> str | None:
    """The line a reduced budget's plot carries under its title (None at the full budget)."""
    if budget.is_full():
        return None
    spent = ([f"{budget.epochs} epoch{'s' if budget.epochs != 1 else ''}"] if budget.epochs
             else []) + ([f"N={budget.n:,}"] if budget.n else [])
    return "reduced budget, not the paper's" + (f": {', '.join(spent)}" if spent else "")


def format_terminal(exp: Experiment, rows: list[dict[str, Any]], cap: float,
                    table_path: str | Path = TABLE_NAME) -> str:
    """The table for a terminal, at most :data:`TERMINAL_WIDTH` characters wide: per method
    a line of ours and a line of the paper's, one value per cell (ACR, certified accuracy
    at each radius), no differences beyond the radius cap. The budget paragraph is said at
    the start of the run; the wide table (differences, seed ranges, decisions) is
    ``table.md``."""
    from smoothmix.analysis import BEYOND_CAP

    head = ["", "", "ACR", *(f"r={r:g}{BEYOND_CAP if r > cap else ''}" for r in exp.radii)]
    body, starred = [], False
    for row in rows:
        acr, acc, star = _published_values(exp, row)
        star &= acr is not None or any(a is not None for a in acc)
        starred |= star
        body.append([row["method"], "ours", f"{row['acr']:.3f}",
                     *(f"{a:.2f}" for a in row["certified_accuracy"])])
        body.append(["", "paper" + ("*" if star else ""), _value(acr, 3),
                     *(_value(a, 2) for a in acc)])
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    table = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()
             for line in [head, *body]]
    notes = [f"{exp.name} (sigma = {exp.sigma:g}): ACR and certified accuracy (%) at radius r, "
             f"ours on {rows[0]['examples'] if rows else 0} images and the paper's. "
             f"Differences, the authors' seed ranges and the budget: {table_path}."]
    if starred:
        notes.append("* the paper's value on the full test set (10,000 images).")
    if any(r > cap for r in exp.radii):
        notes.append(f"{BEYOND_CAP} beyond the radius cap {cap:.3f} of this N: our 0 there "
                     "is an artefact of N, not of the model.")
    wrapped = [line for note in notes for line in textwrap.wrap(note, TERMINAL_WIDTH)]
    return "\n".join([*wrapped, "", *table])


def _published_values(exp: Experiment, row: dict[str, Any]
                      ) -> tuple[float | None, list[float | None], bool]:
    """The paper's ACR and certified accuracies for ``row``: on the same images where the
    authors' logs give them, else the full test set's (then True)."""
    same = row["published_same_images"]
    acr = row["published_same_images_acr"] if same else row["published_acr"]
    acc = row["published_same_images_certified_accuracy"] if same else None
    if acc is None:
        full = row["published_certified_accuracy"] or [None] * len(exp.radii)
        return acr, list(full), not same or any(a is not None for a in full)
    return acr, list(acc), False


def _value(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


STAGES = ("train", "certify", "decide")


def _rows_before(summary: Path) -> dict[str, dict[str, Any]]:
    """The rows of the summary an earlier invocation wrote, by method ({} if none or
    unreadable: a summary is a report, rewritten from the result files, never an input
    whose loss loses a result)."""
    try:
        rows = json.loads(summary.read_text())["rows"]
        return {row["method"]: row for row in rows}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def stage_seconds_all_invocations(before: dict[str, Any] | None,
                                  now: dict[str, float]) -> dict[str, float]:
    """Each stage's wall seconds over every invocation: the earlier summary's row
    ``before`` (its totals, or for a summary written before totals were kept, its last
    invocation's seconds) plus this invocation's ``now``."""
    before = before or {}
    kept = before.get("stage_seconds_all_invocations")
    if not isinstance(kept, dict):
        kept = {s: before.get(f"{s}_seconds") for s in STAGES}
    total = {s: float(kept.get(s) or 0.0) + float(now.get(f"{s}_seconds", 0.0))
             for s in STAGES}
    return {s: round(v, 1) for s, v in total.items() if v or f"{s}_seconds" in now}


def _recorded_seconds(log_csv: Path, res: Any) -> dict[str, float]:
    """Training time summed over every epoch of ``log.csv`` and CERTIFY time summed over the
    rows (CERTIFY runs one image at a time, so the rows' times add up to its wall time;
    decisions share a pool, so their rows' times do not and are left out)."""
    recorded: dict[str, float] = {}
    if log_csv.is_file():
        with open(log_csv, newline="") as f:
            epochs = [float(r["time_s"]) for r in csv.DictReader(f) if r.get("time_s")]
        recorded["train_epochs_seconds_total"] = round(sum(epochs), 1)
    times = [float(t) for t in res.time if not math.isnan(t)]
    if times:
        recorded["certify_rows_seconds_total"] = round(sum(times), 1)
    return recorded


def _published_subset(pub: dict[str, Any], skip: int, max_idx: int | None,
                      exp: Experiment) -> dict[str, Any] | None:
    """The published values on exactly the images certified (every skip-th from idx 0),
    from the authors' per-image logs; the full-set values when every image is certified;
    None when the logs' figures for that subset are not at hand."""
    if max_idx is not None:
        return None
    if skip == exp.skip:
        if pub.get("acr") is None:
            return None
        return {key: pub.get(key) for key in ("acr", "acr_range", "certified",
                                              "certified_range")}
    return (pub.get("subsets") or {}).get(str(skip))


def _format(exp: Experiment, rows: list[dict[str, Any]], budget: Budget, cap: float) -> str:
    """Markdown: ours, then (published, difference) where a published value exists; the
    published value is the one on the same images where the authors' logs give it, else
    the full test set's (marked *). Radii beyond ``cap`` (the largest radius CERTIFY can
    report with this N) are marked, since a 0 there is an artefact of N, not of the model.
    A second table gives the KT decisions' certified accuracy, when they were run."""
    from smoothmix.analysis import BEYOND_CAP

    lines, starred = _certify_table(exp, rows, budget, cap)
    if starred:
        lines += ["", "* published value of the full test set (10,000 images); subsets "
                  "starting at idx 0 are harder than the whole set, so expect ours lower."]
    if any(r > cap for r in exp.radii):
        lines += ["", f"{BEYOND_CAP} beyond the radius cap = {cap:.3f} of N = "
                  f"{budget.n or FULL_N:,}: no radius there can be certified with this N, so "
                  "our 0 is an artefact of N, not of the model."]
    lines += _outside_seeds([
        _Spread(row["method"], row["acr"], row["published_same_images_acr_range"],
                list(exp.radii), row["certified_accuracy"],
                row["published_same_images_certified_range"])
        for row in rows if row["published_same_images"]], "CERTIFY")
    lines += _decisions_table(exp, rows, budget)
    if _decided_all(budget):  # the published full-set ranges are on the same images
        lines += _outside_seeds([
            _Spread(row["method"], None, None, row["decisions"]["radii"],
                    row["decisions"]["certified_accuracy"],
                    _ranges_at(exp.radii, row["decisions"]["radii"],
                               row["published_certified_range"]))
            for row in rows if "decisions" in row],
            "KT decisions (an image undecided at the cap counts as not certified)")
    return "\n".join(lines) + "\n"


@dataclass
class _Spread:
    """One method's values beside the authors' 5-seed [min, max] on the same images."""

    method: str
    acr: float | None
    acr_range: list[float] | None
    radii: list[float]
    certified: list[float]
    certified_range: list[list[float]] | None


def _ranges_at(radii: Sequence[float], asked: Sequence[float],
               ranges: list[list[float]] | None) -> list[list[float]] | None:
    """The published [min, max] at each radius in ``asked`` (from those at ``radii``)."""
    if ranges is None:
        return None
    at = dict(zip(radii, ranges, strict=False))
    return [at[r] for r in asked] if all(r in at for r in asked) else None


def _outside_seeds(spreads: list[_Spread], what: str) -> list[str]:
    """One line naming every value outside the authors' 5-seed [min, max] on the same
    images (where their logs give it): a difference inside the seeds' spread is what another
    training seed does; one outside it asks for a reason."""
    notes, checked = [], False
    for sp in spreads:
        if sp.acr is not None and sp.acr_range is not None:
            checked = True
            if not sp.acr_range[0] <= round(sp.acr, 3) <= sp.acr_range[1]:
                notes.append(f"{sp.method} ACR {sp.acr:.3f} (seeds {sp.acr_range[0]:.3f}-"
                             f"{sp.acr_range[1]:.3f})")
        for r, a, span in zip(sp.radii, sp.certified, sp.certified_range or [], strict=False):
            checked = True
            if not span[0] <= round(a, 2) <= span[1]:
                notes.append(f"{sp.method} r = {r:g}: {a:.2f} (seeds {span[0]:.2f}-"
                             f"{span[1]:.2f})")
    if not checked:
        return []
    if not notes:
        return ["", f"{what}: every value lies inside the authors' 5-seed range on the same "
                "images."]
    # One more seed of the same recipe lands outside the range of five with probability 2/6
    # at each value (exchangeable seeds), so a few such notes are expected, not a verdict.
    return ["", f"{what}, outside the authors' 5-seed range on the same images: "
            + "; ".join(notes) + ". (A sixth seed of the same recipe lands outside the range "
            "of five with probability 1/3 at each value.)"]


def _certify_table(exp: Experiment, rows: list[dict[str, Any]], budget: Budget,
                   cap: float) -> tuple[list[str], bool]:
    """The heading and the CERTIFY table; whether a cell is marked * (full test set)."""
    from smoothmix.analysis import BEYOND_CAP, markdown_table

    skip = budget.skip or exp.skip
    images = rows[0]["examples"] if rows else 0
    which = which_images(skip, budget.max_idx)
    head = ["method", "examples", "ACR",
            *(f"r = {r:g}{BEYOND_CAP if r > cap else ''}" for r in exp.radii)]
    lines = [f"{exp.name}: {exp.dataset}, sigma = {exp.sigma:g}.", "", budget.describe(exp), "",
             f"CERTIFY (n0 = {N0}, N = {budget.n or FULL_N:,}, alpha = {ALPHA}, "
             f"{budget.bound or 'cohen'} radius) on {which} ({images} images): ACR and "
             "certified accuracy (%) at radius r; each cell is ours, then (published, ours - "
             "published). Published: the authors' models on the same images (mean of their 5 "
             "seeds, from their per-image logs; docs/MATH.md §5) where known, else the full "
             "test set's mean (marked *).", ""]
    body, starred = [], False
    for row in rows:
        cells, marked = _certify_cells(exp, row, cap)
        starred |= marked
        body.append(cells)
    return [*lines, markdown_table(head, body)], starred


def _certify_cells(exp: Experiment, row: dict[str, Any], cap: float = math.inf
                   ) -> tuple[list[str], bool]:
    """One method's CERTIFY row; whether it shows a full-test-set (*) published value. No
    difference at radii beyond ``cap``, where our 0 is an artefact of N."""
    same = row["published_same_images"]
    pub_acr = row["published_same_images_acr"] if same else row["published_acr"]
    pub_acc = (row["published_same_images_certified_accuracy"] if same
               else row["published_certified_accuracy"]) or [None] * len(exp.radii)
    mark = "" if same else "*"
    starred = not same and (pub_acr is not None)
    cells = [row["method"], str(row["examples"]), _cell(row["acr"], pub_acr, 3, mark)]
    cells += [_cell(a, p, 2, mark if same or p is None else "*", r > cap)
              for r, a, p in zip(exp.radii, row["certified_accuracy"], pub_acc, strict=True)]
    if same and row["published_same_images_certified_accuracy"] is None:
        full = row["published_certified_accuracy"] or [None] * len(exp.radii)
        cells[3:] = [_cell(a, p, 2, "*", r > cap) for r, a, p in
                     zip(exp.radii, row["certified_accuracy"], full, strict=True)]
        starred |= any(p is not None for p in full)
    return cells, starred


def _decisions_table(exp: Experiment, rows: list[dict[str, Any]], budget: Budget) -> list[str]:
    """The KT decisions' table (with its blank line before), or nothing."""
    from smoothmix.analysis import markdown_table

    decided = [row for row in rows if "decisions" in row]
    if not decided:
        return []
    d0 = decided[0]["decisions"]
    dwhich = which_images(budget.decide_skip or 1, budget.max_idx)
    dhead = ["method", "examples", *(f"r = {r:g}" for r in d0["radii"]),
             "mean samples per decision"]
    lines = ["", f"KT confidence-sequence decisions (certify --radii, label mode, alpha "
             f"= {ALPHA}, cap {budget.n or FULL_N:,} samples) on {dwhich} "
             f"({d0['examples']} images): certified accuracy (%), ours then (published "
             "CERTIFY value on the same images, ours - published) where known. A "
             "decision is not a radius: no ACR.", ""]
    body = []
    for row in decided:
        d = row["decisions"]
        pub = row["published_certified_accuracy"] if _decided_all(budget) else None
        pub_at = {r: p for r, p in zip(exp.radii, pub or [], strict=False)}
        cells = [row["method"], str(d["examples"])]
        cells += [_cell(a, pub_at.get(r), 2) for r, a in
                  zip(d["radii"], d["certified_accuracy"], strict=True)]
        cells.append(f"{sum(d['mean_samples']) / len(d['mean_samples']):,.0f}")
        body.append(cells)
    return [*lines, markdown_table(dhead, body)]


def _decided_all(budget: Budget) -> bool:
    """Whether the KT decisions ran on every test image (the published full-set values are
    then on the same images)."""
    return (budget.decide_skip or 1) == 1 and budget.max_idx is None


def _cell(ours: float, published: float | None, digits: int, mark: str = "",
          beyond_cap: bool = False) -> str:
    if published is None:
        return f"{ours:.{digits}f}"
    if beyond_cap:  # ours is 0 by construction there: a difference would mean nothing
        return f"{ours:.{digits}f} ({published:.{digits}f}{mark})"
    return (f"{ours:.{digits}f} ({published:.{digits}f}{mark}, "
            f"{ours - published:+.{digits}f})")



__all__ = ["PLOT_NAME", "SUMMARY_NAME", "TABLE_NAME", "TERMINAL_WIDTH", "format_terminal",
           "write_report"]
