"""What happens around the training epochs: evaluation, checkpoint, logs (hooks of ``fit``).

:func:`smoothmix.training.fit` calls, for each callback in order, ``on_fit_start(run)`` once
before the first epoch (after a resume has been restored, before the RNG is seeded or
restored, so a callback must not draw from the global RNG there), ``on_epoch_start(run,
epoch)``, ``on_train_epoch_end(run, epoch, metrics)`` after the training pass (a callback may
add metrics to the log row here: the noisy test accuracy), ``on_epoch_end(run, epoch,
metrics)`` with the finished row (checkpoint and logs record it), and ``on_fit_end(run)``,
also after an error. Every rank calls every hook; callbacks that write files do so on rank 0
(``run.main``). ``epoch`` is 0-based; the log row's ``epoch`` is ``epoch + 1``.

The default set (:func:`default_callbacks`) writes the run folder: ``checkpoint.pth.tar``
(atomic, every epoch), ``log.csv`` and TensorBoard events; its layout is fixed (old runs
resume in it).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smoothmix.methods.base import noisy_accuracy_sums
from smoothmix.storage import atomic_append, atomic_write
from smoothmix.training.evaluation import Monitor, evaluate_monitor
from smoothmix.training.rundir import LOG_NAME, CheckpointIO
from smoothmix.training.seeding import rank_seed, set_loader_epoch

if TYPE_CHECKING:
    from smoothmix.training.loop import Run

__all__ = ["LOG_NAME", "Callback", "Checkpointing", "CsvLog", "CsvLogger", "NoisyEvaluation",
           "TensorBoardLogger", "default_callbacks"]


class Callback:
    """Base of the training hooks; every hook does nothing unless overridden."""

    def on_fit_start(self, run: Run) -> None:
        """Once, before the first epoch (also of a resumed run)."""

    def on_epoch_start(self, run: Run, epoch: int) -> None:
        """Before the training pass of ``epoch``."""

    def on_train_epoch_end(self, run: Run, epoch: int, metrics: dict[str, Any]) -> None:
        """After the training pass; may add entries to ``metrics`` (the log row)."""

    def on_epoch_end(self, run: Run, epoch: int, metrics: dict[str, Any]) -> None:
        """With the epoch's finished log row."""

    def on_fit_end(self, run: Run) -> None:
        """After the last epoch, or after an error (release resources here)."""


def default_callbacks(test_set: Any | None, sigma: float | None) -> list[Callback]:
    """The run folder's writers: the noisy test evaluation (adds its columns), then
    ``log.csv`` and TensorBoard, and the checkpoint last. Logs before the checkpoint, so that
    a kill between them loses nothing: a resume drops log rows (and events) past the
    checkpoint's epoch and writes them again, while a row never written after a checkpoint
    (the order before 0.6) was lost for good."""
    return [NoisyEvaluation(test_set, sigma), CsvLogger(), TensorBoardLogger(), Checkpointing()]


# --------------------------------------------------------------------------- evaluation


class NoisyEvaluation(Callback):
    """The test metrics of the run's method, from its monitor
    (:meth:`smoothmix.methods.base.TrainingMethod.monitor`), each logged as ``test_<name>``:
    by default ``test_noisy_acc`` / ``test_noisy_loss``, the base classifier on one Gaussian
    draw of noise level ``sigma`` per test image (a method object without a ``monitor``
    gets this too). The monitor's noise comes from a generator of its own (seeded by the
    run's seed and the epoch), so it never moves the training RNG. Nothing without a test
    set."""

    def __init__(self, test_set: Any | None, sigma: float | None) -> None:
        self.test_set, self.sigma = test_set, sigma
        self.loader: Any = None

    def on_fit_start(self, run: Run) -> None:
        from smoothmix.data import make_loader  # deferred: data imports are heavy

        if self.test_set is None or len(self.test_set) == 0:
            return
        runtime, strategy = run.runtime, run.strategy
        self.loader = make_loader(self.test_set,
                                  runtime.test_batch_size or max(run.per_rank_batch, 256),
                                  strategy.device, train=False, seed=run.recipe.seed,
                                  rank=strategy.rank, world_size=strategy.world,
                                  workers=runtime.workers)

    def on_epoch_start(self, run: Run, epoch: int) -> None:
        if self.loader is not None:
            set_loader_epoch(self.loader, epoch)

    def _monitor(self, run: Run) -> Monitor:
        monitor = getattr(run.method, "monitor", None)
        if callable(monitor):
            return monitor
        sigma = self.sigma
        assert sigma is not None, "a method without a monitor needs the run's sigma"
        return lambda model, x, y, gen: noisy_accuracy_sums(model, x, y, sigma, gen)

    def on_train_epoch_end(self, run: Run, epoch: int, metrics: dict[str, Any]) -> None:
        if self.loader is None:
            return
        strategy = run.strategy
        names, sums = evaluate_monitor(
            run.raw_model, self.loader, self._monitor(run),
            seed=rank_seed(run.recipe.seed + epoch, strategy.rank), amp=strategy.amp,
            channels_last=strategy.channels_last)
        t = strategy.all_reduce_sum(sums).tolist()
        for name, total in zip(names, t[:-1], strict=True):
            metrics[f"test_{name}"] = total / max(t[-1], 1)


# --------------------------------------------------------------------------- checkpoint


class Checkpointing(Callback):
    """The atomic ``checkpoint.pth.tar`` after every epoch (written by the run folder's
    :class:`~smoothmix.training.rundir.CheckpointIO`, which also restores it on resume)."""

    def on_epoch_end(self, run: Run, epoch: int, metrics: dict[str, Any]) -> None:
        CheckpointIO(run.outdir).save(run, epoch, metrics)


# --------------------------------------------------------------------------- logs


class CsvLog:
    """``log.csv``, one row per epoch; on resume rows after the checkpoint are dropped.

    Each row is added whole or not at all (:func:`smoothmix.storage.atomic_append`; the
    header goes with the first row), so a run killed while logging leaves the rows before,
    which its resume keeps up to the checkpoint. A torn last line (a file written by 0.5 or
    earlier, which appended in place) is dropped on resume: it is past the checkpoint, since
    rows are logged before it."""

    def __init__(self, path: Path, resume_epoch: int | None) -> None:
        self.path = path
        self.columns: list[str] | None = None
        if resume_epoch is not None and path.is_file():
            with path.open(newline="") as f:
                text = f.read()
            rows = list(csv.reader(io.StringIO(_whole_lines(text), newline="")))
            if rows:
                self.columns = rows[0]
                kept = [r for r in rows[1:] if r and int(r[0]) <= resume_epoch]
                self._write_all([rows[0], *kept])

    def _write_all(self, rows: list[list[str]]) -> None:
        atomic_write(self.path, _csv_text(rows))

    def append(self, row: Mapping[str, Any]) -> None:
        if self.columns is None:
            self.columns = list(row)
            self._write_all([self.columns, self._values(row)])
        else:
            atomic_append(self.path, _csv_text([self._values(row)]))

    def _values(self, row: Mapping[str, Any]) -> list[str]:
        return [_csv_value(row.get(c, "")) for c in self.columns or ()]


def _whole_lines(text: str) -> str:
    """``text`` without a last line that lacks its newline (torn by a kill)."""
    return text if text.endswith("\n") else text[:text.rfind("\n") + 1]


def _csv_text(rows: list[list[str]]) -> str:
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    return text.getvalue()


def _csv_value(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


class CsvLogger(Callback):
    """``log.csv`` (columns: the first row's keys, in order)."""

    def __init__(self) -> None:
        self.log: CsvLog | None = None

    def on_fit_start(self, run: Run) -> None:
        if run.main:
            self.log = CsvLog(run.outdir / LOG_NAME, run.start_epoch if run.resumed else None)

    def on_epoch_end(self, run: Run, epoch: int, metrics: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.append(metrics)


class TensorBoardLogger(Callback):
    """TensorBoard scalars ``train/loss``, ``test/noisy_acc``... at step ``epoch + 1``."""

    def __init__(self) -> None:
        self.writer: Any = None

    def on_fit_start(self, run: Run) -> None:
        # A finished run opens no writer: it would leave an empty event file per rerun.
        if not run.main or run.start_epoch >= run.recipe.epochs:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # a dependency, but a broken install must not stop training
            return
        # purge_step drops events logged after the checkpoint by a killed run.
        self.writer = SummaryWriter(log_dir=str(run.outdir),
                                    purge_step=run.start_epoch + 1 if run.resumed else None)

    def on_epoch_end(self, run: Run, epoch: int, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for k, v in metrics.items():
            if k != "epoch":
                self.writer.add_scalar(k.replace("_", "/", 1), v, epoch + 1)
        self.writer.flush()

    def on_fit_end(self, run: Run) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
