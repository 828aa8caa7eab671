"""The run folder: its files, whether a run starts fresh or resumes, and its checkpoint.

:class:`CheckpointIO` owns ``checkpoint.pth.tar``: it reads a stored run on resume (after
checking that it is the same run), restores its weights, optimiser, schedule and the RNG
state of every rank, and writes the checkpoint atomically after every epoch (through the
:class:`~smoothmix.training.callbacks.Checkpointing` callback). The layout is fixed: the
runs of every earlier release resume in it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from smoothmix.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    capture_rng_state,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from smoothmix.errors import SmoothmixError, first_line, require
from smoothmix.provenance import provenance
from smoothmix.storage import settings_diff
from smoothmix.training.recipe import RECIPE_FIELDS, Recipe, Runtime, compared
from smoothmix.training.seeding import rank_seed, seed_everything

if TYPE_CHECKING:
    from smoothmix.training.loop import Run

__all__ = ["LOG_NAME", "CheckpointIO", "check_compatible", "check_outdir", "config_record"]

#: The per-epoch log of a run folder (written by the CsvLogger callback).
LOG_NAME = "log.csv"


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
    ``log.csv`` without rows, TensorBoard event files and the temporary file of a killed
    atomic write of the checkpoint or of ``log.csv``.
    ``--resume`` starts such a run from the beginning; anything else is not ours to reuse."""
    for entry in outdir.iterdir():
        name = entry.name
        if name == LOG_NAME:
            with entry.open(newline="") as f:
                if len([row for row in csv.reader(f) if row]) > 1:
                    return False  # logged epochs: not a run that never checkpointed
        elif not (entry.is_file() and (name.startswith("events.out.tfevents.")
                                       or name == LOG_NAME + ".tmp"
                                       or _torn_temp(name, CHECKPOINT_NAME)
                                       or _torn_temp(name, LOG_NAME))):
            return False
    return True


def _torn_temp(name: str, target: str) -> bool:
    """Whether ``name`` is the temporary file of a killed atomic write of ``target``
    (:func:`smoothmix.storage.atomic_write_with`)."""
    return name.startswith(f".{target}.") and name.endswith(".tmp")


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


def config_record(recipe: Recipe, runtime: Runtime) -> dict[str, Any]:
    """The schedule and execution entries of a checkpoint's ``config``, with the keys (and
    order) every release has written: readers, the reference scripts and old resumes rely
    on them (``amp`` is the 0.2 spelling of ``precision``)."""
    return {
        "epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr,
        "momentum": recipe.momentum, "weight_decay": recipe.weight_decay,
        "lr_step": recipe.lr_step, "lr_gamma": recipe.lr_gamma,
        "lr_milestones": list(recipe.lr_milestones) if recipe.lr_milestones else None,
        "seed": recipe.seed, "device": runtime.device, "precision": recipe.precision,
        "amp": recipe.precision == "bf16", "compile": runtime.compile,
        "channels_last": runtime.channels_last, "cuda_graphs": runtime.cuda_graphs,
        "workers": runtime.workers, "test_batch_size": runtime.test_batch_size,
        "log_every": runtime.log_every, "progress": runtime.progress,
        # Written only when not SGD: the configs of every SGD run keep their old keys.
        **({"optimizer": recipe.optimizer} if recipe.optimizer != "sgd" else {}),
    }


class CheckpointIO:
    """The checkpoint of the run folder ``outdir``: read and restored on resume, written
    after every epoch."""

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / CHECKPOINT_NAME

    def open_resumed(self, resume: bool, current: Mapping[str, Any]) -> Checkpoint | None:
        """Decide fresh vs resume (on every rank, before anything is written); the stored
        run when resuming, after checking that ``current`` (identity + recipe) matches it."""
        if not check_outdir(self.path.parent, resume):
            return None
        ckpt = read_checkpoint(self.path)
        check_compatible(ckpt, current, self.path)
        return ckpt

    def restore(self, ckpt: Checkpoint | None, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
        """Load a resumed run's weights, optimiser and schedule; the epoch to start at."""
        if ckpt is None:
            return 0
        if ckpt.optimizer is None:
            raise SmoothmixError(f"cannot resume from {self.path}: it holds no optimiser state "
                                 "(a weights-only or reference checkpoint)")
        try:
            model.load_state_dict(ckpt.state_dict)
            optimizer.load_state_dict(ckpt.optimizer)
            scheduler.load_state_dict(ckpt.scheduler)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise SmoothmixError(f"cannot resume from {self.path}: {first_line(exc)}") from exc
        return int(ckpt.epoch or 0)

    @staticmethod
    def restore_rng(run: Run, ckpt: Checkpoint | None) -> None:
        """Restore every rank's RNG exactly, or seed it fresh (per rank), right before the
        first epoch."""
        saved_rng = ckpt.rng if ckpt is not None else None
        rank, world = run.strategy.rank, run.strategy.world
        if isinstance(saved_rng, list) and len(saved_rng) == world:
            restore_rng_state(saved_rng[rank])
            return
        if run.resumed and run.main:
            print(f"note: checkpoint RNG state was saved by {len(saved_rng or [])} "
                  f"process(es), now {world}; reseeding (the run continues, but not "
                  "bit-for-bit)")
        seed_everything(rank_seed(run.recipe.seed + run.start_epoch, rank))

    def save(self, run: Run, epoch: int, metrics: Mapping[str, Any]) -> None:
        """The atomic checkpoint after ``epoch`` (0-based): model, optimiser, schedule, the
        RNG states of every rank (gathered from all of them) and the run's identity."""
        rng = run.strategy.gather_objects(capture_rng_state())
        if not run.main:
            return
        release = provenance()  # the release (and commit) that wrote this epoch
        save_checkpoint(self.path, Checkpoint(
            **run.identity, state_dict=run.raw_model.state_dict(), epoch=epoch + 1,
            optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
            rng=rng, config=run.config_dict,
            metrics={k: v for k, v in metrics.items() if isinstance(v, float)},
            smoothmix=release["smoothmix"], git_commit=release["git_commit"],
        ))
