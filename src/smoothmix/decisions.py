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
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from smoothmix.checks import check_choice, check_radii, num_classes_of
from smoothmix.core import check_certify_args
from smoothmix.data.datasets import Examples
from smoothmix.execution import Execution
from smoothmix.noise import Noise
from smoothmix.run import RunSpec, as_spec
from smoothmix.runner import Compute, Emit, example_generator, run_dataset, spec_settings
from smoothmix.sequences import CERTIFIED, SEQUENCES, PoolItem, make_procedure, run_pool
from smoothmix.statistics import DEFAULT_ALPHA, DEFAULT_N, DEFAULT_N0

__all__ = ["decide_dataset"]


def decide_dataset(
    model: nn.Module,
    dataset: Examples,
    spec: RunSpec | float | Noise,
    out_path: str | os.PathLike,
    *,
    radii: Sequence[float],
    sequence: str = "kt",
    n0: int = DEFAULT_N0,
    n: int = DEFAULT_N,
    alpha: float = DEFAULT_ALPHA,
    use_label: bool = True,
    **extra: Any,
) -> Path:
    """Decide "robust at r" for every radius in ``radii`` on each example ``spec`` selects
    with a confidence sequence (``sequence``: kt, union or staged) into ``out_path``.

    The class tested is the label (``use_label``, evaluation) or the argmax of ``n0``
    separate samples (deployment). ``n`` caps the test samples per example (undecided = not
    certified). Examples share forward batches through a pool; each one's noise comes from
    the (seed, idx) stream as in certify, in segments fixed by its own procedure, so its
    rows do not depend on the others. The file has one row per (example, radius):
    ``idx label tested at_radius decision certified_correct samples time`` (tested = the
    class tested; at_radius = the radius asked about, not a certified radius; decision
    certified / not-certified / undecided; certified_correct = certified and tested ==
    label; samples = noise samples drawn for the example, selection included, when that
    radius was decided; time = the example's share of the wall time, in seconds: of each
    forward batch it took rows in, the batch's time times its share of the rows, so that
    the column sums to the run's time like certify's; files written before 0.6 recorded the
    seconds from the example's first batch to its last, which count the other examples'
    rows too).
    Resumable and shardable like certify (an example's rows are written and fsync'ed
    together and stay together in a shard; a merge checks every example complete). ``spec``
    and ``extra`` as for :func:`smoothmix.certification.certify_dataset`.
    """
    spec = as_spec(spec, extra, "decide_dataset")
    radii = check_radii(radii)
    check_choice("sequence", sequence, SEQUENCES)
    check_certify_args(n0, n, alpha, spec.batch_size)
    counts: dict[str, object] = {"radii": radii, "sequence": sequence, "n": n,
                                 "alpha": alpha, "label": use_label}
    if not use_label:
        counts["n0"] = n0
    settings = spec_settings(spec, counts, dataset)
    compute = _decisions(model, dataset, spec, radii, (sequence, n, alpha), n0, use_label)
    return run_dataset("decide", compute, model, dataset, out_path, settings, spec,
                       group=len(radii))


def _decisions(model: nn.Module, dataset: Examples, spec: RunSpec, radii: list[float],
               test: tuple[str, int, float], n0: int, use_label: bool) -> Compute:
    """The rows of decide: every example's confidence-sequence procedure (``test``:
    sequence, cap, alpha), run in a pool that shares forward batches; an example's rows
    are emitted together when it is done."""
    classes = num_classes_of(dataset, spec.num_classes)
    sequence, cap, alpha = test

    def compute(todo: list[int], ex: Execution, emit: Emit) -> None:
        def items() -> Iterable[PoolItem]:
            for idx in todo:
                x, label = dataset[idx]
                generator = example_generator(model, spec.seed, idx)
                procedure = make_procedure(sequence, radii, spec.noise.sigma, alpha, cap,
                                           int(label) if use_label else None, n0)
                yield PoolItem((idx, int(label)), x, generator, procedure)

        def write(item: PoolItem) -> None:
            idx, label = typing.cast(tuple[int, int], item.key)
            proc = item.procedure
            emit([(idx, label, proc.cls, repr(r), decision,
                   int(decision == CERTIFIED and proc.cls == label), used, f"{item.seconds:.4f}")
                  for r, decision, used in zip(radii, proc.decisions, proc.samples,
                                               strict=True)])

        run_pool(model, items(), spec.noise, classes, spec.batch_size, write, execution=ex)

    return compute
