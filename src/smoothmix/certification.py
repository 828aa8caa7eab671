"""Certify or predict a whole dataset into a resumable, shardable result file.

The result file is the reference ``certify.py`` format (docs/MATH.md §2): one tab-separated
header line, then ``idx label predict radius correct time`` per example (``predict`` files drop
``radius``), radius written with ``repr`` so no example moves across a ``>= r`` threshold, time
in seconds. Reference analysis scripts (``pandas.read_csv(path, sep="\\t")``) read it. Certify
files add after these six ``samples`` (noise samples actually drawn, n0 included: fewer after
an early abstain or a skip), ``status`` (``certified``, ``abstain``, or ``skipped`` under
``skip_wrong``), ``n_a``, ``n_b``, ``bound``, and (from 0.5) ``selected`` (the class the n0
selection chose, abstentions included) and ``n_label`` (the estimation's votes for the label,
-1 on skipped rows). Files of older smoothmix (six, eight or eleven columns) still resume, in
their own format.

The run's settings live in a sidecar ``FILE.json`` so that the TSV stays plain. A rerun with
the same settings appends only the missing examples (a row is flushed and fsync'ed as soon as
it is computed; a torn last line from a crash is cut off); a rerun with other settings is
refused. This module says what a row holds; :mod:`smoothmix.runner` runs the examples (resume,
shards, the (seed, idx) noise streams, merge under torchrun) and :mod:`smoothmix.storage`
owns the file. The other dataset runs live with what they compute and are re-exported here:
the attack (:func:`attack_dataset`, :mod:`smoothmix.empirical`) and the decisions at radii
(:func:`decide_dataset`, :mod:`smoothmix.decisions`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothmix.checks import num_classes_of  # noqa: F401 - re-exported
from smoothmix.core import Smooth, check_bound, check_certify_args, check_predict_args
from smoothmix.data.datasets import Examples
from smoothmix.decisions import decide_dataset  # noqa: F401 - re-exported
from smoothmix.empirical import attack_dataset, attack_outcome  # noqa: F401 - re-exported
from smoothmix.noise import Noise
from smoothmix.run import RunSpec, as_spec
from smoothmix.runner import (  # noqa: F401 - re-exported
    Compute,
    Emit,
    Row,
    example_seed,
    merge_results,
    per_example,
    run_dataset,
    run_settings,
    spec_settings,
)
from smoothmix.statistics import DEFAULT_ALPHA, DEFAULT_N, DEFAULT_N0
from smoothmix.storage import atomic_write, settings_diff  # noqa: F401 - re-exported
from smoothmix.storage.records import read_meta  # noqa: F401 - re-exported
from smoothmix.storage.shards import (  # noqa: F401 - re-exported
    Shard,
    check_shard_set,
    parse_shard,
    resolve_shard,
    selected_indices,
    shard_path,
)
from smoothmix.storage.table import ATTACK_OUTCOMES, COLUMNS  # noqa: F401 - re-exported

__all__ = ["certify_dataset", "predict_dataset"]


def certify_dataset(
    model: nn.Module,
    dataset: Examples,
    spec: RunSpec | float | Noise,
    out_path: str | os.PathLike,
    *,
    n0: int = DEFAULT_N0,
    n: int = DEFAULT_N,
    alpha: float = DEFAULT_ALPHA,
    skip_wrong: bool = False,
    bound: str = "cohen",
    **extra: Any,
) -> Path:
    """CERTIFY the examples ``spec`` selects (:class:`smoothmix.run.RunSpec`: noise,
    selection, shard, seed, identity, execution, batch size) into ``out_path``.

    Every row goes through :meth:`Smooth.certificate`, so rows that will abstain stop
    sampling early (same answer). ``skip_wrong`` (evaluation shortcut, docs/MATH.md §2.1):
    when the n0 selection is not the label, skip the estimation and write ``predict -1,
    radius 0, status skipped``; certified accuracy and ACR equal those of the full run with
    the seed. ``bound``: the radius formula, ``cohen`` (CERTIFY, the published tables) or
    ``two-sided``; every row also keeps n_a and n_b, from which either can be recomputed,
    the selected class and n_label, the estimation's votes for the label (p_y's data).

    A bare sigma or :class:`~smoothmix.noise.Noise` as ``spec`` is a spec with the default
    fields. Before 0.5 the spec's fields (batch_size, skip, max_idx, shard, seed,
    num_classes, identity, progress, execution, grid) were keyword arguments; that form was
    removed in 0.6: ``extra``, any keyword not declared here, is a one-line ``TypeError``
    (naming RunSpec for a run field).
    """
    spec = as_spec(spec, extra, "certify_dataset")

    def classify(smooth: Smooth, x: torch.Tensor, label: int,
                 generator: torch.Generator) -> Row:
        result = smooth._certificate(x, n0, n, alpha, spec.batch_size, generator,
                                     label=label, skip_wrong=skip_wrong, bound=bound)
        return result.prediction, result.radius, (result.samples, result.status, result.n_a,
                                                  result.n_b, bound, result.selected,
                                                  result.n_label)

    check_certify_args(n0, n, alpha, spec.batch_size)  # before any file is touched
    check_bound(bound)
    counts: dict[str, object] = {"n0": n0, "n": n, "alpha": alpha}
    if skip_wrong:  # only when on, so that files of runs without it keep their settings
        counts["skip_wrong"] = True
    if bound != "cohen":  # likewise: a file without the key used Cohen's radius
        counts["bound"] = bound
    settings = spec_settings(spec, counts, dataset)
    compute = per_example("certify", classify, model, dataset, spec)
    return run_dataset("certify", compute, model, dataset, out_path, settings, spec)


def predict_dataset(
    model: nn.Module,
    dataset: Examples,
    spec: RunSpec | float | Noise,
    out_path: str | os.PathLike,
    *,
    n: int = DEFAULT_N,
    alpha: float = DEFAULT_ALPHA,
    **extra: Any,
) -> Path:
    """PREDICT over the examples ``spec`` selects into ``out_path``: per example the
    smoothed classifier's class, or -1 to abstain; each returned class differs from g(x)
    with probability at most ``alpha``. File ``idx label predict correct time``, resumable
    and shardable; arguments as for :func:`certify_dataset`."""
    spec = as_spec(spec, extra, "predict_dataset")

    def classify(smooth: Smooth, x: torch.Tensor, label: int,
                 generator: torch.Generator) -> Row:
        return smooth._predict(x, n, alpha, spec.batch_size, generator), math.nan, ()

    check_predict_args(n, alpha, spec.batch_size)
    settings = spec_settings(spec, {"n": n, "alpha": alpha}, dataset)
    compute = per_example("predict", classify, model, dataset, spec)
    return run_dataset("predict", compute, model, dataset, out_path, settings, spec)
