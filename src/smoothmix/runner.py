"""The dataset runner every result file goes through: certify, predict, attack, decide and
the CAT-RS targets compute rows; this module resumes or starts the file, hands them the
examples still to do, writes each example's rows as soon as they are computed, and under
torchrun merges the ranks' files on rank 0.

A kind of run is a ``compute(todo, execution, emit)`` callback (:data:`Compute`) and the
:class:`smoothmix.run.RunSpec` it was asked with: :func:`run_dataset` resolves the shard and
the execution (a resumed file's recorded values first), checks that the file belongs to this
run, and gives ``compute`` an ``emit`` that writes one example's rows durably. How a kind
keeps its file is a :class:`Store`: :class:`TableStore` for the result tables
(:mod:`smoothmix.storage.table`: headers, row parsing, resume, merge),
:class:`smoothmix.targets.TargetsStore` for the ``.npz`` vote tables.

Each example draws its noise from a generator seeded by (seed, idx) (:func:`example_seed`),
so a row does not depend on which process or shard computed it: merged shards equal a
single-process run with the same seed and batch size (on the same kind of device). A resumed
run may change the batch size or device; its rows are then equally valid but no longer
bit-identical to an uninterrupted run. Kept apart from :mod:`smoothmix.certification` so
that the attack (:mod:`smoothmix.empirical`) and the decisions (:mod:`smoothmix.decisions`)
use it without importing each other.
"""

from __future__ import annotations

import abc
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smoothmix.checks import num_classes_of
from smoothmix.core import Smooth
from smoothmix.data.datasets import Examples
from smoothmix.denoisers.compose import denoised_in, denoiser_for_run
from smoothmix.device import module_device
from smoothmix.errors import SmoothmixError, require
from smoothmix.execution import Execution, resolve_execution
from smoothmix.noise import Noise, make_noise
from smoothmix.progress import Progress
from smoothmix.run import RunSpec, as_spec
from smoothmix.storage.records import new_record, read_record
from smoothmix.storage.shards import Shard, resolve_shard, selected_indices, shard_path, wait_until
from smoothmix.storage.table import (
    COLUMNS,
    RowWriter,
    fit_row,
    has_rows,
    merge_tables,
    read_rows,
    resumable_rows,
    start_table,
)

__all__ = ["Compute", "Emit", "Row", "Rows", "RunSpec", "Store", "TableStore", "as_spec",
           "example_seed", "merge_results", "per_example", "run_dataset", "run_settings",
           "spec_settings"]

# What a classify callback returns for one example: prediction, radius (nan when the kind
# has no radius column), and the values of the columns after ``time``.
Row = tuple[int, float, tuple]
# Writes one example's rows (fsync'ed together) and advances the progress bar.
Emit = Callable[[Sequence[Sequence[object]]], None]
# Computes the rows of the examples in ``todo`` with an execution, handing each to ``emit``.
Compute = Callable[[list[int], Execution, Emit], None]
Classify = Callable[[Smooth, torch.Tensor, int, torch.Generator], Row]


def example_seed(seed: int, idx: int) -> int:
    """A 63-bit seed for example ``idx`` that does not depend on the shard computing it."""
    return int(np.random.SeedSequence([seed, idx]).generate_state(1, np.uint64)[0] >> 1)


def example_generator(model: nn.Module, seed: int, idx: int) -> torch.Generator:
    """Example ``idx``'s own noise stream, on the model's device."""
    device = module_device(model, torch.device("cpu"))
    return torch.Generator(device=device).manual_seed(example_seed(seed, idx))


def run_settings(sigma: float | Noise, counts: Mapping[str, object], skip: int, max_idx: int,
                 seed: int, dataset: Examples, identity: Mapping[str, object] | None,
                 grid: int | None = None) -> dict[str, object]:
    """Everything that decides a row's value: a resumed or merged file must agree on it.
    The noise (``sigma``: a :class:`smoothmix.noise.Noise`, or Gaussian noise's sigma;
    ``grid``: older callers' grid levels) records its own keys after the rest (none for
    Gaussian noise, so that older files keep their settings). The selection (``skip``,
    ``max_idx``) is recorded as given: :class:`smoothmix.run.RunSpec` checks it where a run
    enters (:func:`spec_settings`)."""
    noise = make_noise(sigma, grid)
    return {"sigma": noise.sigma, **counts, "skip": skip, "max_idx": max_idx,
            "seed": seed, "num_examples": len(dataset), **dict(identity or {}),
            **noise.settings()}


def spec_settings(spec: RunSpec, counts: Mapping[str, object], dataset: Examples
                  ) -> dict[str, object]:
    """:func:`run_settings` of a :class:`smoothmix.run.RunSpec`, and its denoiser's record
    (:meth:`smoothmix.run.RunSpec.denoiser_settings`: none without one)."""
    return {**run_settings(spec.noise, counts, spec.skip, spec.max_idx, spec.seed, dataset,
                           spec.identity), **spec.denoiser_settings()}


def per_example(kind: str, classify: Classify, model: nn.Module, dataset: Examples,
                spec: RunSpec) -> Compute:
    """The rows of certify, predict and attack: one ``classify`` call per example, on its
    own (seed, idx) noise stream; the ``radius`` column only for certify."""
    classes = num_classes_of(dataset, spec.num_classes)

    def compute(todo: list[int], ex: Execution, emit: Emit) -> None:
        smooth = Smooth(model, classes, spec.noise, execution=ex)
        for idx in todo:
            x, label = dataset[idx]
            generator = example_generator(model, spec.seed, idx)
            start = time.perf_counter()
            prediction, radius, extra = classify(smooth, x, int(label), generator)
            fields: list[object] = [idx, int(label), prediction]
            if kind == "certify":
                fields.append(repr(float(radius)))
            fields += [int(prediction == int(label)), f"{time.perf_counter() - start:.4f}",
                       *extra]
            emit([fields])

    return compute


def merge_results(out_path: str | os.PathLike, shards: Sequence[str | os.PathLike]) -> Path:
    """Merge the shard files of one run into ``out_path``, sorted by idx.

    Refuses shards of different runs, a shard given twice or missing, rows that overlap,
    an example without all its rows (``decide`` files: one per radius), and gaps relative
    to the examples the run's settings cover.
    """
    return merge_tables(out_path, shards, _expected, _group)


class Rows(abc.ABC):
    """An open result file while a run writes it: the examples it already holds (``done``)
    and ``write`` for one example's rows. Closed by the runner; a file is finished only when
    the run ends without an error."""

    done: set[int]

    @abc.abstractmethod
    def write(self, rows: Sequence[Sequence[object]]) -> None:
        """Store one example's rows durably."""

    @abc.abstractmethod
    def close(self, ok: bool) -> None:
        """Called once at the end (``ok``: the compute finished without an error)."""


class Store(abc.ABC):
    """How a kind of run keeps its file: the one runner (:func:`run_dataset`) asks it where
    a part lives, what a file recorded, whether it is finished, to open it and to merge the
    parts. :class:`TableStore` (the TSV files of certify, predict, attack, decide) and
    :class:`smoothmix.targets.TargetsStore` (the ``.npz`` vote tables)."""

    # Whether the ranks other than 0 wait for the merged file (it is read next).
    wait_for_merge = False

    @abc.abstractmethod
    def part_path(self, out: Path, part: Shard, auto: bool) -> Path:
        """Where this process writes (``auto``: a torchrun rank's share)."""

    @abc.abstractmethod
    def recorded(self, path: Path) -> dict[str, object] | None:
        """The settings of the run that wrote ``path``, when there is one to resume."""

    def execution_settings(self, ex: Execution, recorded: Mapping[str, object] | None,
                           request: Mapping[str, object]) -> dict[str, object]:
        """The execution as the file records it."""
        return ex.settings()

    @abc.abstractmethod
    def finished(self, path: Path, settings: Mapping[str, object] | None,
                 part: Shard = (0, 1)) -> bool:
        """Whether ``path`` holds all of ``part``'s examples (of this run when ``settings``
        are given: another run's file is refused)."""

    @abc.abstractmethod
    def open(self, target: Path, settings: dict[str, object], expected: range,
             info: dict[str, object]) -> Rows:
        """The file to write, resumed or started (refused when another run wrote it)."""

    @abc.abstractmethod
    def merge(self, out: Path, parts: list[Path]) -> Path:
        """Merge the complete parts of one run into ``out``."""


class TableStore(Store):
    """The result tables (:mod:`smoothmix.storage.table`) of certify, predict, attack and
    decide (``group`` rows per example)."""

    def __init__(self, kind: str, group: int = 1) -> None:
        self.kind, self.group = kind, group

    def part_path(self, out: Path, part: Shard, auto: bool) -> Path:
        return shard_path(out, *part) if auto else out

    def recorded(self, path: Path) -> dict[str, object] | None:
        return _recorded(path)

    def finished(self, path: Path, settings: Mapping[str, object] | None,
                 part: Shard = (0, 1)) -> bool:
        return _finished(path, self.kind, settings, self.group, part)

    def open(self, target: Path, settings: dict[str, object], expected: range,
             info: dict[str, object]) -> Rows:
        table = resumable_rows(target, self.kind, settings, group=self.group)
        done = set(table.idx) if table is not None else set()
        extra = sorted(done - set(expected))
        require(not extra, f"{target} holds idx {extra[:1]}, which this run does not cover")
        if table is None:
            start_table(target, new_record(self.kind, settings, {**info, "argv": sys.argv}))
        # An older file keeps its format.
        return _TableRows(self.kind, target, table.columns if table else COLUMNS[self.kind],
                          done)

    def merge(self, out: Path, parts: list[Path]) -> Path:
        return merge_results(out, parts)


class _TableRows(Rows):
    def __init__(self, kind: str, target: Path, columns: tuple[str, ...], done: set[int]
                 ) -> None:
        self.kind, self.columns, self.done = kind, columns, done
        self.writer = RowWriter(target).__enter__()

    def write(self, rows: Sequence[Sequence[object]]) -> None:
        self.writer.write([fit_row(self.kind, row, self.columns) for row in rows])

    def close(self, ok: bool) -> None:
        self.writer.__exit__(None, None, None)


def run_dataset(kind: str, compute: Compute, model: nn.Module, dataset: Examples,
                out_path: str | os.PathLike, base: dict[str, object], spec: RunSpec,
                group: int = 1, store: Store | None = None) -> Path:
    """Resume or start this process's file, compute its missing examples (``group`` rows
    each), and under torchrun let rank 0 merge the ranks' files once all are complete.
    ``base``: the run's settings (:func:`spec_settings`); ``store``: how the file is kept
    (default: a result table, :class:`TableStore`)."""
    store = store if store is not None else TableStore(kind, group)
    out = Path(out_path)
    part, auto = resolve_shard(spec.shard)
    target = store.part_path(out, part, auto)
    device = module_device(model, torch.device("cpu"))
    denoiser = denoiser_for_run(model, spec)  # refused here when built for another sigma
    base = {**base, **({} if denoiser is None else {"denoiser": denoiser})}
    recorded = store.recorded(target) or (store.recorded(out) if auto else None)
    ex = resolve_execution(model, device, spec.batch_size, recorded=recorded,
                           **spec.execution)  # type: ignore[arg-type]
    base = {**base, **store.execution_settings(ex, recorded, spec.execution)}
    if auto and store.finished(out, {**base, "shard": "0/1"}):
        return out  # a rerun of a completed job
    settings = {**base, "shard": f"{part[0]}/{part[1]}"}
    expected = selected_indices(len(dataset), spec.skip, spec.max_idx, part)
    # Refused before any write: inputs off the grid, or an unsound denoiser (read only then).
    if len(expected) and (spec.noise.restricts_inputs or denoised_in(model) is not None):
        _check_first_input(model, spec, dataset[expected[0]][0])
    # How it ran, and what the caller knows that decides no row (RunSpec.info: the model's
    # training sigma): recorded when the file starts, never compared on resume.
    info: dict[str, object] = {"batch_size": spec.batch_size, "device": str(device),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **spec.info()}
    rows = store.open(target, settings, expected, info)
    todo = [idx for idx in expected if idx not in rows.done]
    bar = Progress(len(expected), initial=len(expected) - len(todo), unit="img",
                   desc=f"{kind} {target.name}",
                   disable=not spec.progress or (auto and part[0] != 0))
    ok = False
    try:
        with bar:
            def emit(example_rows: Sequence[Sequence[object]]) -> None:
                rows.write(example_rows)
                bar.update(1)

            compute(todo, ex, emit)
        ok = True
    finally:
        rows.close(ok)
    if not auto:
        return target
    if part[0] != 0:
        if store.wait_for_merge:
            wait_until(out.exists)
            return out
        return target
    parts = [store.part_path(out, (r, part[1]), True) for r in range(part[1])]
    wait_until(lambda: all(store.finished(p, None, (r, part[1]))
                           for r, p in enumerate(parts)))
    return store.merge(out, parts)


def _check_first_input(model: nn.Module, spec: RunSpec, x: torch.Tensor) -> None:
    """What is checked once per run on its first example: that it lies on the noise's inputs
    (grid mode), and that a denoiser in front of the classifier acts per sample and
    deterministically (:func:`smoothmix.denoisers.probe_denoiser`)."""
    if spec.noise.restricts_inputs:
        spec.noise.prepare(x)
    denoised = denoised_in(model)
    if denoised is not None:
        device = module_device(denoised, torch.device("cpu"))
        denoised.probe(x.to(device), spec.noise.sigma)


def _expected(settings: Mapping[str, object]) -> range:
    return selected_indices(_integer(settings, "num_examples"), _integer(settings, "skip"),
                            _integer(settings, "max_idx"))


def _integer(settings: Mapping[str, object], key: str) -> int:
    value = settings.get(key)
    if not isinstance(value, int):
        raise SmoothmixError(f"the settings' {key} must be an integer, got {value!r}")
    return value


def _group(settings: Mapping[str, object]) -> int:
    """Rows per example: one per radius in a decide file, else one."""
    radii = settings.get("radii")
    return len(radii) if isinstance(radii, list) else 1


def _recorded(path: Path) -> dict[str, object] | None:
    """The settings of the run that wrote ``path`` when there is one to resume."""
    record = read_record(path, required=False) if has_rows(path) else None
    return dict(record.settings) if record is not None else None


def _finished(path: Path, kind: str, settings: Mapping[str, object] | None, group: int,
              part: Shard = (0, 1)) -> bool:
    """Whether ``path`` holds every example of ``part`` of its run with all its rows (of
    this run when ``settings`` are given: another run's file is refused)."""
    if not has_rows(path):
        return False
    if settings is not None:
        table = resumable_rows(path, kind, settings, repair=False)
    else:
        table = read_rows(path, kind, strict=False)
    record = read_record(path, required=False)
    if table is None or record is None:
        return False
    counts = table.rows_per_example()
    # This run's selection when given: a file it extends (a larger max_idx) is not finished.
    selection = _expected(settings if settings is not None else record.settings)
    return all(counts.get(i) == group for i in selection[part[0]::part[1]])
