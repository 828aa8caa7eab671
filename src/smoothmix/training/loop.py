"""The training loop: one loop for every method, one CPU to many GPUs.

:func:`fit` knows nothing about any training method: each step it calls
``method(model, x, y, epoch, **side)`` and back-propagates the returned loss (``side``: the
batch's rows of the per-example data the method declares in ``side_data``, which the data
layer looks up by dataset index; empty for most methods). The loop proper owns the optimiser
(SGD + step schedule), the training pass, the progress bar and exact resume; how a step
executes (device, torchrun/DDP, ``torch.compile``, bf16, CUDA graphs) is the
:class:`~smoothmix.training.strategy.ExecutionStrategy`'s, and what happens around the epochs
(noisy test accuracy, the atomic per-epoch checkpoint, ``log.csv``, TensorBoard) are
:mod:`~smoothmix.training.callbacks`.

Exact resume: the checkpoint written after epoch e holds the model, optimiser, scheduler and
the RNG states of every rank as they were at the end of epoch e; a resumed run restores them
and continues with epoch e + 1, so a killed run loses at most the epoch in progress and,
on CPU, ends with the same weights as an uninterrupted run. Data order depends only on
(seed, epoch) through ``set_epoch``; the noisy test evaluation draws from its own generator
so that it does not move the training RNG.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smoothmix.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    read_checkpoint,
    restore_rng_state,
)
from smoothmix.checks import check_sigma
from smoothmix.errors import SmoothmixError, first_line, require
from smoothmix.methods.base import TrainingMethod, method_side_data
from smoothmix.progress import Progress
from smoothmix.storage import settings_diff
from smoothmix.training.callbacks import (
    LOG_NAME,
    Callback,
    default_callbacks,
    evaluate_noisy,
    rank_seed,
    set_loader_epoch,
)
from smoothmix.training.recipe import (
    RECIPE_FIELDS,
    SCHEDULE_FIELDS,
    compared,
)
from smoothmix.training.strategy import ExecutionStrategy

__all__ = ["LOG_NAME", "Run", "TrainConfig", "check_compatible", "check_outdir",
           "evaluate_noisy", "fit", "seed_everything"]

# Metadata that may change between a run and its resume (not part of the recipe, which is
# smoothmix.training.recipe.RECIPE_FIELDS: epochs may grow; device, amp, compile,
# channels_last, workers, progress, test batch size may change).
_FREE_METADATA = frozenset({"preset"})


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
    on for image models: the faster format for convnets on CPUs and GPUs, see the README's
    Speed section) sets the memory format of
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


# --------------------------------------------------------------------------- RNG state


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)



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


def check_compatible(ckpt: Checkpoint | Mapping[str, Any], current: Mapping[str, Any],
                     path: Path) -> None:
    """One-line error when ``current`` (run identity + recipe) disagrees with the checkpoint
    (the one recipe comparison, :func:`smoothmix.training.recipe.compared`; the
    epoch count is free here: :func:`smoothmix.training.train` decides extensions)."""
    record = ckpt if isinstance(ckpt, Checkpoint) else Checkpoint.from_dict(ckpt)
    saved = record.settings()
    also = [k for k in current if k not in RECIPE_FIELDS]
    diff = settings_diff(*compared(saved, current, skip=("epochs",), also=also), limit=5)
    require(not diff, f"cannot resume {path}: the run there differs ({diff}); "
            "use the original settings or a new --outdir")


def _make_scheduler(optimizer: torch.optim.Optimizer,
                    config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if config.lr_milestones:
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(config.lr_milestones), gamma=config.lr_gamma)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step,
                                           gamma=config.lr_gamma)


def _make_optimizer(model: nn.Module, config: TrainConfig,
                    device: torch.device) -> torch.optim.Optimizer:
    def sgd(**fused: bool) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, **fused)

    if device.type == "cuda":
        # One fused kernel for the whole update instead of a launch per parameter.
        try:
            return sgd(fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return sgd()




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
class Run:
    """Everything one training run holds between its named steps (see :func:`fit`); what
    callbacks receive."""

    config: TrainConfig
    outdir: Path
    strategy: ExecutionStrategy
    raw_model: nn.Module  # the model itself: evaluated and saved
    train_model: nn.Module  # what the method calls (DDP / compiled wrapper of raw_model)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    per_rank_batch: int
    start_epoch: int
    resumed: bool  # continues from a checkpoint in outdir
    identity: dict[str, Any]  # what the checkpoint stores besides the training state
    config_dict: dict[str, Any]
    callbacks: list[Callback] = field(default_factory=list)
    bar: Progress | None = None

    @property
    def ckpt_path(self) -> Path:
        return self.outdir / CHECKPOINT_NAME

    @property
    def main(self) -> bool:
        return self.strategy.main

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def call(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)


def fit(
    model: nn.Module,
    method: TrainingMethod,
    train_set: Any,
    test_set: Any | None,
    config: TrainConfig,
    outdir: str | Path,
    resume: bool = False,
    *,
    sigma: float | None = None,
    metadata: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train ``model`` with ``method`` and return the path of the final checkpoint.

    ``model`` is any ``nn.Module`` mapping [0, 1] images to logits (normalisation as its first
    layer, like :func:`smoothmix.models.create_model`); ``method`` a
    :class:`~smoothmix.methods.base.TrainingMethod` (or any object called the same way,
    ``method(model, x, y, epoch) -> StepOutput``); the datasets yield ``(image, label)``. A
    method that declares ``side_data`` names also gets those rows as keyword arguments, from
    the tables attached to ``train_set`` (:func:`smoothmix.data.loaders.attach_side_data`).
    ``sigma`` (default ``method.sigma``) is the noise level of the noisy test accuracy and is
    stored with the run. ``metadata`` is stored in the checkpoint: ``arch``, ``arch_kwargs``,
    ``normalization``, ``num_classes``, ``method``, ``method_options`` and any other plain
    values (they also take part in the resume compatibility check). ``callbacks`` run after
    the default ones (:mod:`smoothmix.training.callbacks`).

    Writes ``outdir/checkpoint.pth.tar`` (atomically, every epoch), ``outdir/log.csv`` and
    TensorBoard events. A non-empty ``outdir`` is refused unless ``resume``; with ``resume``
    the run continues exactly from the checkpoint there. Under torchrun the model is wrapped
    in DistributedDataParallel, each rank trains on its shard of the data, and rank 0 alone
    writes files.

    The steps: :func:`_set_up`, then per epoch :func:`_train_epoch` and the callbacks.
    """
    config.validate()
    sigma = check_sigma(sigma if sigma is not None else getattr(method, "sigma", None))
    run = _set_up(model, method, train_set, config, Path(outdir), resume, sigma, metadata,
                  [*default_callbacks(test_set, sigma), *callbacks])
    try:
        for epoch in range(run.start_epoch, config.epochs):
            t0 = time.time()
            run.call("on_epoch_start", epoch)
            row = _train_epoch(run, method, epoch)
            run.call("on_train_epoch_end", epoch, row)
            row["time_s"] = time.time() - t0
            run.call("on_epoch_end", epoch, row)
            _report_epoch(run, row)
            run.strategy.barrier()
    finally:
        if run.bar is not None:
            run.bar.close()
        run.call("on_fit_end")
    return run.ckpt_path


def _set_up(model: nn.Module, method: TrainingMethod, train_set: Any, config: TrainConfig,
            outdir: Path, resume: bool, sigma: float, metadata: Mapping[str, Any] | None,
            callbacks: list[Callback]) -> Run:
    """The named steps before the first epoch, in this order: checks and the outdir (on
    every rank, before anything is written), device and processes, model, optimiser and
    schedule, a resumed run's state, loaders, callbacks, and last the RNG."""
    strategy = ExecutionStrategy.from_config(config)
    per_rank_batch = strategy.per_rank_batch(config.batch_size)
    identity, meta = _identity(method, train_set, sigma, metadata)
    ckpt = _checkpoint_to_resume(outdir, resume, identity, meta, config)
    strategy.barrier()  # nobody writes until every rank has checked the outdir

    raw_model = _place_model(model, train_set, strategy, config, identity["num_classes"])
    optimizer = _make_optimizer(raw_model, config, strategy.device)
    scheduler = _make_scheduler(optimizer, config)
    start_epoch = _restore_training_state(ckpt, raw_model, optimizer, scheduler,
                                          outdir / CHECKPOINT_NAME)
    run = Run(config=config, outdir=outdir, strategy=strategy, raw_model=raw_model,
              train_model=strategy.wrap(raw_model), optimizer=optimizer, scheduler=scheduler,
              train_loader=_train_loader(train_set, method, config, strategy, per_rank_batch),
              per_rank_batch=per_rank_batch, start_epoch=start_epoch,
              resumed=ckpt is not None, identity=identity,
              config_dict={**config.to_dict(), **meta, "world_size": strategy.world},
              callbacks=callbacks)
    if run.main:
        outdir.mkdir(parents=True, exist_ok=True)
    run.call("on_fit_start")
    _seed_or_restore_rng(run, ckpt.rng if ckpt is not None else None)
    _announce(run)
    return run


def _identity(method: TrainingMethod, train_set: Any, sigma: float,
              metadata: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the checkpoint stores about the run (arch, method, options, sigma...), and the
    rest of ``metadata`` (stored in the checkpoint's ``config``)."""
    meta = dict(metadata or {})
    method_name = str(meta.pop("method", getattr(method, "name", type(method).__name__)))
    method_config = method.config() if callable(getattr(method, "config", None)) else None
    method_opts = dict(meta.pop("method_options", None) or method_config or {})
    arch = meta.pop("arch", None)
    arch_kwargs = dict(meta.pop("arch_kwargs", None) or {})
    normalization = meta.pop("normalization", None)
    num_classes = _num_classes(train_set, method, meta.pop("num_classes", None))
    identity = {"arch": arch, "arch_kwargs": arch_kwargs, "num_classes": num_classes,
                "normalization": normalization,
                "method": method_name, "method_options": method_opts,
                "method_config": method_config, "sigma": sigma}
    return identity, meta


# The identity entries a resume must agree with, in the order a refusal names them.
_RESUME_IDENTITY = ("arch", "arch_kwargs", "method", "sigma", "num_classes", "method_options")


def _checkpoint_to_resume(outdir: Path, resume: bool, identity: Mapping[str, Any],
                          meta: Mapping[str, Any], config: TrainConfig) -> Checkpoint | None:
    """Decide fresh vs resume (on every rank, before anything is written); the stored run
    when resuming, after checking that it is the same run."""
    if not check_outdir(outdir, resume):
        return None
    ckpt_path = outdir / CHECKPOINT_NAME
    ckpt = read_checkpoint(ckpt_path)
    current = {**{k: identity[k] for k in _RESUME_IDENTITY},
               **{k: v for k, v in meta.items() if k not in _FREE_METADATA}}
    current.update({k: getattr(config, k) for k in SCHEDULE_FIELDS})
    check_compatible(ckpt, current, ckpt_path)
    return ckpt


def _place_model(model: nn.Module, train_set: Any, strategy: ExecutionStrategy,
                 config: TrainConfig, num_classes: int | None) -> nn.Module:
    """The model on the device, checked against the data, in its memory format."""
    placed = model.to(strategy.device)
    input_dims = _check_accepts_input(placed, train_set, strategy.device, num_classes)
    # Auto (None): channels_last for image models: on a CPU the input gradient of a
    # 1-channel conv is slow in NCHW (benchmarks/train_throughput.py); on GPUs it is the
    # layout tensor cores want.
    channels_last = config.channels_last if config.channels_last is not None else input_dims == 3
    return strategy.place(placed, channels_last)


def _restore_training_state(ckpt: Checkpoint | None, model: nn.Module,
                            optimizer: torch.optim.Optimizer, scheduler: Any,
                            path: Path) -> int:
    """Load a resumed run's weights, optimiser and schedule; the epoch to start at."""
    if ckpt is None:
        return 0
    try:
        model.load_state_dict(ckpt.state_dict)
        optimizer.load_state_dict(ckpt.optimizer)  # type: ignore[arg-type]
        scheduler.load_state_dict(ckpt.scheduler)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise SmoothmixError(f"cannot resume from {path}: {first_line(exc)}") from exc
    return int(ckpt.epoch or 0)


def _train_loader(train_set: Any, method: TrainingMethod, config: TrainConfig,
                  strategy: ExecutionStrategy, per_rank_batch: int) -> Any:
    from smoothmix.data import make_loader  # deferred: data imports are heavy (torchvision)

    loader = make_loader(train_set, per_rank_batch, strategy.device, train=True,
                         seed=config.seed, rank=strategy.rank, world_size=strategy.world,
                         workers=config.workers, side=method_side_data(method),
                         drop_last=config.cuda_graphs)  # a replayed step has one shape
    require(len(loader) > 0, "the training set yields no batch: it is empty or smaller "
            "than one batch per process")
    return loader


def _seed_or_restore_rng(run: Run, saved_rng: Any) -> None:
    """Restore every rank's RNG exactly, or seed it fresh (per rank) right before the first
    epoch."""
    rank, world = run.strategy.rank, run.strategy.world
    if isinstance(saved_rng, list) and len(saved_rng) == world:
        restore_rng_state(saved_rng[rank])
        return
    if run.resumed and run.main:
        print(f"note: checkpoint RNG state was saved by {len(saved_rng or [])} process(es), "
              f"now {world}; reseeding (the run continues, but not bit-for-bit)")
    seed_everything(rank_seed(run.config.seed + run.start_epoch, rank))


def _announce(run: Run) -> None:
    """'Nothing to do' for a finished run; else the progress bar (rank 0)."""
    epochs, start = run.config.epochs, run.start_epoch
    if not run.main:
        return
    if start >= epochs:
        print(f"{run.outdir} already holds {start} trained epoch{'' if start == 1 else 's'} "
              f"(>= {epochs}); nothing to do (pass a larger --epochs to train further)",
              flush=True)
    elif run.config.progress:
        # A bar on terminals; in a log file a progress line at least once a minute.
        run.bar = Progress(epochs * run.steps_per_epoch, initial=start * run.steps_per_epoch,
                           unit="step", desc=f"train {run.outdir.name}")


def _train_epoch(run: Run, method: TrainingMethod, epoch: int) -> dict[str, Any]:
    """One pass over the training data; returns the log row's epoch, lr and train means
    (summed on the device, all-reduced over ranks, read back once)."""
    set_loader_epoch(run.train_loader, epoch)
    lr = run.optimizer.param_groups[0]["lr"]
    if run.bar is not None:
        run.bar.set_description(f"epoch {epoch + 1}/{run.config.epochs}")
    run.train_model.train()
    sums, keys, count = _train_steps(run, method, epoch, lr)
    acc = sums.double() if run.strategy.device.type == "cpu" else sums
    totals = run.strategy.all_reduce_sum(torch.cat([acc, acc.new_tensor([count])]))
    run.scheduler.step()
    return _epoch_row(epoch, lr, keys, totals.tolist())


def _train_steps(run: Run, method: TrainingMethod, epoch: int,
                 lr: float) -> tuple[torch.Tensor, list[str], int]:
    """The epoch's steps: example-weighted sums of ``[loss, *metrics]`` on the device, the
    metric names and the number of examples."""
    strategy = run.strategy
    keys: list[str] | None = None
    sums: torch.Tensor | None = None
    count = 0
    for step, batch in enumerate(run.train_loader):
        x, y, side = strategy.to_device(batch)
        values, keys = strategy.step(method, run.train_model, run.optimizer, x, y, side, epoch)
        n = int(y.shape[0])
        sums = values * n if sums is None else sums + values * n
        count += n
        if run.bar is not None:
            run.bar.update(1)
            if step % run.config.log_every == 0:
                run.bar.set_postfix(loss=f"{float(sums[0]) / count:.4f}", lr=f"{lr:.3g}")
    assert sums is not None and keys is not None
    return sums, keys, count


def _epoch_row(epoch: int, lr: float, keys: list[str], totals: list[float]) -> dict[str, Any]:
    """The log row's training part from the all-reduced ``[loss, *metrics, count]`` sums."""
    n_total = totals[-1]
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": totals[0] / n_total}
    # Checked once per epoch (no per-step sync); the last good checkpoint is kept.
    require(math.isfinite(row["train_loss"]),
            f"training diverged in epoch {epoch + 1} (train loss {row['train_loss']}); "
            f"the checkpoint of epoch {epoch} is kept — lower --lr and --resume, or "
            "start again")
    for k, v in zip(keys, totals[1:-1], strict=True):
        row[f"train_{k}"] = v / n_total
    return row


def _report_epoch(run: Run, row: Mapping[str, Any]) -> None:
    """The epoch line (rank 0), below the progress bar when there is one."""
    if not run.main:
        return
    summary = f"epoch {row['epoch']}/{run.config.epochs}: loss {row['train_loss']:.4f}"
    if "train_acc" in row:
        summary += f" acc {row['train_acc']:.3f}"
    if "test_noisy_acc" in row:
        summary += f" noisy test acc {row['test_noisy_acc']:.3f}"
    summary += f" ({row['time_s']:.1f} s)"
    if run.bar is not None:
        run.bar.write(summary)
    else:
        print(summary, flush=True)
