"""`smoothmix analyze`: certified-accuracy tables and curves from result files."""

from __future__ import annotations

import argparse
import sys

from smoothmix.analysis import (
    FORMATS,
    default_radii,
    format_table,
    plot_certified_accuracy,
    read_results,
)
from smoothmix.errors import SmoothmixError, require


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="certified accuracy and ACR of result files, as a table and a plot",
        description="One row per result file (smoothmix's or the reference certify.py's): "
        "number of examples, average certified radius (ACR) and certified accuracy (%%) at "
        "each radius; abstentions count as wrong. The best value per column is bold.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="certify result files (.tsv)")
    parser.add_argument("--radii", default=None,
                        help="comma-separated radii, e.g. 0,0.25,0.5 (default: 0 to the "
                        "largest certified radius in steps of 0.25)")
    parser.add_argument("--format", default="markdown", choices=FORMATS,
                        help="table format (default markdown)")
    parser.add_argument("--labels", default=None,
                        help="comma-separated row names, one per file (default: file names)")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also save a certified-accuracy-vs-radius plot here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = [read_results(path) for path in args.files]
    radii = _parse_radii(args.radii) if args.radii else default_radii(results)
    labels = args.labels.split(",") if args.labels else None
    if labels is not None:
        require(len(labels) == len(results),
                f"--labels names {len(labels)} rows but {len(results)} files were given")
    print(format_table(results, radii, args.format, labels), end="")
    if args.plot:
        out = plot_certified_accuracy(results, args.plot, labels)
        print(f"plot saved to {out}", file=sys.stderr)
    return 0


def _parse_radii(text: str) -> list[float]:
    try:
        radii = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise SmoothmixError(f"--radii must be comma-separated numbers, got {text!r}") from None
    require(bool(radii) and all(r >= 0 for r in radii),
            f"--radii must be non-negative numbers, got {text!r}")
    return radii
