"""``smoothmix demo``: Gaussian vs SmoothMix on the embedded MNIST, end to end, offline."""

from __future__ import annotations

import argparse
import dataclasses

from smoothmix.cli import (
    SIGMA_HELP,
    add_device_argument,
    add_threads_argument,
    apply_threads,
)
from smoothmix.demo import DemoBudget, run_demo

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = DemoBudget()
    p = subparsers.add_parser(
        "demo",
        help="train Gaussian and SmoothMix LeNets on MNIST, certify both, print the table "
        "(minutes on 2 idle CPU cores; it first states its expected time on this machine)",
        description="Train LeNet on the embedded MNIST with Gaussian augmentation and with "
        "SmoothMix on a small budget, certify both on the same test subset, print certified "
        "accuracy and ACR beside the published values and write a plot. One budget of "
        "`smoothmix reproduce mnist-0.50 --methods gaussian,smoothmix`. Rerunning resumes. "
        "It starts with the expected time on this machine, extrapolated from a few seconds' "
        "probe (training batches of each method, certification blocks) at --threads.",
    )
    p.add_argument("--outdir", default="smoothmix-demo",
                   help="where checkpoints, certificates, table, plot and summary go "
                   "(default: ./smoothmix-demo)")
    p.add_argument("--sigma", type=float, default=defaults.sigma,
                   help=f"{SIGMA_HELP}: 0.25, 0.5 or 1.0, the published "
                   f"MNIST tables (default {defaults.sigma})")
    p.add_argument("--train-subset", type=int, dest="train_images", metavar="N",
                   default=defaults.train_images,
                   help=f"train on the first N MNIST images (default {defaults.train_images})")
    p.add_argument("--epochs", type=int, default=defaults.epochs,
                   help=f"training epochs of each model (default {defaults.epochs})")
    p.add_argument("--skip", type=int, dest="certify_skip", metavar="K",
                   default=defaults.certify_skip,
                   help="certify every k-th test image (default "
                   f"{defaults.certify_skip}: 100 images)")
    p.add_argument("--n", type=int, default=defaults.n,
                   help=f"CERTIFY's N, samples for the bound (default {defaults.n})")
    add_device_argument(p)
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    budget = dataclasses.replace(DemoBudget(), sigma=args.sigma, train_images=args.train_images,
                                 epochs=args.epochs, certify_skip=args.certify_skip, n=args.n)
    run_demo(args.outdir, budget, device=args.device, progress=not args.no_progress)
    return 0
