"""The dataset runner every result file goes through: certify, predict, attack and decide
compute rows; this module resumes or starts the file, hands them the examples still to do,
writes each example's rows as soon as they are computed, and under torchrun merges the
ranks' files on rank 0.

A kind of run is a ``compute(todo, execution, emit)`` callback (:data:`Compute`):
:func:`run_dataset` resolves the shard and the execution (a resumed file's recorded values
first), checks that the file belongs to this run (:func:`smoothmix.storage.table.resumable_rows`),
and gives ``compute`` an ``emit`` that writes one example's rows, fsync'ed together. The
table itself (headers, row parsing, resume, shards, merge) is :mod:`smoothmix.storage`'s.

Each example draws its noise from a generator seeded by (seed, idx) (:func:`example_seed`),
so a row does not depend on which process or shard computed it: merged shards equal a
single-process run with the same seed and batch size (on the same kind of device). A resumed
run may change the batch size or device; its rows are then equally valid but no longer
bit-identical to an uninterrupted run. Kept apart from :mod:`smoothmix.certification` so
that the attack (:mod:`smoothmix.empirical`) and the decisions (:mod:`smoothmix.decisions`)
use it without importing each other.
"""

from __future__ import annotations

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

__all__ = ["Compute", "Emit", "Row", "RunSpec", "as_spec", "example_seed", "merge_results",
           "per_example", "run_dataset", "run_settings", "settings_noise", "spec_settings"]

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
    Gaussian noise, so that older files keep their settings)."""
    require(skip >= 1, f"skip must be >= 1, got {skip}")
    noise = make_noise(sigma, grid)
    return {"sigma": noise.sigma, **counts, "skip": skip, "max_idx": max_idx,
            "seed": seed, "num_examples": len(dataset), **dict(identity or {}),
            **noise.settings()}


def spec_settings(spec: RunSpec, counts: Mapping[str, object], dataset: Examples
                  ) -> dict[str, object]:
    """:func:`run_settings` of a :class:`smoothmix.run.RunSpec`."""
    return run_settings(spec.noise, counts, spec.skip, spec.max_idx, spec.seed, dataset,
                        spec.identity)


def settings_noise(settings: Mapping[str, object]) -> Noise:
    """The noise a run's settings describe (:meth:`smoothmix.noise.Noise.from_settings`)."""
    sigma = settings.get("sigma")
    if not isinstance(sigma, (int, float)):
        raise SmoothmixError(f"the settings' sigma must be a number, got {sigma!r}")
    return Noise.from_settings(float(sigma), settings)


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


def run_dataset(kind: str, compute: Compute, model: nn.Module, dataset: Examples,
                out_path: str | os.PathLike, base: dict[str, object], spec: RunSpec,
                group: int = 1) -> Path:
    """Resume or start this process's file, compute its missing examples (``group`` rows
    each), and under torchrun let rank 0 merge the ranks' files once all are complete.
    ``base``: the run's settings (:func:`spec_settings`)."""
    out = Path(out_path)
    part, auto = resolve_shard(spec.shard)
    target = shard_path(out, *part) if auto else out
    device = module_device(model, torch.device("cpu"))
    recorded = _recorded(target) or (_recorded(out) if auto else None)
    ex = resolve_execution(model, device, spec.batch_size, recorded=recorded,
                           **spec.execution)  # type: ignore[arg-type]
    base = {**base, **ex.settings()}
    if auto and _finished(out, kind, {**base, "shard": "0/1"}, group):
        return out  # a rerun of a completed job
    settings = {**base, "shard": f"{part[0]}/{part[1]}"}
    expected = selected_indices(len(dataset), spec.skip, spec.max_idx, part)
    table = resumable_rows(target, kind, settings, group=group)
    done = set(table.idx) if table is not None else set()
    extra = sorted(done - set(expected))
    require(not extra, f"{target} holds idx {extra[:1]}, which this run does not cover")
    if spec.noise.restricts_inputs and len(expected):  # refused before any write (off grid)
        spec.noise.prepare(dataset[expected[0]][0])
    if table is None:
        info = {"batch_size": spec.batch_size, "device": str(device), "argv": sys.argv,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        start_table(target, new_record(kind, settings, info))
    # An older file keeps its format.
    columns = table.columns if table is not None else COLUMNS[kind]
    todo = [idx for idx in expected if idx not in done]
    bar = Progress(len(expected), initial=len(expected) - len(todo), unit="img",
                   desc=f"{kind} {target.name}",
                   disable=not spec.progress or (auto and part[0] != 0))
    with RowWriter(target) as writer, bar:
        def emit(rows: Sequence[Sequence[object]]) -> None:
            writer.write([fit_row(kind, row, columns) for row in rows])
            bar.update(1)

        compute(todo, ex, emit)
    if not auto or part[0] != 0:
        return target
    parts = [shard_path(out, r, part[1]) for r in range(part[1])]
    wait_until(lambda: all(_finished(p, kind, None, group, (r, part[1]))
                           for r, p in enumerate(parts)))
    return merge_results(out, parts)


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
    return all(counts.get(i) == group for i in _expected(record.settings)[part[0]::part[1]])
