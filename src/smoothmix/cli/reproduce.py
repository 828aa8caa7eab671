"""``smoothmix reproduce``: a thin shell over :func:`smoothmix.reproduce.reproduce`."""

from __future__ import annotations

import argparse

from smoothmix import distributed
from smoothmix.cli import add_device_argument
from smoothmix.cli.train import add_deferred_flags
from smoothmix.errors import require
from smoothmix.execution import PRECISIONS
from smoothmix.statistics import BOUNDS

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="run a published table end to end (train, certify, compare with the paper)",
        description="Train every method of a published table with its preset, certify each "
        "with the published protocol (n0=100, N=100,000, alpha=0.001; full test set, "
        "ImageNet every 100th validation image) and write OUTDIR/table.md (ours beside the "
        "published values), curves.png and summary.json. Budget options make it smaller; "
        "the outputs state them. Rerunning the same command continues where it stopped; "
        "a different budget against the same OUTDIR is refused. Multi-GPU: torchrun "
        "--nproc_per_node=K -m smoothmix -- reproduce ...",
    )
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT",
                   help="mnist-0.25, mnist-0.50, mnist-1.00, cifar10-0.25, cifar10-0.50, "
                   "cifar10-1.00, imagenet-0.50 or imagenet-1.00")
    p.add_argument("--list", action="store_true",
                   help="list the experiments with their methods, presets and published values")
    p.add_argument("--methods", metavar="A,B",
                   help="comma-separated rows to run (default: every method with a preset; "
                   "a figure's rows, such as the eta rows, run when named). A longer list "
                   "adds rows to an OUTDIR; one leaving out a row it holds is refused")
    p.add_argument("--outdir", help="output folder (default: runs/reproduce-EXPERIMENT)")
    b = p.add_argument_group("budget (default: the full published budget)")
    b.add_argument("--epochs", type=int, help="epochs of every training (presets: 90-440)")
    b.add_argument("--train-subset", type=int, metavar="N",
                   help="train on the first N training images")
    b.add_argument("--batch", type=int, dest="batch_size", metavar="B",
                   help="images per optimiser step over all processes, for every method "
                   "(as train --batch; presets: 256/m)")
    b.add_argument("--warmup", type=int, metavar="EPOCHS",
                   help="warm-up of SmoothAdv's epsilon and SmoothMix's mix weight (presets: "
                   "10 epochs; short budgets want 1)")
    add_deferred_flags(b)
    b.add_argument("--skip", type=int, help="certify every k-th test image (protocol: 1; "
                   "ImageNet 100)")
    b.add_argument("--n", "--num-samples", type=int, dest="n",
                   help="CERTIFY's N (protocol: 100,000; spell it --num-samples under torchrun)")
    b.add_argument("--targets-n", type=int, metavar="N",
                   help="CAT-RS rows: votes per training image of the soft targets (reference: "
                   "10,000)")
    b.add_argument("--max", "--max-idx", type=int, dest="max_idx", metavar="IDX",
                   help="certify only test images with index below IDX (spell it --max-idx "
                   "under torchrun)")
    b.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="train and certify in bf16 autocast (published: fp32); stated in "
                   "the table")
    b.add_argument("--bound", choices=BOUNDS, default=None,
                   help="CERTIFY's radius formula (published: cohen)")
    b.add_argument("--decide-radii", type=_radii, default=None, metavar="R,R2,...",
                   help="also decide 'robust at R' with the KT confidence sequence (label "
                   "mode, cap --n samples) at these radii: certified accuracy on many "
                   "images at a fraction of CERTIFY's cost (e.g. 0,0.25,0.5,0.75,1)")
    b.add_argument("--decide-skip", type=int, default=None, metavar="K",
                   help="with --decide-radii: decide every K-th test image (default 1: all)")
    e = p.add_argument_group("execution")
    e.add_argument("--data-dir", help="dataset root (default: $SMOOTHMIX_DATA; MNIST falls "
                   "back to the copy embedded in the package)")
    add_device_argument(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _radii(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected R[,R2,...], got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from smoothmix.reproduce import Budget, describe_experiments, reproduce

    if args.list:
        print(describe_experiments(), end="")
        return 0
    require(args.experiment is not None, "name an EXPERIMENT (`smoothmix reproduce --list` "
            "shows them)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    budget = Budget(epochs=args.epochs, train_subset=args.train_subset,
                    batch_size=args.batch_size, warmup=args.warmup, deferred=args.deferred,
                    skip=args.skip, n=args.n, max_idx=args.max_idx,
                    targets_n=args.targets_n, precision=args.precision, bound=args.bound,
                    decide_radii=args.decide_radii, decide_skip=args.decide_skip)
    try:
        reproduce(args.experiment, args.outdir or f"runs/reproduce-{args.experiment}",
                  methods=methods, budget=budget, data_dir=args.data_dir, device=args.device,
                  progress=not args.no_progress)
    finally:
        distributed.cleanup()
    return 0
