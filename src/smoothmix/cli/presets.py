"""Placeholder for the `smoothmix presets` subcommand (being written)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("presets", help="(not yet available)")
    parser.set_defaults(func=lambda args: 1)
