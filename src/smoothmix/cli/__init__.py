"""``smoothmix`` command line: a thin shell over the Python API.

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``func`` (``args -> int`` exit code). User errors are
:class:`~smoothmix.errors.SmoothmixError`: printed on one line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from smoothmix.errors import SmoothmixError

# Order here is the order in `smoothmix --help`.
_COMMAND_MODULES = ("demo", "reproduce", "train", "targets", "presets", "certify", "analyze",
                    "diagnose")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothmix",
        description="Train and certify provably robust classifiers by randomized smoothing "
        "(SmoothMix, Gaussian, Stability, SmoothAdv, MACER, Consistency, CAT-RS).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"smoothmix.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SmoothmixError as exc:
        print(f"smoothmix {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smoothmix {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`smoothmix presets | head`); that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
