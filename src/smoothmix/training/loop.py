"""The training loop: one loop for every method, one CPU to many GPUs.

:func:`fit` knows nothing about any training method: each step it calls
``method(model, x, y, epoch, **side)`` and back-propagates the returned loss (``side``: the
batch's rows of the per-example data the method declares in ``side_data``, which the data
layer looks up by dataset index; empty for most methods). It trains one
:class:`~smoothmix.training.recipe.Recipe` under one :class:`~smoothmix.training.recipe.Runtime`.
The loop proper owns the optimiser (SGD + step schedule), the training pass and the progress
bar; the run folder and its checkpoint, read on resume and written every epoch, are
:class:`~smoothmix.training.rundir.CheckpointIO`'s; how a step
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

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothmix.checks import check_sigma
from smoothmix.errors import SmoothmixError, first_line, require
from smoothmix.methods.base import TrainingMethod, method_side_data
from smoothmix.progress import Progress
from smoothmix.training.callbacks import Callback, default_callbacks
from smoothmix.training.evaluation import evaluate_noisy
from smoothmix.training.recipe import SCHEDULE_FIELDS, Recipe, Runtime, split_settings
from smoothmix.training.rundir import (
    LOG_NAME,
    CheckpointIO,
    check_compatible,
    check_outdir,
    config_record,
)
from smoothmix.training.seeding import seed_everything, set_loader_epoch
from smoothmix.training.strategy import ExecutionStrategy

__all__ = ["LOG_NAME", "Run", "TrainConfig", "check_compatible", "check_outdir",
           "evaluate_noisy", "fit", "seed_everything"]

# Metadata that may change between a run and its resume (not part of the recipe: epochs may
# grow, and the Runtime is free).
_FREE_METADATA = frozenset({"preset"})


class TrainConfig:
    """The flat spelling of a run's :class:`~smoothmix.training.recipe.Recipe` and
    :class:`~smoothmix.training.recipe.Runtime`, for :func:`fit`: ``TrainConfig(epochs=30,
    lr=0.05, device="cpu")``. Reading an attribute reads the recipe's field, else the
    runtime's (``amp``, the spelling of ``precision="bf16"`` deprecated in 0.3, was removed in
    0.6). New code passes a ``Recipe`` (and ``runtime=``) to :func:`fit` directly.
    """

    __slots__ = ("recipe", "runtime")

    def __init__(self, **settings: Any) -> None:
        values, runtime = split_settings(settings)
        self.recipe = Recipe.from_values(values)
        self.runtime = runtime

    @classmethod
    def of(cls, recipe: Recipe, runtime: Runtime) -> TrainConfig:
        """The flat view of a recipe and a runtime."""
        config = cls.__new__(cls)
        config.recipe, config.runtime = recipe, runtime
        return config

    def __getattr__(self, name: str) -> Any:
        for part in (self.recipe, self.runtime):
            if name in part.__dataclass_fields__:
                return getattr(part, name)
        raise AttributeError(f"TrainConfig has no setting {name!r}")

    def __repr__(self) -> str:
        return f"TrainConfig(recipe={self.recipe!r}, runtime={self.runtime!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TrainConfig) and self.recipe == other.recipe
                and self.runtime == other.runtime)

    def validate(self) -> None:
        self.recipe.validate()
        self.runtime.validate()

    def first_lr_drop(self) -> int:
        return self.recipe.first_lr_drop()

    def to_dict(self) -> dict[str, Any]:
        return config_record(self.recipe, self.runtime)


def _validate(recipe: Recipe, runtime: Runtime) -> None:
    recipe.validate()
    runtime.validate()
    require(recipe.optimizer == "sgd" or not runtime.cuda_graphs,
            "--cuda-graphs captures the SGD step; use it without --optimizer adam")


def _run_sigma(method: Any, sigma: float | None) -> float | None:
    """The run's sigma: ``sigma``, else the method's; None only for a method that trains
    without noise (``uses_noise = False``), which takes none."""
    if getattr(method, "uses_noise", True):
        return check_sigma(sigma if sigma is not None else getattr(method, "sigma", None))
    require(sigma is None, f"method {getattr(method, 'name', method)!r} trains without noise: "
            "it takes no sigma")
    return None


def _recipe_and_runtime(config: Recipe | TrainConfig, runtime: Runtime | None
                        ) -> tuple[Recipe, Runtime]:
    if isinstance(config, TrainConfig):
        require(runtime is None, "pass runtime= with a Recipe, not with a TrainConfig (which "
                "holds its own)")
        return config.recipe, config.runtime
    return config, runtime if runtime is not None else Runtime()


# --------------------------------------------------------------------------- helpers


def _make_scheduler(optimizer: torch.optim.Optimizer,
                    recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler:
    if recipe.lr_milestones:
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(recipe.lr_milestones), gamma=recipe.lr_gamma)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe.lr_step,
                                           gamma=recipe.lr_gamma)


def _make_optimizer(model: nn.Module, recipe: Recipe,
                    device: torch.device) -> torch.optim.Optimizer:
    def make(fused: bool | None = None) -> torch.optim.Optimizer:
        if recipe.optimizer == "adam":  # the published denoiser recipes
            return torch.optim.Adam(model.parameters(), lr=recipe.lr,
                                    weight_decay=recipe.weight_decay, fused=fused)
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay, fused=fused)

    if device.type == "cuda":
        # One fused kernel for the whole update instead of a launch per parameter.
        try:
            return make(fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return make()




def _check_accepts_input(model: nn.Module, dataset: Any, device: torch.device,
                         num_classes: int | None, method: Any = None) -> int:
    """A wrong arch/dataset pairing fails here with one line, not deep inside a method: a
    classifier must output one logit per class, a denoiser (``trains == "denoiser"``) an
    image of its input's shape. Returns the number of dimensions of one example (3 for
    C x H x W images)."""
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
            batch = x.unsqueeze(0).to(device=device, dtype=torch.float32)
            probe = getattr(method, "probe_output", None)
            out = probe(model, batch) if probe is not None else model(batch)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise SmoothmixError(f"the model does not accept this dataset's images of shape "
                             f"{tuple(x.shape)}: {first_line(exc)}") from exc
    finally:
        model.train(was_training)
    shape = tuple(getattr(out, "shape", ()))
    if getattr(method, "trains", "classifier") == "denoiser":
        require(shape == (1, *x.shape), f"a denoiser must output an image of its input's "
                f"shape {(1, *x.shape)}; this model outputs {shape}")
        return x.dim()
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

    recipe: Recipe
    runtime: Runtime
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
    method: Any = None  # the training method (its ``monitor`` is the epoch-end evaluation)

    @property
    def config(self) -> TrainConfig:
        """The recipe and runtime as one flat record (the older spelling)."""
        return TrainConfig.of(self.recipe, self.runtime)

    @property
    def ckpt_path(self) -> Path:
        return CheckpointIO(self.outdir).path

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
    config: Recipe | TrainConfig,
    outdir: str | Path,
    resume: bool = False,
    *,
    runtime: Runtime | None = None,
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
    ``config`` is the :class:`~smoothmix.training.recipe.Recipe` (schedule, batch, seed,
    precision) with ``runtime`` (default :class:`~smoothmix.training.recipe.Runtime`), or a
    flat :class:`TrainConfig` holding both.
    ``sigma`` (default ``method.sigma``; None for a method with ``uses_noise = False``) is the
    run's noise level, stored with it. The method's ``trains`` and ``monitor`` apply.
    ``metadata`` is stored in the checkpoint: ``arch``, ``arch_kwargs``, ``normalization``,
    ``num_classes``, ``method``, ``method_options`` and any other plain values (they also
    take part in the resume compatibility check). ``callbacks`` run after
    the default ones (:mod:`smoothmix.training.callbacks`).

    Writes ``outdir/checkpoint.pth.tar`` (atomically, every epoch), ``outdir/log.csv`` and
    TensorBoard events. A non-empty ``outdir`` is refused unless ``resume``; with ``resume``
    the run continues exactly from the checkpoint there. Under torchrun the model is wrapped
    in DistributedDataParallel, each rank trains on its shard of the data, and rank 0 alone
    writes files.

    The steps: :func:`_set_up`, then per epoch :func:`_train_epoch` and the callbacks.
    """
    recipe, runtime = _recipe_and_runtime(config, runtime)
    _validate(recipe, runtime)
    sigma = _run_sigma(method, sigma)
    run = _set_up(model, method, train_set, TrainConfig.of(recipe, runtime), Path(outdir),
                  resume, sigma, metadata, [*default_callbacks(test_set, sigma), *callbacks])
    try:
        for epoch in range(run.start_epoch, recipe.epochs):
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
            outdir: Path, resume: bool, sigma: float | None, metadata: Mapping[str, Any] | None,
            callbacks: list[Callback]) -> Run:
    """The named steps before the first epoch, in this order: checks and the outdir (on
    every rank, before anything is written), device and processes, model, optimiser and
    schedule, a resumed run's state, loaders, callbacks, and last the RNG."""
    recipe, runtime = config.recipe, config.runtime
    strategy = ExecutionStrategy.from_config(config)
    per_rank_batch = strategy.per_rank_batch(recipe.batch_size)
    identity, meta = _identity(method, train_set, sigma, metadata)
    checkpoints = CheckpointIO(outdir)
    ckpt = checkpoints.open_resumed(resume, _resume_record(identity, meta, recipe))
    strategy.barrier()  # nobody writes until every rank has checked the outdir

    raw_model = _place_model(model, train_set, strategy, runtime, identity["num_classes"],
                             method)
    optimizer = _make_optimizer(raw_model, recipe, strategy.device)
    scheduler = _make_scheduler(optimizer, recipe)
    start_epoch = checkpoints.restore(ckpt, raw_model, optimizer, scheduler)
    run = Run(recipe=recipe, runtime=runtime, outdir=outdir, strategy=strategy,
              raw_model=raw_model, train_model=strategy.wrap(raw_model), optimizer=optimizer,
              scheduler=scheduler,
              train_loader=_train_loader(train_set, method, config, strategy, per_rank_batch),
              per_rank_batch=per_rank_batch, start_epoch=start_epoch,
              resumed=ckpt is not None, identity=identity,
              config_dict={**config.to_dict(), **meta, "world_size": strategy.world},
              callbacks=callbacks, method=method)
    if run.main:
        outdir.mkdir(parents=True, exist_ok=True)
    run.call("on_fit_start")
    checkpoints.restore_rng(run, ckpt)
    _announce(run)
    return run


def _identity(method: TrainingMethod, train_set: Any, sigma: float | None,
              metadata: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the checkpoint stores about the run (arch, method, options, sigma...), and the
    rest of ``metadata`` (stored in the checkpoint's ``config``) with what the method read
    besides its options (:meth:`~smoothmix.methods.base.TrainingMethod.identity`, e.g. a
    frozen classifier's hash) and, for a run without noise, ``noise: "none"``."""
    meta = dict(metadata or {})
    if callable(getattr(method, "identity", None)):
        meta.update(method.identity())
    if sigma is None:
        meta["noise"] = "none"  # sigma None: trained without noise, not "not recorded"
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


def _resume_record(identity: Mapping[str, Any], meta: Mapping[str, Any],
                   recipe: Recipe) -> dict[str, Any]:
    """What a resume compares with the stored run: the run's identity (from the method and
    ``metadata``), its other metadata, and the recipe's schedule fields."""
    return {**{k: identity[k] for k in _RESUME_IDENTITY},
            **{k: v for k, v in meta.items() if k not in _FREE_METADATA},
            **{k: getattr(recipe, k) for k in SCHEDULE_FIELDS}}


def _place_model(model: nn.Module, train_set: Any, strategy: ExecutionStrategy,
                 runtime: Runtime, num_classes: int | None, method: Any) -> nn.Module:
    """The model on the device, checked against the data (through the method's
    ``probe_output``), in its memory format."""
    placed = model.to(strategy.device)
    input_dims = _check_accepts_input(placed, train_set, strategy.device, num_classes, method)
    # Auto (None): channels_last for image models: on a CPU the input gradient of a
    # 1-channel conv is slow in NCHW (benchmarks/train_throughput.py); on GPUs it is the
    # layout tensor cores want.
    channels_last = (runtime.channels_last if runtime.channels_last is not None
                     else input_dims == 3)
    return strategy.place(placed, channels_last)


def _train_loader(train_set: Any, method: TrainingMethod, config: TrainConfig,
                  strategy: ExecutionStrategy, per_rank_batch: int) -> Any:
    from smoothmix.data import make_loader  # deferred: data imports are heavy (torchvision)

    loader = make_loader(train_set, per_rank_batch, strategy.device, train=True,
                         seed=config.recipe.seed, rank=strategy.rank, world_size=strategy.world,
                         workers=config.runtime.workers, side=method_side_data(method),
                         drop_last=config.runtime.cuda_graphs)  # a replayed step: one shape
    require(len(loader) > 0, "the training set yields no batch: it is empty or smaller "
            "than one batch per process")
    return loader


def _announce(run: Run) -> None:
    """'Nothing to do' for a finished run; else the progress bar (rank 0)."""
    epochs, start = run.recipe.epochs, run.start_epoch
    if not run.main:
        return
    if start >= epochs:
        print(f"{run.outdir} already holds {start} trained epoch{'' if start == 1 else 's'} "
              f"(>= {epochs}); nothing to do (pass a larger --epochs to train further)",
              flush=True)
    elif run.runtime.progress:
        # A bar on terminals; in a log file a progress line at least once a minute.
        run.bar = Progress(epochs * run.steps_per_epoch, initial=start * run.steps_per_epoch,
                           unit="step", desc=f"train {run.outdir.name}")


def _train_epoch(run: Run, method: TrainingMethod, epoch: int) -> dict[str, Any]:
    """One pass over the training data; returns the log row's epoch, lr and train means
    (summed on the device, all-reduced over ranks, read back once)."""
    set_loader_epoch(run.train_loader, epoch)
    lr = run.optimizer.param_groups[0]["lr"]
    if run.bar is not None:
        run.bar.set_description(f"epoch {epoch + 1}/{run.recipe.epochs}")
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
            if step % run.runtime.log_every == 0:
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
    summary = f"epoch {row['epoch']}/{run.recipe.epochs}: loss {row['train_loss']:.4f}"
    if "train_acc" in row:
        summary += f" acc {row['train_acc']:.3f}"
    if "test_psnr" in row:
        summary += f" test PSNR {row['test_psnr']:.2f} dB"
    if "test_noisy_acc" in row:
        summary += f" noisy test acc {row['test_noisy_acc']:.3f}"
    if "test_clean_acc" in row:
        summary += f" clean test acc {row['test_clean_acc']:.3f}"
    summary += f" ({row['time_s']:.1f} s)"
    if run.bar is not None:
        run.bar.write(summary)
    else:
        print(summary, flush=True)
