"""``smoothmix presets``: list the published training recipes that ``--preset`` accepts."""

from __future__ import annotations

import argparse

from smoothmix.errors import require
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
    require(bool(chosen), f"no preset name contains {args.filter!r}; valid presets: "
            f"{', '.join(PRESETS)}")
    print(format_presets_table(chosen))
    return 0
