"""The training loop: one loop for every method, one CPU to many GPUs.

:func:`fit` knows nothing about any training method: each step it calls
``method(model, x, y, epoch, **side)`` and back-propagates the returned loss (``side``: the
batch's rows of the per-example data the method declares in ``side_data``, which the data
layer looks up by dataset index; empty for most methods). Around that it owns
the optimiser (SGD + step schedule), the per-epoch log (CSV + TensorBoard), the noisy test
accuracy, the progress bar, the atomic per-epoch checkpoint and exact resume, and the
torchrun/DistributedDataParallel plumbing.

Exact resume: the checkpoint written after epoch e holds the model, optimiser, scheduler and
the RNG states of every rank as they were at the end of epoch e; a resumed run restores them
and continues with epoch e + 1, so a killed run loses at most the epoch in progress and,
on CPU, ends with the same weights as an uninterrupted run. Data order depends only on
(seed, epoch) through ``set_epoch``; the noisy test evaluation draws from its own generator
so that it does not move the training RNG.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from smoothmix import distributed
from smoothmix.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from smoothmix.device import resolve_device
from smoothmix.errors import SmoothmixError, first_line, require
from smoothmix.methods.base import method_side_data
from smoothmix.progress import Progress
from smoothmix.provenance import provenance

LOG_NAME = "log.csv"

# Settings that define the optimisation trajectory: changing one on resume would silently
# train a different recipe, so resume refuses it. (epochs may grow; device, amp, compile,
# channels_last, workers, progress, test batch size may change.)
# Metadata that may change between a run and its resume (not part of the recipe).
_FREE_METADATA = frozenset({"test_subset", "preset"})
_RECIPE_FIELDS = ("batch_size", "lr", "momentum", "weight_decay", "lr_step", "lr_gamma",
                  "lr_milestones", "seed", "precision")


@dataclass
class TrainConfig:
    """Optimiser, schedule and execution settings of one training run.

    ``batch_size`` is the number of images per optimiser step summed over all ranks (each
    image is expanded to the method's noise copies inside the method). The learning rate is
    multiplied by ``lr_gamma`` every ``lr_step`` epochs, or at ``lr_milestones`` when given.
    ``precision`` "bf16" runs the method's forward passes under bfloat16 autocast (the fast
    path on GPUs and on CPUs with AMX or AVX-512-BF16; see benchmarks/train_throughput.py);
    it changes the trajectory, so a resume keeps it. ``amp=True`` is its older spelling
    (deprecated). ``channels_last`` (None:
    on for image models, measured faster on CPU and GPU convnets) sets the memory format of
    model and inputs; ``compile`` (``torch.compile``) is opt-in; on CUDA the SGD step is fused.
    """

    epochs: int = 90
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 30
    lr_gamma: float = 0.1
    lr_milestones: tuple[int, ...] | None = None
    seed: int = 0
    device: str | None = None
    precision: str = "fp32"
    amp: bool = False  # deprecated spelling of precision="bf16"; kept equal to it
    compile: bool = False
    channels_last: bool | None = None
    # Opt-in: capture each epoch's fixed-shape step as a CUDA graph and replay it per batch
    # (drop-last batches; see smoothmix.training.graphs). Not yet run on a GPU.
    cuda_graphs: bool = False
    workers: int | None = None  # None: min(4, CPU cores), data.loaders.default_workers
    test_batch_size: int | None = None
    log_every: int = 20
    progress: bool = True

    def __post_init__(self) -> None:
        from smoothmix.execution import check_precision

        if self.amp:
            self.precision = "bf16"
        check_precision(self.precision)
        self.amp = self.precision == "bf16"

    def validate(self) -> None:
        require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        require(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        require(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        require(self.lr_step >= 1, f"lr step must be >= 1 epoch, got {self.lr_step}")
        require(0 < self.lr_gamma <= 1, f"lr gamma must be in (0, 1], got {self.lr_gamma}")
        if self.lr_milestones is not None:
            ms = list(self.lr_milestones)
            require(all(m >= 1 for m in ms) and ms == sorted(ms),
                    f"lr milestones must be increasing epochs >= 1, got {ms}")
        require(self.workers is None or self.workers >= 0,
                f"workers must be >= 0, got {self.workers}")
        require(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        require(self.test_batch_size is None or self.test_batch_size >= 1,
                f"test batch size must be >= 1, got {self.test_batch_size}")

    def first_lr_drop(self) -> int:
        """Epoch index at which the learning rate first drops (MACER's ``--deferred``)."""
        return self.lr_milestones[0] if self.lr_milestones else self.lr_step

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones) if self.lr_milestones else None
        return d


# --------------------------------------------------------------------------- RNG state


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _rank_seed(seed: int, rank: int) -> int:
    # Different noise per rank; rank 0 keeps the plain seed so 1-process runs are unchanged.
    return seed + 1_000_003 * rank


# --------------------------------------------------------------------------- helpers


def check_outdir(outdir: Path, resume: bool) -> bool:
    """Decide whether this run resumes; refuse to overwrite anything.

    Returns True when a checkpoint exists and ``resume`` is set. ``resume`` with an empty or
    missing outdir starts fresh (so a requeued job script can always pass ``--resume``), and
    so does one holding only what a run killed before its first checkpoint left behind.
    """
    ckpt = outdir / CHECKPOINT_NAME
    require(not outdir.exists() or outdir.is_dir(), f"--outdir {outdir} exists and is not a "
            "directory")
    nonempty = outdir.is_dir() and any(outdir.iterdir())
    if resume:
        if ckpt.is_file():
            return True
        require(not nonempty or _stopped_before_first_checkpoint(outdir),
                f"cannot resume: {outdir} has no {CHECKPOINT_NAME} and holds files other "
                "than those of a run stopped before its first checkpoint; choose another "
                "--outdir")
        return False
    require(not nonempty, f"--outdir {outdir} is not empty; pass --resume to continue the run "
            "there, or choose a new --outdir (nothing was overwritten)")
    return False


def _stopped_before_first_checkpoint(outdir: Path) -> bool:
    """Whether ``outdir`` holds only what a run killed during its first epoch leaves: a
    ``log.csv`` without rows, TensorBoard event files and a torn checkpoint temp file.
    ``--resume`` starts such a run from the beginning; anything else is not ours to reuse."""
    for entry in outdir.iterdir():
        name = entry.name
        if name == LOG_NAME:
            with entry.open(newline="") as f:
                if len([row for row in csv.reader(f) if row]) > 1:
                    return False  # logged epochs: not a run that never checkpointed
        elif not (entry.is_file() and (name.startswith("events.out.tfevents.")
                                       or name == LOG_NAME + ".tmp"
                                       or (name.startswith(f".{CHECKPOINT_NAME}.")
                                           and name.endswith(".tmp")))):
            return False
    return True


def _describe(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def check_compatible(ckpt: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
    """One-line error when ``current`` (run identity + recipe) disagrees with the checkpoint."""
    saved = dict(ckpt.get("config") or {})
    saved.update({k: ckpt.get(k) for k in ("arch", "method", "sigma", "num_classes")})
    saved["arch_kwargs"] = dict(ckpt.get("arch_kwargs") or {})  # none recorded: built without
    if ckpt.get("config"):  # runs before 0.3 stored only amp
        saved.setdefault("precision", "bf16" if saved.get("amp") else "fp32")
    saved.setdefault("method_options", ckpt.get("method_options"))
    diffs = []
    for key, value in current.items():
        if key not in saved:
            continue
        old = saved[key]
        if isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
            old, value = list(old), list(value)
        if isinstance(old, float) or isinstance(value, float):
            same = old is not None and value is not None and math.isclose(old, value)
        else:
            same = old == value
        if not same:
            diffs.append(f"{key} {_describe(old)} -> {_describe(value)}")
    require(not diffs, f"cannot resume {path}: the run there differs ({'; '.join(diffs)}); "
            "use the original settings or a new --outdir")


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    if config.lr_milestones:
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(config.lr_milestones), gamma=config.lr_gamma)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step,
                                           gamma=config.lr_gamma)


def _make_optimizer(model: nn.Module, config: TrainConfig,
                    device: torch.device) -> torch.optim.Optimizer:
    kwargs = dict(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if device.type == "cuda":
        # One fused kernel for the whole update instead of a launch per parameter.
        try:
            return torch.optim.SGD(model.parameters(), fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.SGD(model.parameters(), **kwargs)


class _CsvLog:
    """``log.csv``, one row per epoch; on resume rows after the checkpoint are dropped."""

    def __init__(self, path: Path, resume_epoch: int | None) -> None:
        self.path = path
        self.columns: list[str] | None = None
        if resume_epoch is not None and path.is_file():
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            if rows:
                self.columns = rows[0]
                kept = [r for r in rows[1:] if r and int(r[0]) <= resume_epoch]
                self._write_all([rows[0], *kept])

    def _write_all(self, rows: list[list[str]]) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows(rows)
        tmp.replace(self.path)

    def append(self, row: Mapping[str, Any]) -> None:
        if self.columns is None:
            self.columns = list(row)
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_csv_value(row.get(c, "")) for c in self.columns])


def _csv_value(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _open_tensorboard(outdir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a broken install must not stop training
        return None
    # purge_step drops events logged after the checkpoint by a killed run.
    return SummaryWriter(log_dir=str(outdir), purge_step=purge_step)


@torch.no_grad()
def evaluate_noisy(model: nn.Module, loader: Iterable, sigma: float, seed: int,
                   amp: bool = False, channels_last: bool = False) -> torch.Tensor:
    """Top-1 accuracy and CE loss of the base classifier on one Gaussian draw per image.

    Returns a device tensor ``[correct, loss_sum, count]`` (summed, not averaged, so that
    ranks can all-reduce it). The noise comes from a private generator seeded by ``seed``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    totals = torch.zeros(3, device=device, dtype=torch.float64 if device.type == "cpu"
                         else torch.float32)
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        noisy = x + sigma * torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype)
        if channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(noisy)
        logits = logits.float()
        totals[0] += (logits.argmax(1) == y).sum()
        totals[1] += nn.functional.cross_entropy(logits, y, reduction="sum")
        totals[2] += y.numel()
    model.train(was_training)
    return totals


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if distributed.is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _gather_objects(obj: Any) -> list[Any]:
    if not distributed.is_distributed():
        return [obj]
    out: list[Any] = [None] * distributed.world_size()
    dist.all_gather_object(out, obj)
    return out


def _check_accepts_input(model: nn.Module, dataset: Any, device: torch.device,
                         num_classes: int | None) -> int:
    """A wrong arch/dataset pairing fails here with one line, not deep inside a method.
    Returns the number of dimensions of one example (3 for C x H x W images)."""
    try:
        x, _ = dataset[0]
    except Exception as exc:
        raise SmoothmixError(f"cannot read the first training example: {first_line(exc)}") \
            from exc
    x = torch.as_tensor(x)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.unsqueeze(0).to(device=device, dtype=torch.float32))
    except (RuntimeError, ValueError, IndexError) as exc:
        raise SmoothmixError(f"the model does not accept this dataset's images of shape "
                             f"{tuple(x.shape)}: {first_line(exc)}") from exc
    finally:
        model.train(was_training)
    shape = tuple(getattr(out, "shape", ()))
    require(len(shape) == 2 and (num_classes is None or shape[1] == num_classes),
            f"the model must output one logit per class, shape (batch, {num_classes}); it "
            f"outputs {shape}")
    return x.dim()


def _num_classes(train_set: Any, method: Any, given: int | None) -> int | None:
    for value in (given, getattr(train_set, "num_classes", None),
                  getattr(method, "num_classes", None)):
        if value is not None:
            return int(value)
    return None


# --------------------------------------------------------------------------- fit


@dataclass
class _Run:
    """Everything one training run holds between its named steps (see :func:`fit`)."""

    config: TrainConfig
    outdir: Path
    ckpt_path: Path
    device: torch.device
    rank: int
    world: int
    main: bool
    sigma: float
    raw_model: nn.Module  # the model itself: evaluated and saved
    train_model: nn.Module  # what the method calls (DDP / compiled wrapper of raw_model)
    channels_last: bool
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    test_loader: Any | None
    steps_per_epoch: int
    start_epoch: int
    amp_ctx: Any
    identity: dict[str, Any]  # what the checkpoint stores besides the training state
    config_dict: dict[str, Any]
    csv_log: _CsvLog | None = None
    tb: Any = None
    step_graph: Any = None  # StepGraph with --cuda-graphs (created at the first epoch)


def fit(
    model: nn.Module,
    method: Any,
    train_set: Any,
    test_set: Any | None,
    config: TrainConfig,
    outdir: str | Path,
    resume: bool = False,
    *,
    sigma: float | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Train ``model`` with ``method`` and return the path of the final checkpoint.

    ``model`` is any ``nn.Module`` mapping [0, 1] images to logits (normalisation as its first
    layer, like :func:`smoothmix.models.create_model`); ``method`` is any callable
    ``method(model, x, y, epoch) -> StepOutput`` (see :mod:`smoothmix.methods`); the datasets
    yield ``(image, label)``. A method that declares ``side_data`` names also gets those rows
    as keyword arguments, from the tables attached to ``train_set``
    (:func:`smoothmix.data.loaders.attach_side_data`). ``sigma`` (default ``method.sigma``)
    is the noise level of the noisy test accuracy. ``metadata`` is stored in the checkpoint:
    ``arch``, ``arch_kwargs``, ``normalization``, ``num_classes``, ``method``,
    ``method_options`` and any other plain values (they also take part in the resume
    compatibility check).

    Writes ``outdir/checkpoint.pth.tar`` (atomically, every epoch), ``outdir/log.csv`` and
    TensorBoard events. A non-empty ``outdir`` is refused unless ``resume``; with ``resume``
    the run continues exactly from the checkpoint there. Under torchrun the model is wrapped
    in DistributedDataParallel, each rank trains on its shard of the data, and rank 0 alone
    writes files.

    The steps: :func:`_set_up` (checks, resume, model, optimiser, loaders, RNG), then per
    epoch :func:`_train_epoch`, :func:`_evaluate` and :func:`_save_epoch` (checkpoint, log).
    """
    run = _set_up(model, method, train_set, test_set, config, Path(outdir), resume, sigma,
                  metadata)
    config = run.config
    if run.main and run.start_epoch >= config.epochs:
        print(f"{run.outdir} already holds {run.start_epoch} trained "
              f"epoch{'' if run.start_epoch == 1 else 's'} (>= "
              f"{config.epochs}); nothing to do (pass a larger --epochs to train further)",
              flush=True)
    bar = None
    if run.main and config.progress and run.start_epoch < config.epochs:
        # A bar on terminals; in a log file a progress line at least once a minute.
        bar = Progress(config.epochs * run.steps_per_epoch,
                       initial=run.start_epoch * run.steps_per_epoch, unit="step",
                       desc=f"train {run.outdir.name}")
    try:
        for epoch in range(run.start_epoch, config.epochs):
            t0 = time.time()
            row = _train_epoch(run, method, epoch, bar)
            row.update(_evaluate(run, epoch))
            row["time_s"] = time.time() - t0
            _save_epoch(run, epoch, row, bar)
    finally:
        if bar is not None:
            bar.close()
        if run.tb is not None:
            run.tb.close()
    return run.ckpt_path


def _set_up(model: nn.Module, method: Any, train_set: Any, test_set: Any | None,
            config: TrainConfig, outdir: Path, resume: bool, sigma: float | None,
            metadata: Mapping[str, Any] | None) -> _Run:
    """Check the settings and the outdir (on every rank, before anything is written), build
    device, model wrappers, optimiser, schedule and loaders, restore a resumed run's state
    and seed (or restore) the RNG right before the first epoch."""
    from smoothmix.data import make_loader  # deferred: data imports are heavy (torchvision)

    config.validate()
    meta = dict(metadata or {})
    sigma = float(sigma if sigma is not None else getattr(method, "sigma", float("nan")))
    require(math.isfinite(sigma) and sigma > 0,
            f"sigma must be a positive number of [0, 1] pixel units, got {sigma}")

    device = resolve_device(config.device)
    _, env_world, local_rank = distributed.distributed_env()
    if env_world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)  # one GPU per torchrun process
    is_dist = distributed.init_distributed(device)
    rank, world = distributed.rank(), distributed.world_size()
    require(config.batch_size % world == 0,
            f"--batch {config.batch_size} is not divisible by the {world} processes; each "
            "rank trains on batch/world images per step")
    per_rank_batch = config.batch_size // world
    main = rank == 0

    method_name = str(meta.pop("method", getattr(method, "name", type(method).__name__)))
    method_config = method.config() if callable(getattr(method, "config", None)) else None
    method_opts = dict(meta.pop("method_options", None) or method_config or {})
    arch = meta.pop("arch", None)
    arch_kwargs = dict(meta.pop("arch_kwargs", None) or {})
    normalization = meta.pop("normalization", None)
    num_classes = _num_classes(train_set, method, meta.pop("num_classes", None))

    # ---- decide fresh vs resume on every rank before anything is written.
    resuming = check_outdir(outdir, resume)
    ckpt_path = outdir / CHECKPOINT_NAME
    ckpt: dict[str, Any] | None = None
    if resuming:
        ckpt = load_checkpoint(ckpt_path)
        current = {"arch": arch, "arch_kwargs": arch_kwargs, "method": method_name,
                   "sigma": sigma,
                   "num_classes": num_classes, "method_options": method_opts,
                   **{k: v for k, v in meta.items() if k not in _FREE_METADATA}}
        current.update({k: getattr(config, k) for k in _RECIPE_FIELDS})
        current["lr_milestones"] = config.to_dict()["lr_milestones"]
        check_compatible(ckpt, current, ckpt_path)
    distributed.barrier()  # nobody writes until every rank has checked the outdir

    raw_model = model.to(device)
    input_dims = _check_accepts_input(raw_model, train_set, device, num_classes)
    # Auto (None): channels_last for image models. Measured on 2 CPU cores it makes the
    # SmoothMix/LeNet step ~1.6x faster (the input gradient of a 1-channel conv is slow
    # in NCHW); on GPUs it is the layout tensor cores want.
    channels_last = config.channels_last if config.channels_last is not None else input_dims == 3
    if channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(raw_model, config, device)
    scheduler = _make_scheduler(optimizer, config)

    start_epoch = 0
    if ckpt is not None:
        try:
            raw_model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise SmoothmixError(f"cannot resume from {ckpt_path}: {first_line(exc)}") from exc
        start_epoch = int(ckpt["epoch"])

    train_model: nn.Module = raw_model
    if is_dist:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(raw_model, device_ids=[device.index] if device.type == "cuda"
                          else None)
    if config.compile:
        train_model = torch.compile(train_model)

    require(not (config.cuda_graphs and (is_dist or config.compile)),
            "--cuda-graphs runs on one process without --compile (it captures the eager step)")
    train_loader = make_loader(train_set, per_rank_batch, device, train=True, seed=config.seed,
                               rank=rank, world_size=world, workers=config.workers,
                               side=method_side_data(method),
                               drop_last=config.cuda_graphs)  # a replayed step has one shape
    steps_per_epoch = len(train_loader)
    require(steps_per_epoch > 0, "the training set yields no batch: it is empty or smaller "
            "than one batch per process")
    test_loader = None
    if test_set is not None and len(test_set) > 0:
        test_loader = make_loader(test_set, config.test_batch_size or max(per_rank_batch, 256),
                                  device, train=False, seed=config.seed, rank=rank,
                                  world_size=world, workers=config.workers)

    csv_log = tb = None
    if main:
        outdir.mkdir(parents=True, exist_ok=True)
        csv_log = _CsvLog(outdir / LOG_NAME, start_epoch if ckpt is not None else None)
        tb = _open_tensorboard(outdir, start_epoch + 1 if ckpt is not None else None)

    # ---- RNG: restore exactly, or seed fresh (per rank) right before the first epoch.
    saved_rng = (ckpt or {}).get("rng")
    if isinstance(saved_rng, list) and len(saved_rng) == world:
        restore_rng_state(saved_rng[rank])
    else:
        if ckpt is not None and main:
            print(f"note: checkpoint RNG state was saved by {len(saved_rng or [])} process(es), "
                  f"now {world}; reseeding (the run continues, but not bit-for-bit)")
        seed_everything(_rank_seed(config.seed + start_epoch, rank))
    del ckpt

    amp_ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if config.amp \
        else contextlib.nullcontext
    identity = {"arch": arch, "arch_kwargs": arch_kwargs, "num_classes": num_classes,
                "normalization": normalization,
                "method": method_name, "method_options": method_opts,
                "method_config": method_config, "sigma": sigma}
    return _Run(config=config, outdir=outdir, ckpt_path=ckpt_path, device=device, rank=rank,
                world=world, main=main, sigma=sigma, raw_model=raw_model,
                train_model=train_model, channels_last=channels_last, optimizer=optimizer,
                scheduler=scheduler, train_loader=train_loader, test_loader=test_loader,
                steps_per_epoch=steps_per_epoch, start_epoch=start_epoch, amp_ctx=amp_ctx,
                identity=identity, config_dict={**config.to_dict(), **meta, "world_size": world},
                csv_log=csv_log, tb=tb)


def _train_epoch(run: _Run, method: Any, epoch: int, bar: Any) -> dict[str, Any]:
    """One pass over the training data; returns the log row's epoch, lr and train means
    (summed on the device, all-reduced over ranks, read back once)."""
    config, device = run.config, run.device
    for loader in (run.train_loader, run.test_loader):
        set_epoch = getattr(loader, "set_epoch", None)
        if set_epoch is None:
            set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
    lr = run.optimizer.param_groups[0]["lr"]
    if bar is not None:
        bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
    run.train_model.train()
    keys: list[str] | None = None
    sums: torch.Tensor | None = None
    count = 0
    for step, batch in enumerate(run.train_loader):
        x = batch[0].to(device, non_blocking=True)
        y = batch[1].to(device, non_blocking=True)
        side = batch[2] if len(batch) > 2 else {}  # already on the device
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if config.cuda_graphs:
            if run.step_graph is None:
                from smoothmix.training.graphs import StepGraph

                run.step_graph = StepGraph(run.train_model, method, run.optimizer, config.amp)
            values, keys = run.step_graph.step(x, y, side, epoch)
        else:
            with run.amp_ctx():
                out = method(run.train_model, x, y, epoch, **side)
            run.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            run.optimizer.step()
            if keys is None:
                keys = [k for k in out.metrics if k != "loss"]
            # Accumulate on the device; read back once per log interval / epoch.
            values = torch.stack([out.loss.detach().float(),
                                  *(out.metrics[k].detach().float().reshape(()) for k in keys)])
        n = int(y.shape[0])
        sums = values * n if sums is None else sums + values * n
        count += n
        if bar is not None:
            bar.update(1)
            if step % config.log_every == 0:
                bar.set_postfix(loss=f"{float(sums[0]) / count:.4f}", lr=f"{lr:.3g}")
    assert sums is not None and keys is not None
    acc = sums.double() if device.type == "cpu" else sums
    totals = _all_reduce_sum(torch.cat([acc, acc.new_tensor([count])]))
    run.scheduler.step()

    row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
    values_host = totals.tolist()
    n_total = values_host[-1]
    row["train_loss"] = values_host[0] / n_total
    # Checked once per epoch (no per-step sync); the last good checkpoint is kept.
    require(math.isfinite(row["train_loss"]),
            f"training diverged in epoch {epoch + 1} (train loss {row['train_loss']}); "
            f"the checkpoint of epoch {epoch} is kept — lower --lr and --resume, or "
            "start again")
    for k, v in zip(keys, values_host[1:-1], strict=True):
        row[f"train_{k}"] = v / n_total
    return row


def _evaluate(run: _Run, epoch: int) -> dict[str, Any]:
    """Noisy test accuracy and loss (one Gaussian draw per test image), or nothing."""
    if run.test_loader is None:
        return {}
    config = run.config
    t = _all_reduce_sum(evaluate_noisy(
        run.raw_model, run.test_loader, run.sigma,
        seed=_rank_seed(config.seed + epoch, run.rank), amp=config.amp,
        channels_last=run.channels_last)).tolist()
    return {"test_noisy_acc": t[0] / max(t[2], 1), "test_noisy_loss": t[1] / max(t[2], 1)}


def _save_epoch(run: _Run, epoch: int, row: dict[str, Any], bar: Any) -> None:
    """The atomic checkpoint (with every rank's RNG state), the log row, TensorBoard and
    the epoch line, written by rank 0; then every rank waits for it."""
    rng = _gather_objects(capture_rng_state())
    if run.main:
        ident = run.identity
        save_checkpoint(run.ckpt_path, {
            "arch": ident["arch"],
            "arch_kwargs": ident["arch_kwargs"],
            "state_dict": run.raw_model.state_dict(),
            "num_classes": ident["num_classes"],
            "normalization": ident["normalization"],
            "epoch": epoch + 1,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": rng,
            "method": ident["method"],
            "method_options": ident["method_options"],
            "method_config": ident["method_config"],
            "sigma": ident["sigma"],
            "config": run.config_dict,
            "metrics": {k: v for k, v in row.items() if isinstance(v, float)},
            **provenance(),  # the release (and commit) that wrote this epoch
        })
        assert run.csv_log is not None
        run.csv_log.append(row)
        if run.tb is not None:
            for k, v in row.items():
                if k != "epoch":
                    run.tb.add_scalar(k.replace("_", "/", 1), v, epoch + 1)
            run.tb.flush()
        summary = f"epoch {epoch + 1}/{run.config.epochs}: loss {row['train_loss']:.4f}"
        if "train_acc" in row:
            summary += f" acc {row['train_acc']:.3f}"
        if "test_noisy_acc" in row:
            summary += f" noisy test acc {row['test_noisy_acc']:.3f}"
        summary += f" ({row['time_s']:.1f} s)"
        if bar is not None:
            bar.write(summary)
        else:
            print(summary, flush=True)
    distributed.barrier()
