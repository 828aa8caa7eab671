"""`smoothmix certify`, `smoothmix predict` and `smoothmix merge`: a thin shell over
:mod:`smoothmix.certification`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from smoothmix.certification import certify_dataset, predict_dataset
from smoothmix.checks import check_radii, check_sigma
from smoothmix.cli import (
    SIGMA_HELP,
    add_device_argument,
    choices_metavar,
    dataset_choices,
)
from smoothmix.core import check_bound, check_certify_args, check_predict_args
from smoothmix.decisions import decide_dataset
from smoothmix.distributed import distributed_env
from smoothmix.errors import SmoothmixError, require
from smoothmix.execution import CPU_CHUNK, LAYOUTS, PRECISIONS
from smoothmix.run import NOISE_BATCH, RunSpec
from smoothmix.sequences import SEQUENCES
from smoothmix.statistics import BOUNDS, DEFAULT_ALPHA, DEFAULT_N, DEFAULT_N0
from smoothmix.storage.shards import parse_shard

__all__ = [
    "add_denoiser_options", "add_execution_options", "add_run_options", "execution_options",
    "prepare_run", "register", "report", "run_certify", "run_merge", "run_predict",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    certify = subparsers.add_parser(
        "certify",
        help="certify a checkpoint's smoothed classifier on a dataset (CERTIFY, Cohen et al.)",
        description="Run CERTIFY on every --skip-th test example and write the reference "
        "result file (idx label predict radius correct time; radius at full precision). "
        "Rerunning the same command resumes an interrupted run. Under torchrun the ranks "
        "split the examples and rank 0 writes the merged file; there spell --n and --max as "
        "--num-samples and --max-idx (torchrun reads --n and --max as abbreviations of its "
        "own options unless they follow a --).",
    )
    add_run_options(certify, with_n0=True)
    certify.add_argument("--skip-wrong", action="store_true",
                         help="evaluation shortcut: when the n0 selection is not the label, "
                         "skip the estimation (row status 'skipped', predict -1); certified "
                         "accuracy and ACR are exactly those of the full run (default off)")
    certify.add_argument("--radii", type=_radii, default=None, dest="radius",
                         metavar="R[,R2,...]",
                         help="instead of CERTIFY's radius, decide 'robust at R' for each "
                         "given radius with an anytime-valid confidence sequence "
                         "(docs/MATH.md §2.1): "
                         "usually far fewer samples; --n is then the sample cap (undecided = "
                         "not certified); the file has one row per example and radius")
    certify.add_argument("--sequence", choices=SEQUENCES, default="kt",
                         help="with --radii: betting (Krichevsky-Trofimov) confidence "
                         "sequence, union-bound sequence, or Horvath et al.'s staged "
                         "procedure (default kt)")
    certify.add_argument("--no-label", action="store_true",
                         help="with --radii: test the class selected on --n0 samples "
                         "(deployment) instead of the label (evaluation)")
    certify.add_argument("--bound", default="cohen", metavar=choices_metavar(BOUNDS),
                         help="radius formula: cohen (CERTIFY, as in the published tables; "
                         "default) or two-sided (Cohen's theorem in full: the runner-up "
                         "bounded on its own votes, alpha split in halves; larger where votes "
                         "spread over classes). Rows keep n_a and n_b either way")
    certify.set_defaults(func=run_certify)

    predict = subparsers.add_parser(
        "predict",
        help="run PREDICT (abstaining smoothed prediction) over a dataset",
        description="Run PREDICT on every --skip-th example and write "
        "idx label predict correct time (predict -1 = abstain). Resumes like certify.",
    )
    add_run_options(predict, with_n0=False)
    predict.set_defaults(func=run_predict)

    merge = subparsers.add_parser(
        "merge",
        help="merge the shard files of one run (certify, predict, attack, --radii, or CAT-RS "
        "targets .npz) into one file",
        description="Merge the files written with --shard 0/K ... K-1/K into OUT (sorted by "
        "idx; .npz shards are CAT-RS targets). Fails on shards from "
        "different runs, missing or repeated shards, overlapping rows and gaps.",
    )
    merge.add_argument("out", metavar="OUT", help="merged result file to write")
    merge.add_argument("shards", nargs="+", metavar="SHARD", help="the shard result files")
    merge.set_defaults(func=run_merge)


def add_run_options(parser: argparse.ArgumentParser, with_n0: bool,
                    n_default: int = DEFAULT_N) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="model checkpoint (smoothmix's or the reference code's), a "
                        "training --outdir, or pretrained:NAME (smoothmix.list_pretrained(): "
                        "mnist-smoothmix-0.50, ...)")
    parser.add_argument("--dataset", default=None, choices=dataset_choices(),
                        help="dataset to evaluate on (default: the one the checkpoint was "
                        "trained on)")
    parser.add_argument("--sigma", type=float, default=None,
                        help=f"{SIGMA_HELP} (default: the "
                        "checkpoint's training sigma; another value is warned about)")
    if with_n0:
        parser.add_argument("--n0", "--N0", type=int, default=DEFAULT_N0,
                            help="noise samples used to select the class (default "
                            f"{DEFAULT_N0})")
    parser.add_argument("--n", "--N", "--num-samples", type=int, default=n_default, dest="n",
                        help="noise samples for the bound (certify) or the vote (predict); "
                        f"it caps the radius (default {n_default})")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help="failure probability of the certificate, in (0, 1) (default "
                        f"{DEFAULT_ALPHA})")
    parser.add_argument("--noise-batch", type=int, default=NOISE_BATCH, dest="batch",
                        metavar="ROWS",
                        help=f"most noisy images in memory at once (default {NOISE_BATCH})")
    parser.add_argument("--skip", type=int, default=1,
                        help="evaluate every SKIP-th example (default 1: all)")
    parser.add_argument("--max", "--max-idx", type=int, default=-1, dest="max_idx",
                        metavar="MAX", help="stop before dataset index MAX, as the reference "
                        "certify.py does (default -1: no limit; spell it --max-idx under "
                        "torchrun)")
    parser.add_argument("--split", default="test", choices=("test", "train"),
                        help="dataset split (default test)")
    parser.add_argument("--data-dir", default=None,
                        help="dataset directory (default $SMOOTHMIX_DATA; MNIST is embedded)")
    add_device_argument(parser)
    parser.add_argument("--shard", type=str, default=None, metavar="I/K",
                        help="take every K-th selected example starting at the I-th, for "
                        "independent jobs; combine them with `smoothmix merge`")
    parser.add_argument("--normalization", default=None,
                        help="normalisation layer to assume (e.g. cifar10-center for "
                        "SmoothAdv's models; default: the checkpoint's or the dataset's)")
    parser.add_argument("--seed", type=int, default=0,
                        help="noise seed; example idx uses a stream derived from (seed, idx), "
                        "so results do not depend on sharding (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--out", required=True, help="result file (.tsv) to write or resume")
    parser.add_argument("--grid", type=int, default=None, choices=(255,), metavar="255",
                        help="sound certification for 8-bit inputs (Voracek & Hein 2023): "
                        "noise sampled on the 1/255 grid from integer draws, so no base "
                        "classifier can exploit float rounding of x + noise (docs/grid.md). "
                        "Inputs must lie on the grid: mnist and cifar10 (decoded from 8-bit "
                        "files, no float transforms) do; imagenet/imagefolder images resized "
                        "in float do not and are refused")
    add_denoiser_options(parser)
    add_execution_options(parser)


def add_denoiser_options(parser: argparse.ArgumentParser) -> None:
    """Denoised smoothing (issue 28): a denoiser in front of the classifier."""
    group = parser.add_argument_group("denoised smoothing (the base classifier is f∘D)")
    group.add_argument("--denoiser", default=None, metavar="SOURCE",
                       help="put a denoiser D in front of the classifier and certify f∘D: a "
                       "denoiser checkpoint (or its training --outdir), pretrained:NAME, a "
                       "folder saved by diffusers, or hub:MODEL_ID (fetched only then). The "
                       "result file records its identity, settings and sigma; a resume with "
                       "another denoiser, or none, is refused. Default --sigma: the "
                       "denoiser's")
    group.add_argument("--allow-denoiser-sigma-mismatch", action="store_true",
                       help="certify at a --sigma other than the one the denoiser was built "
                       "for (refused otherwise)")


def add_execution_options(parser: argparse.ArgumentParser) -> None:
    """How the model runs (smoothmix.execution). Each can move a logit in its last bits, so
    the result file records them and a resumed run or a shard reuses the recorded values
    (these flags' defaults); a value contradicting the file is refused."""
    group = parser.add_argument_group(
        "execution (recorded in the result file; a resume reuses the recorded values)")
    group.add_argument("--precision", default=None, metavar=choices_metavar(PRECISIONS),
                       help="fp32 (default) or bf16 autocast: on CPUs with AMX or "
                       "AVX-512-BF16 (and GPUs) faster; the certificate is then about the "
                       "classifier as run in bf16")
    group.add_argument("--layout", default=None, choices=LAYOUTS,
                       help="memory layout of model and noisy batch (default: channels_last "
                       "for convolutional models on CPU, the faster one there)")
    group.add_argument("--chunk", type=int, default=None, metavar="ROWS",
                       help=f"noisy images per forward pass (default: {CPU_CHUNK} on CPU, the "
                       "whole --noise-batch on GPU; fixed, never timed, so shards vote "
                       "identically)")
    group.add_argument("--compile", action="store_true", default=None,
                       help="torch.compile the model (opt-in; see the README's benchmark)")
    group.add_argument("--threads", type=int, default=None, metavar="T",
                       help="torch intra-op threads (default: torch's, i.e. the cores)")


def execution_options(args: argparse.Namespace) -> dict[str, object]:
    """The execution flags that were given (the rest: recorded values or defaults)."""
    return {key: getattr(args, key) for key in ("precision", "layout", "chunk", "compile",
                                                "threads")
            if getattr(args, key, None) is not None}


def run_certify(args: argparse.Namespace) -> int:
    check_certify_args(args.n0, args.n, args.alpha, args.batch)
    check_bound(args.bound)
    if args.radius is None:
        require(not args.no_label and args.sequence == "kt",
                "--sequence and --no-label need --radii")
    else:
        require(not args.skip_wrong, "--skip-wrong applies to CERTIFY, not to --radii "
                "(which tests the label's class already)")
        require(args.bound == "cohen", "--bound applies to CERTIFY's radius, not to --radii "
                "(which decides at given radii)")
    return _run(args, "certify")


def _radii(text: str) -> list[float]:
    try:
        return check_radii(text.split(","), "radii")
    except SmoothmixError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_predict(args: argparse.Namespace) -> int:
    check_predict_args(args.n, args.alpha, args.batch)
    return _run(args, "predict")


def run_merge(args: argparse.Namespace) -> int:
    from smoothmix.storage.merge import merge

    out = merge(args.out, args.shards)
    print(f"merged {len(args.shards)} shards into {out}")
    return 0


def _run(args: argparse.Namespace, kind: str) -> int:
    model, dataset, spec = prepare_run(args)
    before = _rows(Path(args.out))
    if kind == "certify" and args.radius is not None:
        out = decide_dataset(model, dataset, spec, args.out, radii=args.radius,
                             sequence=args.sequence, n0=args.n0, use_label=not args.no_label,
                             n=args.n, alpha=args.alpha)
    elif kind == "certify":
        out = certify_dataset(model, dataset, spec, args.out, n0=args.n0, n=args.n,
                              alpha=args.alpha, skip_wrong=args.skip_wrong, bound=args.bound)
    else:
        out = predict_dataset(model, dataset, spec, args.out, n=args.n, alpha=args.alpha)
    report(kind, out, already=before > 0 and before == _rows(out))
    if kind == "certify" and distributed_env()[0] == 0:
        _summary(out, args.sigma, decisions=args.radius is not None)
    return 0


def report(kind: str, out: Path, already: bool = False) -> None:
    """Say where the results are (rank 0 only), and that nothing was left to do."""
    rank, world, _ = distributed_env()
    if rank == 0:
        done = " (already complete: nothing to do)" if already else ""
        print(f"{kind} results in {out}{done}" +
              (f" (merged from {world} ranks)" if world > 1 else ""))


def _rows(path: Path) -> int:
    """Data lines in a result file (0 when there is none): to tell a rerun of a finished
    file from one that computed rows."""
    if not path.is_file():
        return 0
    with path.open() as fh:
        return max(0, sum(1 for _ in fh) - 1)


def _summary(out: Path, sigma: float, decisions: bool) -> None:
    """What `smoothmix analyze` would print for the file: certified accuracy at a few radii
    and the ACR (or the decisions' certified accuracy per radius)."""
    from smoothmix.analysis import (
        format_decisions,
        format_table,
        read_decisions,
        read_results,
        read_run_info,
    )
    from smoothmix.cli.analyze import model_sigma_note

    if decisions:
        print(format_decisions([read_decisions(out)]))
    else:
        results = read_results(out)
        radii = [k * sigma / 2 for k in range(5)]  # 0 to 2 sigma
        print(format_table([results], radii, "markdown", [out.name]))
    # Said again below the table: the warning before the run has scrolled away by now.
    note = model_sigma_note(out, read_run_info(out))
    if note is not None:
        print(f"warning: {note}")


def prepare_run(args: argparse.Namespace) -> tuple[Any, Any, RunSpec]:
    """Check the options of :func:`add_run_options`, load the model and the dataset, and
    return (model, dataset, the :class:`smoothmix.run.RunSpec` the dataset runners take)."""
    # Cheap checks before the (slow) model and data loading.
    if args.dataset is not None:  # else once the checkpoint has named it
        _check_grid_dataset(args)
    if getattr(args, "precision", None) is not None:
        from smoothmix.execution import check_precision

        check_precision(args.precision)
    shard = parse_shard(args.shard) if args.shard is not None else None
    fields = _spec_fields(args, shard)
    if args.sigma is not None:  # the spec, built now, checks its fields (sigma, skip, max, ...)
        RunSpec.of(args.sigma, **fields)
    from smoothmix.checkpoint import (
        Checkpoint,
        check_checkpoint_for_dataset,
        check_model_fits_dataset,
        checkpoint_file,
        file_sha256,
        load_model,
    )
    from smoothmix.data import load_dataset
    from smoothmix.device import resolve_device

    device = resolve_device(args.device)
    args.checkpoint = checkpoint_file(args.checkpoint)  # a training --outdir works too
    model, ckpt = load_model(args.checkpoint, device, args.normalization)
    record = Checkpoint.from_dict(ckpt)  # with the normalisation load_model chose
    denoiser = _load_denoiser(args)
    _defaults_from_checkpoint(args, record)
    _check_grid_dataset(args)
    check_checkpoint_for_dataset(ckpt, args.dataset, args.checkpoint)
    identity = {  # a pretrained model: its weights file's hash, and its name
        "checkpoint_sha256": ckpt.get("weights_sha256") or file_sha256(args.checkpoint),
        **({"pretrained": ckpt["pretrained"]} if "pretrained" in ckpt else {}),
        "arch": record.arch,
        "normalization": record.normalization,
        "dataset": args.dataset,
        "split": args.split,
    }
    # Before the dataset is loaded (the spec checks its fields), its classes after.
    spec = RunSpec.of(args.sigma, identity=identity, model_sigma=_model_sigma(args, record),
                      **fields)
    dataset = load_dataset(args.dataset, args.split, args.data_dir)
    check_model_fits_dataset(model, ckpt, dataset, args.dataset, args.checkpoint)
    spec = spec.replace(num_classes=dataset.num_classes)
    if denoiser is not None:
        from smoothmix.denoisers import Denoised

        model = Denoised(model, denoiser[0].to(device), denoiser[1])
    return model, dataset, spec


def _spec_fields(args: argparse.Namespace, shard: Any) -> dict[str, Any]:
    """The :class:`smoothmix.run.RunSpec` fields the options give (the noise's grid too)."""
    return {"grid": getattr(args, "grid", None), "batch_size": args.batch, "skip": args.skip,
            "max_idx": args.max_idx, "shard": shard, "seed": args.seed,
            "progress": not args.no_progress, "execution": execution_options(args),
            "allow_denoiser_sigma_mismatch": bool(getattr(args,
                                                          "allow_denoiser_sigma_mismatch",
                                                          False))}


def _load_denoiser(args: argparse.Namespace) -> tuple[Any, dict[str, Any]] | None:
    """The ``--denoiser`` and its record (None without one); ``--sigma`` not given: the
    denoiser's (said in one line), before the classifier's is considered."""
    if getattr(args, "denoiser", None) is None:
        require(not getattr(args, "allow_denoiser_sigma_mismatch", False),
                "--allow-denoiser-sigma-mismatch needs --denoiser")
        return None
    from smoothmix.denoisers import load_denoiser

    module, record = load_denoiser(args.denoiser, sigma=args.sigma)
    if args.sigma is None and record.get("sigma") is not None:
        args.sigma = check_sigma(float(record["sigma"]))
        if distributed_env()[0] == 0:
            print(f"smoothmix: --sigma {args.sigma:g} from the denoiser (a flag overrides it)",
                  file=sys.stderr)
    args.denoised = True  # the classifier's training sigma is no longer the one that matters
    return module, record


def _defaults_from_checkpoint(args: argparse.Namespace, record: Any) -> None:
    """--dataset and --sigma not given: the checkpoint's (said in one line); a sigma other
    than the one the model was trained at is allowed but warned about."""
    from smoothmix.models import list_models, model_defaults

    taken = []
    if args.dataset is None:
        arch_dataset = (model_defaults(record.arch).dataset
                        if record.arch in list_models() else None)
        args.dataset = record.settings().get("dataset") or arch_dataset
        require(args.dataset is not None, f"{args.checkpoint} does not record its dataset "
                "(a reference or own-architecture checkpoint): pass --dataset")
        taken.append(f"--dataset {args.dataset}")
    if args.sigma is None:
        # A model trained without noise (method plain) has no sigma of its own to default to.
        require(record.config.get("noise") != "none", f"{args.checkpoint} was trained "
                f"without noise (method {record.method}): pass --sigma, the noise level to "
                "certify at")
        require(record.sigma is not None, f"{args.checkpoint} does not record the sigma it "
                "was trained at (a reference checkpoint?): pass --sigma")
        args.sigma = check_sigma(float(record.sigma))
        taken.append(f"--sigma {args.sigma:g}")
    main_rank = distributed_env()[0] == 0
    if taken and main_rank:
        origin = "the model card" if record.extra.get("pretrained") else "the checkpoint"
        print(f"smoothmix: {' and '.join(taken)} from {origin} (a flag overrides it)",
              file=sys.stderr)
    denoised = getattr(args, "denoised", False)
    if record.sigma is not None and float(record.sigma) != args.sigma and main_rank \
            and not denoised:
        print(f"smoothmix: warning: certifying at sigma={args.sigma:g} a model trained at "
              f"sigma={float(record.sigma):g}: the certificate is sound for the smoothed "
              "classifier at the sigma certified, but such a model is usually far less "
              "accurate under that noise (the result file records model_sigma)",
              file=sys.stderr)


def _model_sigma(args: argparse.Namespace, record: Any) -> float | None:
    """The sigma the model was trained at, for the result file's info (None when the
    checkpoint does not record one, or a denoiser stands in front: then the classifier's
    training sigma is not the one the certificate depends on)."""
    if getattr(args, "denoised", False) or record.sigma is None:
        return None
    return float(record.sigma)


def _check_grid_dataset(args: argparse.Namespace) -> None:
    """Refuse --grid early for a dataset registered off the grid (``on_grid=False``: float
    transforms); an unknown one is left to the check of each image as it is certified."""
    if getattr(args, "grid", None) is None:
        return
    from smoothmix.data import dataset_defaults

    require(dataset_defaults(args.dataset).on_grid is not False,
            f"--grid needs inputs on the 8-bit grid; dataset {args.dataset} is registered "
            "with on_grid=False (its images go through float transforms), so they are not")
