"""Decisions "robust at r" over a whole dataset (``smoothmix certify --radii``): the
confidence sequences of :mod:`smoothmix.sequences` (docs/MATH.md §2.1) run through the pool
that shares forward batches between images, into a resumable, shardable result file.

A module beside :mod:`smoothmix.sequences` rather than inside it: the sequences and the pool
are statistics and batching that know nothing about files, and stay usable (and testable)
without them; this module adds only what a dataset run needs (settings, the (seed, idx)
streams, the rows), through the runner every result file uses (:mod:`smoothmix.runner`).
"""

from __future__ import annotations

import os
import time
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from smoothmix.checks import check_choice, check_radii, num_classes_of
from smoothmix.core import check_certify_args
from smoothmix.data.datasets import Examples
from smoothmix.execution import Execution
from smoothmix.noise import Noise
from smoothmix.runner import (
    Compute,
    Emit,
    example_generator,
    run_dataset,
    run_settings,
    settings_noise,
)
from smoothmix.sequences import SEQUENCES, PoolItem, make_procedure, run_pool
from smoothmix.storage.shards import Shard


def decide_dataset(
    model: nn.Module,
    dataset: Examples,
    sigma: float | Noise,
    out_path: str | os.PathLike,
    *,
    radii: Sequence[float],
    sequence: str = "kt",
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    use_label: bool = True,
    skip: int = 1,
    max_idx: int = -1,
    shard: Shard | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    identity: Mapping[str, object] | None = None,
    progress: bool = True,
    execution: Mapping[str, object] | None = None,
    grid: int | None = None,
) -> Path:
    """Decide "robust at r" for every radius in ``radii`` on each selected example with a
    confidence sequence (``sequence``: kt, union or staged) into ``out_path``.

    The class tested is the label (``use_label``, evaluation) or the argmax of ``n0``
    separate samples (deployment). ``n`` caps the test samples per example (undecided = not
    certified). Examples share forward batches through a pool; each one's noise comes from
    the (seed, idx) stream as in certify, in segments fixed by its own procedure, so its
    rows do not depend on the others. The file has one row per (example, radius):
    ``idx label tested at_radius decision certified_correct samples time`` (tested = the
    class tested; at_radius = the radius asked about, not a certified radius; decision
    certified / not-certified / undecided; certified_correct = certified and tested ==
    label; samples = noise samples drawn for the example, selection included, when that
    radius was decided; time = seconds from the example's first batch to its last).
    Resumable and shardable like certify (an example's rows are written and fsync'ed
    together and stay together in a shard; a merge checks every example complete). Other
    arguments as for :func:`smoothmix.certification.certify_dataset`.
    """
    radii = check_radii(radii)
    check_choice("sequence", sequence, SEQUENCES)
    check_certify_args(n0, n, alpha, batch_size)
    counts: dict[str, object] = {"radii": radii, "sequence": sequence, "n": n,
                                 "alpha": alpha, "label": use_label}
    if not use_label:
        counts["n0"] = n0
    settings = run_settings(sigma, counts, skip, max_idx, seed, dataset, identity, grid)
    compute = _decisions(model, dataset, settings, num_classes_of(dataset, num_classes),
                         batch_size, n0, use_label)
    return run_dataset("decide", compute, model, dataset, out_path, settings, shard,
                       batch_size, progress, execution, group=len(radii))


def _decisions(model: nn.Module, dataset: Examples, settings: Mapping[str, Any],
               classes: int, batch_size: int, n0: int, use_label: bool) -> Compute:
    """The rows of decide: every example's confidence-sequence procedure, run in a pool
    that shares forward batches; an example's rows are emitted together when it is done."""
    radii, seed = settings["radii"], settings["seed"]
    noise = settings_noise(settings)

    def compute(todo: list[int], ex: Execution, emit: Emit) -> None:
        started: dict[int, float] = {}

        def items() -> Iterable[PoolItem]:
            for idx in todo:
                x, label = dataset[idx]
                generator = example_generator(model, seed, idx)
                procedure = make_procedure(settings["sequence"], radii, noise.sigma,
                                           settings["alpha"], settings["n"],
                                           int(label) if use_label else None, n0)
                started[idx] = time.perf_counter()
                yield PoolItem((idx, int(label)), x, generator, procedure)

        def write(item: PoolItem) -> None:
            idx, label = typing.cast(tuple[int, int], item.key)
            proc = item.procedure
            elapsed = f"{time.perf_counter() - started.pop(idx):.4f}"
            emit([(idx, label, proc.cls, repr(r), decision,
                   int(decision == "certified" and proc.cls == label), used, elapsed)
                  for r, decision, used in zip(radii, proc.decisions, proc.samples,
                                               strict=True)])

        run_pool(model, items(), noise, classes, batch_size, write, execution=ex)

    return compute
