"""``smoothmix diagnose``: the over-confidence diagnostic of docs/MATH.md §3.7."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from smoothmix.cli import SIGMA_HELP, add_device_argument, dataset_choices
from smoothmix.device import resolve_device
from smoothmix.errors import require
from smoothmix.execution import PRECISIONS

if TYPE_CHECKING:
    from smoothmix.diagnostics import ConfidenceRow

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "diagnose",
        help="over-confidence diagnostic: smoothed confidence along SmoothMix's adversarial "
        "search path",
        description="From each selected test image run SmoothMix's unrestricted search "
        "(--num-steps steps of length --step-size on the smoothed soft classifier) and report, "
        "at each path length, the Monte-Carlo means of P(f(x+delta) = y) and "
        "max_{c != y} P(f(x+delta) = c) (the SmoothMix paper's motivating table).",
        # No abbreviations: `--max` must not quietly mean --max-images here, since
        # certify's --max means "stop before this index".
        allow_abbrev=False,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model checkpoint")
    p.add_argument("--dataset", required=True, choices=dataset_choices(),
                   help="dataset of the test images")
    p.add_argument("--sigma", type=float, required=True, help=SIGMA_HELP)
    p.add_argument("--split", default="test", help="train or test (default test)")
    p.add_argument("--data-dir", help="dataset root (default: $SMOOTHMIX_DATA; MNIST: embedded)")
    p.add_argument("--skip", type=int, default=20, help="use every k-th image (default 20)")
    p.add_argument("--max-images", type=int, default=500, metavar="COUNT",
                   help="use at most this many of the selected images (default 500; a "
                   "count, unlike certify's --max, which is a dataset index)")
    p.add_argument("--step-size", type=float, default=1.0,
                   help="length of one search step, L2 in [0,1] pixel units (default 1.0)")
    p.add_argument("--num-steps", type=int, default=5,
                   help="search steps; path lengths 0..num_steps*step_size (default 5)")
    p.add_argument("--num-noise", type=int, default=4,
                   help="noise draws per image used by the search (default 4)")
    p.add_argument("--n", type=int, default=1000,
                   help="fresh noise draws per point for the reported probabilities "
                   "(default 1000)")
    p.add_argument("--batch", type=int, default=50, help="images per search batch (default 50)")
    p.add_argument("--normalization", help="override the checkpoint's normalisation layer")
    add_device_argument(p)
    p.add_argument("--seed", type=int, default=0,
                   help="random seed: image idx draws its noise from the stream (seed, idx), "
                   "as certify's examples do (default 0)")
    p.add_argument("--out", help="also write the rows to this CSV file (replaced whole)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default) or bf16 autocast for every forward pass")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from smoothmix.checkpoint import check_model_fits_dataset, load_model
    from smoothmix.data import load_dataset
    from smoothmix.diagnostics import format_rows, overconfidence
    from smoothmix.storage import atomic_write

    require(args.skip >= 1, f"--skip must be >= 1, got {args.skip}")
    require(args.max_images >= 1, f"--max-images must be >= 1, got {args.max_images}")
    device = resolve_device(args.device)
    model, ckpt = load_model(args.checkpoint, device=device, normalization=args.normalization)
    dataset = load_dataset(args.dataset, args.split, args.data_dir)
    check_model_fits_dataset(model, ckpt, dataset, args.dataset, args.checkpoint)
    indices = list(range(0, len(dataset), args.skip))[: args.max_images]
    items = [dataset[i] for i in indices]
    images = torch.stack([x for x, _ in items]).to(device)
    labels = torch.tensor([y for _, y in items], device=device)
    rows = overconfidence(model, images, labels, args.sigma, dataset.num_classes,
                          step_size=args.step_size, num_steps=args.num_steps,
                          num_noise=args.num_noise, n=args.n, batch_size=args.batch,
                          precision=args.precision, seed=args.seed, indices=indices)
    print(f"{len(images)} images of {args.dataset}/{args.split}, sigma={args.sigma}, "
          f"n={args.n}, {args.precision}, seed={args.seed}\n")
    print(format_rows(rows))
    if args.out:
        atomic_write(args.out, _rows_csv(rows))
    return 0


def _rows_csv(rows: Sequence[ConfidenceRow]) -> str:
    """The diagnostic's rows as CSV text, one column per field of ConfidenceRow."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=[f.name for f in dataclasses.fields(rows[0])])
    writer.writeheader()
    writer.writerows(dataclasses.asdict(r) for r in rows)
    return text.getvalue()
