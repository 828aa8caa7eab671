"""``smoothmix train``: train a base classifier for randomized smoothing.

A thin shell over :func:`smoothmix.training.train`. Runs unchanged under
``torchrun --nproc_per_node=K -m smoothmix train ...`` (DistributedDataParallel).
"""

from __future__ import annotations

import argparse
from typing import Any

from smoothmix import distributed
from smoothmix.cli import (
    SIGMA_HELP,
    add_device_argument,
    add_threads_argument,
    apply_threads,
    dataset_choices,
    method_names,
    model_names,
    one_of,
)
from smoothmix.training.recipe import option_flag

__all__ = ["add_deferred_flags", "method_option_flags", "register", "run"]

_METAVARS = {"num_noise": "M", "num_steps": "T", "step_size": "STEP", "epsilon": "EPS",
             "warmup": "EPOCHS", "lbd": "LAMBDA", "max_norm": "R",
             "epsilon_double_epoch": "EPOCH"}

def method_option_flags() -> list[tuple[str, str, type, str, tuple[Any, ...] | None]]:
    """``(flag, option, type, help, choices)`` of every option of the registered methods,
    from their :class:`~smoothmix.methods.base.Option` tables (MACER's ``deferred_epochs``
    is set by ``--deferred``). An option several methods take is one flag whose help names
    each method's meaning."""
    from smoothmix.methods import METHODS

    found: dict[str, tuple[type, list[str], tuple[Any, ...] | None]] = {}
    for name, cls in METHODS.items():
        for key, opt in cls.options.items():
            if key == "deferred_epochs":
                continue
            typ, helps, choices = found.setdefault(key, (opt.type, [], opt.choices))
            helps.append(f"{name}: {opt.help}")
    return [(option_flag(k), k, typ, "; ".join(helps), choices)
            for k, (typ, helps, choices) in found.items()]


def add_deferred_flags(group: argparse._ActionsContainer) -> None:
    """``--deferred EPOCH`` / ``--no-deferred`` (shared by train and reproduce)."""
    group.add_argument("--deferred", type=int, default=None, metavar="EPOCH",
                       help="MACER: no robustness term before this epoch (30 = the first "
                       "learning-rate drop of the MNIST recipe; 1 for short budgets)")
    group.add_argument("--no-deferred", dest="deferred", action="store_const", const=0,
                       help="MACER: robustness term from the first step (turns a preset's "
                       "deferral off)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a base classifier for randomized smoothing (SmoothMix or a baseline), "
        "or a denoiser for denoised smoothing",
        description="Train a base classifier with SmoothMix, Gaussian, Stability, SmoothAdv, "
        "MACER, Consistency or CAT-RS (with --targets), a plain classifier without noise "
        "(--method plain), or a denoiser for a frozen classifier (--method denoise-mse / "
        "denoise-stability --arch dncnn). Writes OUTDIR/checkpoint.pth.tar "
        "every epoch (atomically), "
        "OUTDIR/log.csv and TensorBoard events; --resume continues a stopped run exactly. "
        "Explicit flags override --preset. Multi-GPU: torchrun --nproc_per_node=K -m "
        "smoothmix train ...",
    )
    _add_run_flags(p.add_argument_group("what to train"))
    _add_optimisation_flags(
        p.add_argument_group("optimisation (defaults: preset, else the dataset's recipe)"))
    _add_method_flags(
        p.add_argument_group("method options (default: the method's published value)"))
    _add_execution_flags(p.add_argument_group("data and execution"))
    p.set_defaults(func=run)


def _add_run_flags(run_g: argparse._ArgumentGroup) -> None:
    """What is trained, from what, into where."""
    run_g.add_argument("--preset", help="a published recipe (`smoothmix presets` lists them); "
                       "sets dataset, arch, method, sigma, schedule, batch and method options")
    run_g.add_argument("--dataset", help=one_of(dataset_choices()))
    run_g.add_argument("--arch", help=f"{one_of(model_names())} (default: the dataset's "
                       "published model); for a denoiser method (denoise-mse, "
                       "denoise-stability) a denoiser kind: dncnn")
    run_g.add_argument("--method", help=f"{one_of(method_names())} (catrs needs --targets)")
    run_g.add_argument("--sigma", type=float,
                       help=f"{SIGMA_HELP} (e.g. 0.25, 0.5, 1.0); "
                       "none for --method plain (trained without noise)")
    run_g.add_argument("--init", metavar="CHECKPOINT",
                       help="start from the weights of this checkpoint (same architecture; "
                       "recorded with its SHA-256), e.g. stability fine-tuning of an "
                       "MSE-trained denoiser")
    run_g.add_argument("--targets", metavar="FILE",
                       help="CAT-RS soft targets built by `smoothmix targets` (from a Gaussian "
                       "sigma 0.25 model) on the whole training set; --train-subset takes its "
                       "images' rows")
    run_g.add_argument("--outdir", required=True,
                       help="output directory; must be empty or new unless --resume")
    run_g.add_argument("--resume", action="store_true",
                       help="continue the run in OUTDIR from its checkpoint with its stored "
                       "settings: `--outdir OUTDIR --resume` is all it needs; a flag or "
                       "--preset value contradicting a stored setting is an error, except a "
                       "larger --epochs, which extends the run. An empty OUTDIR, or one whose "
                       "run stopped before its first checkpoint, starts from the beginning")


def _add_optimisation_flags(opt_g: argparse._ArgumentGroup) -> None:
    """The optimiser and its schedule (the recipe: a resume keeps them)."""
    opt_g.add_argument("--epochs", type=int, help="number of epochs (mnist 90, cifar10 150); "
                       "fewer than the method's warm-up (--warmup) or MACER's deferral "
                       "(--deferred) leaves that term short, with a warning")
    opt_g.add_argument("--batch", type=int, dest="batch_size", metavar="B",
                       help="images per optimiser step over all processes (default 256/m; "
                       "64 for MACER); under torchrun it must be divisible by the process "
                       "count")
    opt_g.add_argument("--lr", type=float, help="initial SGD learning rate (mnist 0.01, "
                       "cifar10 0.1)")
    opt_g.add_argument("--lr-step", type=int,
                       help="multiply the learning rate by 0.1 every this many epochs")
    opt_g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    opt_g.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                       help="sgd (default; every classifier recipe) or adam (the published "
                       "denoiser recipes); part of the recipe: a resume keeps it")
    opt_g.add_argument("--weight-decay", type=float, help="SGD weight decay (default 1e-4)")
    opt_g.add_argument("--seed", type=int,
                       help="random seed of weights, data order and noise (default 0); runs "
                       "with the same seed are reproducible on CPU")


def _add_method_flags(m_g: argparse._ArgumentGroup) -> None:
    """One flag per option of the registered methods, and MACER's deferral."""
    for flag, dest, typ, text, choices in method_option_flags():
        metavar = ("{" + ",".join(map(str, choices)) + "}" if choices
                   else _METAVARS.get(dest, dest.upper()))
        m_g.add_argument(flag, dest=f"opt_{dest}", type=typ, default=None, help=text,
                         metavar=metavar)
    add_deferred_flags(m_g)


def _add_execution_flags(d_g: argparse._ArgumentGroup) -> None:
    """The data, and how the step runs (device, threads, precision, layout, compile)."""
    d_g.add_argument("--data-dir", help="dataset root (default: $SMOOTHMIX_DATA; MNIST falls "
                     "back to the copy embedded in the package)")
    d_g.add_argument("--train-subset", type=int, metavar="N",
                     help="train on the first N training images (quick runs)")
    d_g.add_argument("--test-subset", type=int, metavar="N",
                     help="measure the per-epoch noisy test accuracy on the first N test "
                     "images")
    add_device_argument(d_g)
    add_threads_argument(d_g)
    d_g.add_argument("--workers", type=int, default=None,
                     help="DataLoader worker processes for image-folder datasets (default: 4, "
                     "at most the machine's CPU cores; MNIST and "
                     "CIFAR-10 are batched on the device and need none)")
    d_g.add_argument("--precision", default=None, metavar="{fp32,bf16}",
                     help="fp32 (default; the published protocol) or bf16 autocast for the "
                     "step: faster on GPUs and on CPUs with AMX or AVX-512-BF16 (a CPU without "
                     "either says so). Part of the recipe: a resume keeps it")
    d_g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                     help="channels_last memory format for model and inputs (default: on for "
                     "image models: the faster one for convnets on CPU, and the layout GPU "
                     "tensor cores want)")
    d_g.add_argument("--compile", action="store_true",
                     help="torch.compile the model (slow first epoch, faster afterwards)")
    d_g.add_argument("--cuda-graphs", action="store_true",
                     help="CUDA: capture each epoch's training step as a CUDA graph and replay "
                     "it per batch (drop-last batches; one process, no --compile; not yet "
                     "run on a GPU)")
    d_g.add_argument("--no-progress", action="store_true",
                     help="no progress bar (per-epoch lines and files are still written)")


def run(args: argparse.Namespace) -> int:
    from smoothmix.training import train

    apply_threads(args.threads)
    options = {dest: getattr(args, f"opt_{dest}") for _, dest, *_ in method_option_flags()}
    try:
        path = train(
            args.outdir,
            dataset=args.dataset, arch=args.arch, method=args.method, sigma=args.sigma,
            preset=args.preset, method_options=options, deferred=args.deferred,
            resume=args.resume, data_dir=args.data_dir,
            train_subset=args.train_subset, test_subset=args.test_subset,
            targets=args.targets, init=args.init,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_step=args.lr_step,
            momentum=args.momentum, optimizer=args.optimizer,
            weight_decay=args.weight_decay, seed=args.seed,
            device=args.device, precision=args.precision, compile=args.compile,
            cuda_graphs=args.cuda_graphs,
            channels_last=args.channels_last, workers=args.workers, progress=not args.no_progress,
        )
    finally:
        distributed.cleanup()
    if distributed.distributed_env()[0] == 0:
        print(f"checkpoint: {path}")
    return 0
