"""`smoothmix analyze`: certified-accuracy tables and curves from result files, the paper's
curves beside ours, and the distribution of p_y beside ACR (``--p-label``)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from smoothmix.analysis import (
    FORMATS,
    AttackResults,
    CertificationResults,
    DecisionResults,
    RunInfo,
    compare_results,
    default_radii,
    format_attacks,
    format_decisions,
    format_table,
    read_attack,
    read_decisions,
    read_results,
    read_run_info,
    result_kind,
)
from smoothmix.checks import check_radii
from smoothmix.errors import SmoothmixError, require
from smoothmix.label_probability import format_p_label, require_p_label
from smoothmix.plots import paper_curves, plot_certified_accuracy, plot_p_label

__all__ = ["model_sigma_note", "register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="certified accuracy and ACR of result files, as a table and a plot",
        description="One row per result file (smoothmix's or the reference certify.py's): "
        "sigma, N, alpha (from the FILE.json companion certify writes), number of images, "
        "average certified radius (ACR) and certified accuracy (percent, in every format) at "
        "each radius; abstentions count as wrong. Incomplete files and files that differ in "
        "sigma, N, alpha or images are warned about on stderr, and the best value per column "
        "is bold only among comparable files. Radii beyond a file's cap "
        "sigma*PhiInv(alpha^(1/N)), where no run with that N can certify, are marked. "
        "--p-label adds the distribution of p_y, which ACR hides (Sun et al. 2024).",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="certify result files (.tsv)")
    parser.add_argument("--radii", default=None,
                        help="comma-separated radii, e.g. 0,0.25,0.5 (default: 0 to the "
                        "largest certified radius in steps of 0.25)")
    parser.add_argument("--format", default="markdown", choices=FORMATS,
                        help="table format (default markdown)")
    parser.add_argument("--labels", default=None,
                        help="comma-separated row names, one per file (default: file names)")
    parser.add_argument("--plot", default=None, metavar="FILE",
                        help="also save a certified-accuracy-vs-radius plot here (.png, or "
                        ".pdf/.svg for vector graphics)")
    parser.add_argument("--dpi", type=int, default=300,
                        help="resolution of a raster --plot (default 300)")
    parser.add_argument("--figsize", default="4,3", metavar="W,H",
                        help="plot size in inches (default 4,3: one paper column)")
    parser.add_argument("--p-label", action="store_true",
                        help="also report the distribution of p_y, the base classifier's "
                        "accuracy on noisy copies of each image (n_label / draws, Sun et al. "
                        "2024): the share of images with p_y >= 0.5, 0.9, 0.99, 0.999 and "
                        "its quantiles (markdown, or csv with --format csv); with --plot, "
                        "its ECDF beside the plot "
                        "(PLOT-p_label.png). Needs certify files of smoothmix >= 0.5 run "
                        "without --skip-wrong; others are named in a one-line error")
    parser.add_argument("--p-label-lower", action="store_true",
                        help="with --p-label, also each image's one-sided Clopper-Pearson "
                        "lower bound on p_y at the file's alpha (implies --p-label)")
    parser.add_argument("--published", default=None, metavar="EXPERIMENT",
                        help="draw the paper's certified-accuracy curves of this experiment "
                        "(e.g. mnist-0.50) dashed beside the files whose method it has "
                        "(matched by the method the file records, its --labels name or its "
                        "file name); files written by `reproduce` record their experiment, "
                        "so theirs are drawn without it")
    parser.add_argument("--strict", action="store_true",
                        help="exit 2 on any warning (incomplete or incomparable files) instead "
                        "of printing the table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kinds = [result_kind(path) for path in args.files]
    if any(kind != "certify" for kind in kinds):
        return _run_decisions_and_attacks(args, kinds)
    results = [read_results(path) for path in args.files]
    radii = _parse_radii(args.radii) if args.radii else default_radii(results)
    labels = args.labels.split(",") if args.labels else None
    if labels is not None:
        require(len(labels) == len(results),
                f"--labels names {len(labels)} rows but {len(results)} files were given")
    figsize = _parse_figsize(args.figsize)
    require(args.dpi >= 1, f"--dpi must be >= 1, got {args.dpi}")
    require(args.published is None or args.plot is not None,
            "--published draws the paper's curves on the plot: give --plot FILE too")
    p_label = args.p_label or args.p_label_lower
    if p_label:  # refused before any output when a file lacks the column
        require_p_label(results, labels)
    _warn_and_note(compare_results(results, labels).warnings,
                   [(res.path, res.run) for res in results], args.strict)
    curves, curve_warnings = (paper_curves(results, labels, args.published) if args.plot
                              else ([], []))
    for warning in curve_warnings:
        print(f"smoothmix analyze: warning: {warning}", file=sys.stderr)
    print(format_table(results, radii, args.format, labels), end="")
    if p_label:
        fmt = "csv" if args.format == "csv" else "markdown"
        print("\n" + format_p_label(results, fmt, labels, lower=args.p_label_lower), end="")
    if args.plot:
        out = plot_certified_accuracy(results, args.plot, labels, dpi=args.dpi, figsize=figsize,
                                      published=curves)
        print(f"plot saved to {out}", file=sys.stderr)
        if p_label:
            path = Path(args.plot)
            out = plot_p_label(results, path.with_name(f"{path.stem}-p_label{path.suffix}"),
                               labels, lower=args.p_label_lower, dpi=args.dpi, figsize=figsize)
            print(f"p_y plot saved to {out}", file=sys.stderr)
    return 0


def _run_decisions_and_attacks(args: argparse.Namespace, kinds: list[str]) -> int:
    """``certify --radii`` files: certified accuracy at their radii and mean samples per
    decision (no ACR: decisions give no radius). ``attack`` files: the shares of attacked points
    where PREDICT kept the label, abstained or changed class, beside the certified accuracy
    at epsilon of the certify files given along and the changed share among certified
    images against its bound alpha_C + alpha_P (see analysis.format_attacks)."""
    require(args.labels is None and args.plot is None and args.radii is None
            and not (args.p_label or args.p_label_lower) and args.published is None,
            "--labels, --plot, --radii, --p-label and --published apply to certify files "
            "alone")
    decisions: list[DecisionResults] = []
    attacks: list[AttackResults] = []
    certified: list[CertificationResults] = []
    # Each table read once, in argument order; an attack file's .json companion twice
    # (read_attack takes epsilon and alpha from it, AttackResults keeps no RunInfo).
    runs: list[tuple[str, RunInfo | None]] = []
    for path, kind in zip(args.files, kinds, strict=True):
        if kind == "decide":
            decisions.append(read_decisions(path))
            run = decisions[-1].run
        elif kind == "attack":
            attacks.append(read_attack(path))
            run = read_run_info(path)
        else:
            certified.append(read_results(path))
            run = certified[-1].run
        runs.append((path, run))
        if kind != "certify" and run is not None and run.denoiser != "none":
            # decision and attack tables have no settings columns: one line each
            print(f"smoothmix analyze: {path}: denoiser {run.denoiser}", file=sys.stderr)
    require(bool(attacks) or not certified, "certify files go with attack files here (certified "
            "accuracy at epsilon); analyze them on their own otherwise")
    _warn_and_note([f"{dec.path} is incomplete: {len(dec.idx)} of the {dec.run.selected} "
                    "examples its run selected are decided (rerun its certify command to "
                    "finish it)" for dec in decisions if not dec.complete and dec.run is not None],
                   runs, args.strict)
    if decisions:
        print(format_decisions(decisions, args.format), end="")
    if attacks:
        print(format_attacks(attacks, certified, args.format), end="")
    return 0


def model_sigma_note(path: str | os.PathLike, run: RunInfo | None) -> str | None:
    """One short line for a file certified at another sigma than its model was trained at
    (None otherwise, or when the file does not record its model's sigma): its certificates
    hold, but for a model under noise it was not trained for, usually far less accurate."""
    if run is None or run.sigma is None or run.model_sigma is None \
            or math.isclose(run.sigma, run.model_sigma):
        return None
    return (f"{Path(path).name}: certified at sigma={run.sigma:g}, its model was trained at "
            f"sigma={run.model_sigma:g}")


def _warn_and_note(warnings: list[str], runs: Iterable[tuple[str, RunInfo | None]],
                   strict: bool) -> None:
    """Print the warnings (incomplete or incomparable files), then one note per file certified
    at another sigma than its model was trained at (not a warning for --strict: such a run is
    a legitimate experiment, but easy to misread); under --strict, refuse after both."""
    for warning in warnings:
        print(f"smoothmix analyze: warning: {warning}", file=sys.stderr)
    for path, run in runs:
        note = model_sigma_note(path, run)
        if note is not None:
            print(f"smoothmix analyze: note: {note}", file=sys.stderr)
    require(not (strict and warnings),
            f"--strict: {len(warnings)} warning(s) above; no table was written")


def _parse_figsize(text: str) -> tuple[float, float]:
    try:
        width, height = (float(v) for v in text.split(","))
    except ValueError:
        raise SmoothmixError(f"--figsize must be W,H in inches (e.g. 4,3), got {text!r}") from None
    require(width > 0 and height > 0 and math.isfinite(width * height),
            f"--figsize must be two positive sizes in inches, got {text!r}")
    return width, height


def _parse_radii(text: str) -> list[float]:
    return check_radii([r for r in text.split(",") if r.strip()], "--radii")
