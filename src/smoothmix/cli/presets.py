"""``smoothmix presets``: list the published training recipes that ``--preset`` accepts."""

from __future__ import annotations

import argparse
import difflib

from smoothmix.errors import SmoothmixError
from smoothmix.training.presets import PRESETS, format_presets_table

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "presets",
        help="list the published training recipes (for `smoothmix train --preset NAME`)",
        description="List the training presets: data, model, method, sigma, schedule, images "
        "per optimiser step and method options of each published recipe. Explicit "
        "`smoothmix train` flags override a preset's values.",
    )
    parser.add_argument(
        "filter", nargs="?", default=None,
        help="show only presets whose name contains this text (e.g. mnist, macer, 0.50)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    chosen = [p for p in PRESETS.values() if args.filter is None or args.filter in p.name]
    if not chosen:
        raise SmoothmixError(f"no preset name contains {args.filter!r}"
                             f"{_nearest(args.filter)}; `smoothmix presets` lists all "
                             f"{len(PRESETS)}")
    print(format_presets_table(chosen))
    return 0


def _nearest(text: str) -> str:
    """The names or families (a name without its sigma) closest to a filter that matched
    nothing: a typo, rather than all the names on one line."""
    candidates = sorted({*PRESETS, *(name.rsplit("-", 1)[0] for name in PRESETS)})
    near = difflib.get_close_matches(text, candidates, n=3)
    return f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
