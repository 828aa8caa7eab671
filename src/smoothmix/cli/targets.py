"""``smoothmix targets``: the soft targets CAT-RS trains against, a thin shell over
:mod:`smoothmix.targets` (``smoothmix merge`` merges its shards)."""

from __future__ import annotations

import argparse
import sys

from smoothmix.checks import check_count, check_sigma
from smoothmix.cli import (
    SIGMA_HELP,
    add_device_argument,
    dataset_choices,
)
from smoothmix.execution import PRECISIONS
from smoothmix.run import NOISE_BATCH, RunSpec
from smoothmix.targets import REFERENCE_N, REFERENCE_SIGMA

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "targets",
        help="vote frequencies of a smoothed classifier on every training image (the soft "
        "targets of CAT-RS)",
        description="Count N votes of CHECKPOINT's base classifier under N(0, sigma^2) noise "
        "on one augmented view of every training image and store pi = votes / N, keyed by "
        "dataset index, with the dataset, N, sigma and the checkpoint's SHA-256 (for "
        "`smoothmix train --method catrs --targets FILE`). CAT-RS uses a Gaussian model "
        f"trained at sigma {REFERENCE_SIGMA:g} and N = {REFERENCE_N:,}; smaller N is allowed "
        "(pi becomes coarser, in steps of 1/N). Rerunning the same command resumes; --shard "
        "I/K splits the work between jobs (merge with `smoothmix merge`); under torchrun the "
        "ranks split it and rank 0 merges.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the (Gaussian) model checkpoint")
    p.add_argument("--dataset", required=True, choices=dataset_choices(),
                   help="training set to label")
    p.add_argument("--sigma", type=float, default=REFERENCE_SIGMA,
                   help=f"{SIGMA_HELP} (CAT-RS: {REFERENCE_SIGMA:g} for every training "
                   f"sigma; default {REFERENCE_SIGMA:g})")
    p.add_argument("--n", "--N", "--num-samples", dest="n", type=int, default=REFERENCE_N,
                   help=f"votes per image (default {REFERENCE_N}, as the reference); under "
                   "torchrun spell it --num-samples (torchrun takes --n for one of its own "
                   "options)")
    p.add_argument("--out", required=True, help="targets file to write or resume (.npz)")
    p.add_argument("--noise-batch", type=int, default=NOISE_BATCH, dest="batch",
                   metavar="ROWS",
                   help=f"most noisy images in memory at once (default {NOISE_BATCH})")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the views and the noise; image idx uses a stream derived "
                   "from (seed, idx), so the result does not depend on sharding (default 0)")
    p.add_argument("--max", "--max-idx", type=int, default=-1, dest="max_idx", metavar="MAX",
                   help="label only the images with index below MAX (serves --train-subset "
                   "MAX or fewer; default -1: all)")
    p.add_argument("--shard", default=None, metavar="I/K",
                   help="label every K-th image starting at the I-th, for independent jobs")
    p.add_argument("--no-augment", action="store_true",
                   help="use the plain image, not one random crop/flip view (the reference "
                   "used an augmented view where the dataset trains with augmentation)")
    p.add_argument("--data-dir", default=None,
                   help="dataset directory (default $SMOOTHMIX_DATA; MNIST is embedded)")
    p.add_argument("--normalization", default=None,
                   help="normalisation layer to assume (default: the checkpoint's or the "
                   "dataset's)")
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32 (default) or bf16 autocast for the votes (recorded in the file; "
                   "a resumed run takes the recorded one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_sigma(args.sigma)  # before the (slow) model and data loading
    check_count("--n", args.n)
    check_count("--noise-batch", args.batch)
    from smoothmix.checkpoint import read_checkpoint
    from smoothmix.distributed import distributed_env
    from smoothmix.storage.shards import parse_shard
    from smoothmix.targets import targets_from_checkpoint

    shard = parse_shard(args.shard) if args.shard is not None else None
    # --precision not given: the execution's default, or a resumed file's recorded one.
    execution = {} if args.precision is None else {"precision": args.precision}
    spec = RunSpec.of(args.sigma, batch_size=args.batch, seed=args.seed, shard=shard,
                      max_idx=args.max_idx, progress=not args.no_progress,
                      execution=execution)
    main = distributed_env()[0] == 0
    if main and args.n < REFERENCE_N:
        print(f"note: N = {args.n} votes per image (the reference uses {REFERENCE_N}): pi is "
              f"coarser, in steps of 1/{args.n}", file=sys.stderr)
    if main:
        trained = read_checkpoint(args.checkpoint).sigma
        if trained is not None and float(trained) != args.sigma:
            print(f"note: the checkpoint was trained with sigma={trained}, voting at "
                  f"sigma={args.sigma}", file=sys.stderr)
    out = targets_from_checkpoint(
        args.checkpoint, args.dataset, args.out, n=args.n, data_dir=args.data_dir,
        device=args.device, normalization=args.normalization, spec=spec,
        augment=False if args.no_augment else None)
    if main:
        what = "every training image" if args.max_idx < 0 else \
            f"the training images below index {args.max_idx}"
        print(f"targets of {what} (N={args.n}, sigma={args.sigma}) in {out}")
    return 0

