"""Certify or predict a whole dataset into a resumable, shardable result file.

The result file is the reference ``certify.py`` format (docs/MATH.md §2): one tab-separated
header line, then ``idx label predict radius correct time`` per example (``predict`` files drop
``radius``), radius written with ``repr`` so no example moves across a ``>= r`` threshold, time
in seconds. Reference analysis scripts (``pandas.read_csv(path, sep="\\t")``) read it. Certify
files add two columns after these six: ``samples`` (noise samples actually drawn, n0 included:
fewer after an early abstain or a skip) and ``status`` (``certified``, ``abstain``, or
``skipped`` under ``skip_wrong``). Files of the six columns only (older smoothmix) still
resume, in their own format.

The run's settings live in a sidecar ``FILE.json`` so that the TSV stays plain. A rerun with
the same settings appends only the missing examples (a row is flushed and fsync'ed as soon as
it is computed; a torn last line from a crash is cut off); a rerun with other settings is
refused. The file itself (headers, row parsing, resume, shards, merge) is
:mod:`smoothmix.storage`'s; this module computes the rows. Each example draws its noise from a
generator seeded by (seed, idx), in blocks of ``batch_size``, so a row does not depend on which
process or shard computed it: merged shards equal a single-process run with the same seed and
batch size (on the same kind of device). A resumed run may change the batch size or device; its
rows are then equally valid but no longer bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
import typing
from typing import Any

import numpy as np
import torch
from torch import nn

from smoothmix.checks import check_choice, check_num_classes, check_radii, check_sigma
from smoothmix.core import (
    Smooth,
    check_bound,
    check_certify_args,
    check_predict_args,
    module_device,
)
from smoothmix.errors import require
from smoothmix.execution import EXECUTION_KEYS, Execution, resolve_execution
from smoothmix.grid import GridNoise
from smoothmix.progress import Progress
from smoothmix.storage import atomic_write, settings_diff  # noqa: F401 - re-exported
from smoothmix.storage.records import new_record, read_record
from smoothmix.storage.shards import (  # noqa: F401 - re-exported
    Shard,
    check_shard_set,
    parse_shard,
    resolve_shard,
    selected_indices,
    shard_path,
    wait_until,
)
from smoothmix.storage.table import (  # noqa: F401 - re-exported
    ATTACK_OUTCOMES,
    COLUMNS,
    LEGACY,
    RowWriter,
    merge_tables,
    read_rows,
    resumable_rows,
    start_table,
)

# What a classify callback returns for one example: prediction, radius (nan for predict),
# and the values of the columns after ``time``.
Row = tuple[int, float, tuple]
# Writes one example's rows (fsync'ed together) and advances the progress bar.
Emit = Callable[[Sequence[Sequence[object]]], None]
# Computes the rows of the examples in ``todo`` with an execution, handing each to ``emit``.
Compute = Callable[[list[int], Execution, Emit], None]


def certify_dataset(
    model: nn.Module,
    dataset: Sequence,
    sigma: float,
    out_path: str | os.PathLike,
    *,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    skip: int = 1,
    max_idx: int = -1,
    shard: Shard | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    identity: Mapping[str, object] | None = None,
    progress: bool = True,
    skip_wrong: bool = False,
    bound: str = "cohen",
    execution: Mapping[str, object] | None = None,
    grid: int | None = None,
) -> Path:
    """CERTIFY every ``skip``-th example with idx < ``max_idx`` (-1: all) into ``out_path``.

    Every row goes through :meth:`Smooth.certificate`, so rows that will abstain stop
    sampling early (same answer). ``skip_wrong`` (evaluation shortcut, docs/MATH.md §2.1):
    when the n0 selection is not the label, skip the estimation and write ``predict -1,
    radius 0, status skipped``; certified accuracy and ACR equal those of the full run with
    the seed. ``bound``: the radius formula, ``cohen`` (CERTIFY, the published tables) or
    ``two-sided``; every row also keeps n_a and n_b, from which either can be recomputed.

    ``shard=(i, k)`` takes every k-th of those examples starting at the i-th. With
    ``shard=None`` under torchrun each rank takes its share, writes ``OUT.rankIofK.tsv``,
    and rank 0 merges them into ``out_path`` once all are complete. ``identity`` names what
    the caller knows about the model and data (checkpoint hash, dataset, split, ...); it is
    stored with the settings, and a rerun into the same file must match it. ``execution``
    (keys precision, layout, chunk, compile, threads; :mod:`smoothmix.execution`) says how
    the model runs; unset keys take a resumed file's recorded values, else the defaults.
    """
    def classify(smooth: Smooth, x: torch.Tensor, label: int,
                 generator: torch.Generator) -> Row:
        result = smooth.certificate(x, n0, n, alpha, batch_size, generator,
                                    label=label if skip_wrong else None, bound=bound)
        return result.prediction, result.radius, (result.samples, result.status, result.n_a,
                                                  result.n_b, bound)

    check_certify_args(n0, n, alpha, batch_size)  # before any file is touched
    check_bound(bound)
    counts: dict[str, object] = {"n0": n0, "n": n, "alpha": alpha}
    if skip_wrong:  # only when on, so that files of runs without it keep their settings
        counts["skip_wrong"] = True
    if bound != "cohen":  # likewise: a file without the key used Cohen's radius
        counts["bound"] = bound
    settings = _settings(sigma, counts, skip, max_idx, seed, dataset, identity, grid)
    compute = _per_example("certify", classify, model, dataset, settings, num_classes)
    return _run("certify", compute, model, dataset, out_path, settings, shard, batch_size,
                progress, execution)


def predict_dataset(
    model: nn.Module,
    dataset: Sequence,
    sigma: float,
    out_path: str | os.PathLike,
    *,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
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
    """PREDICT (abstain = -1) over a dataset; file ``idx label predict correct time``.
    Arguments as for :func:`certify_dataset`."""
    def classify(smooth: Smooth, x: torch.Tensor, label: int,
                 generator: torch.Generator) -> Row:
        return smooth.predict(x, n, alpha, batch_size, generator=generator), math.nan, ()

    check_predict_args(n, alpha, batch_size)
    settings = _settings(sigma, {"n": n, "alpha": alpha}, skip, max_idx, seed, dataset, identity,
                         grid)
    compute = _per_example("predict", classify, model, dataset, settings, num_classes)
    return _run("predict", compute, model, dataset, out_path, settings, shard, batch_size,
                progress, execution)


def attack_dataset(
    model: nn.Module,
    dataset: Sequence,
    sigma: float,
    out_path: str | os.PathLike,
    *,
    epsilon: float,
    num_steps: int = 20,
    num_noise: int = 128,
    n: int = 10_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
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
    """Attack the smoothed classifier at every selected example (PGD in the l2 ball of
    ``epsilon`` on the smoothed soft classifier, ``num_noise`` draws, ``num_steps`` steps;
    :mod:`smoothmix.empirical`) and run PREDICT (``n``, ``alpha``) at x and at the attacked
    point. File: ``idx label predict correct time adv_predict distance adv_outcome`` with
    adv_outcome = :func:`attack_outcome` (``kept`` the label, ``abstained``, ``changed`` to
    another class): PREDICT abstains near ties, and an abstention is not a failure of any
    certificate, so the three are kept apart. A file of smoothmix 0.1.0 (last column
    ``robust``: the label at both points) resumes in its own format. Other arguments as for
    certify_dataset."""
    from smoothmix.empirical import attack_and_predict, check_attack_args

    def classify(smooth: Smooth, x: torch.Tensor, label: int,
                 generator: torch.Generator) -> Row:
        clean, adv, distance = attack_and_predict(smooth, x, label, epsilon, num_steps,
                                                  num_noise, n, alpha, batch_size, generator)
        return clean, math.nan, (adv, repr(distance), attack_outcome(adv, label))

    check_attack_args(epsilon, num_steps, num_noise)
    check_predict_args(n, alpha, batch_size)
    counts = {"epsilon": float(epsilon), "num_steps": num_steps, "num_noise": num_noise,
              "n": n, "alpha": alpha}
    settings = _settings(sigma, counts, skip, max_idx, seed, dataset, identity, grid)
    compute = _per_example("attack", classify, model, dataset, settings, num_classes)
    return _run("attack", compute, model, dataset, out_path, settings, shard, batch_size,
                progress, execution)


def attack_outcome(adv_predict: int, label: int) -> str:
    """What PREDICT did at the attacked point: ``kept`` the label, ``abstained`` (-1), or
    ``changed`` to another class. Where CERTIFY certified the label at a radius >= epsilon,
    only ``changed`` is bounded (probability <= CERTIFY's alpha + PREDICT's alpha); an
    abstention near a tie is allowed by every certificate."""
    if adv_predict == label:
        return "kept"
    return "abstained" if adv_predict == Smooth.ABSTAIN else "changed"


def decide_dataset(
    model: nn.Module,
    dataset: Sequence,
    sigma: float,
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
    confidence sequence (:mod:`smoothmix.sequences`, docs/MATH.md §2.1) into ``out_path``.

    The class tested is the label (``use_label``, evaluation) or the argmax of ``n0``
    separate samples (deployment). ``n`` caps the test samples per example (undecided = not
    certified). Examples share forward batches through a pool; each one's noise comes from
    the (seed, idx) stream as in certify, in segments fixed by its own procedure, so its
    rows do not depend on the others. The file has one row per (example, radius):
    ``idx label tested at_radius decision certified_correct samples time`` (tested = the
    class tested; at_radius = the radius asked about, not a certified radius; decision
    certified / not-certified / undecided; certified_correct = certified and tested ==
    label; samples = noise samples drawn for the example, selection included,
    when that radius was decided; time = seconds from the example's first batch to its
    last). Resumable and shardable like certify (an example's rows
    are written and fsync'ed together and stay together in a shard; a merge checks every
    example complete).
    """
    from smoothmix.sequences import SEQUENCES

    radii = check_radii(radii)
    check_choice("sequence", sequence, SEQUENCES)
    check_certify_args(n0, n, alpha, batch_size)
    counts: dict[str, object] = {"radii": radii, "sequence": sequence, "n": n,
                                 "alpha": alpha, "label": use_label}
    if not use_label:
        counts["n0"] = n0
    settings = _settings(sigma, counts, skip, max_idx, seed, dataset, identity, grid)
    compute = _decisions(model, dataset, settings, num_classes_of(dataset, num_classes),
                         batch_size, n0, use_label)
    return _run("decide", compute, model, dataset, out_path, settings, shard, batch_size,
                progress, execution, group=len(radii))


def read_meta(path: Path, required: bool) -> dict | None:
    """The settings sidecar ``FILE.json`` of a result file (``kind``, ``settings``, ...) as
    written; ``None`` when there is none and it is not ``required``; SmoothmixError if
    malformed (:func:`smoothmix.storage.records.read_record` gives it typed)."""
    record = read_record(path, required)
    return record.to_json() if record is not None else None


def merge_results(out_path: str | os.PathLike, shards: Sequence[str | os.PathLike]) -> Path:
    """Merge the shard files of one run into ``out_path``, sorted by idx.

    Refuses shards of different runs, a shard given twice or missing, rows that overlap,
    an example without all its rows (``decide`` files: one per radius), and gaps relative
    to the examples the run's settings cover.
    """
    return merge_tables(out_path, shards, _expected, _group)


def example_seed(seed: int, idx: int) -> int:
    """A 63-bit seed for example ``idx`` that does not depend on the shard computing it."""
    return int(np.random.SeedSequence([seed, idx]).generate_state(1, np.uint64)[0] >> 1)


def num_classes_of(dataset: Sequence, num_classes: int | None) -> int:
    """The classifier's number of classes: the one given, else the dataset's."""
    if num_classes is None:
        num_classes = getattr(dataset, "num_classes", None)
        require(num_classes is not None, "num_classes not given and the dataset has none")
    return check_num_classes(num_classes)


# --------------------------------------------------------------------------- internals


def _expected(settings: Mapping[str, object]) -> range:
    return selected_indices(int(settings["num_examples"]), int(settings["skip"]),  # type: ignore[call-overload]
                            int(settings["max_idx"]))  # type: ignore[call-overload]


def _group(settings: Mapping[str, object]) -> int:
    """Rows per example: one per radius in a decide file, else one."""
    radii = settings.get("radii")
    return len(radii) if isinstance(radii, list) else 1


def _per_example(kind: str, classify: Callable[[Smooth, torch.Tensor, int, torch.Generator], Row],
                 model: nn.Module, dataset: Sequence, settings: Mapping[str, object],
                 num_classes: int | None) -> Compute:
    """The rows of certify, predict and attack: one ``classify`` call per example, on its
    own (seed, idx) noise stream."""
    classes = num_classes_of(dataset, num_classes)

    def compute(todo: list[int], ex: Execution, emit: Emit) -> None:
        smooth = Smooth(model, classes, float(settings["sigma"]), execution=ex,  # type: ignore[arg-type]
                        grid=settings.get("grid"))  # type: ignore[arg-type]
        device = module_device(model, torch.device("cpu"))
        for idx in todo:
            x, label = dataset[idx]
            generator = torch.Generator(device=device).manual_seed(
                example_seed(settings["seed"], idx))  # type: ignore[arg-type]
            start = time.perf_counter()
            prediction, radius, extra = classify(smooth, x, int(label), generator)
            fields: list[object] = [idx, int(label), prediction]
            if kind == "certify":
                fields.append(repr(float(radius)))
            fields += [int(prediction == int(label)), f"{time.perf_counter() - start:.4f}",
                       *extra]
            emit([fields])

    return compute


def _decisions(model: nn.Module, dataset: Sequence, settings: Mapping[str, Any],
               classes: int, batch_size: int, n0: int, use_label: bool) -> Compute:
    """The rows of decide: every example's confidence-sequence procedure, run in a pool
    that shares forward batches; an example's rows are emitted together when it is done."""
    from smoothmix.sequences import PoolItem, make_procedure, run_pool

    sigma, radii, seed = settings["sigma"], settings["radii"], settings["seed"]
    grid = settings.get("grid")
    noise = GridNoise(sigma, grid) if grid is not None else None

    def compute(todo: list[int], ex: Execution, emit: Emit) -> None:
        device = module_device(model, torch.device("cpu"))
        started: dict[int, float] = {}

        def items() -> Iterable[PoolItem]:
            for idx in todo:
                x, label = dataset[idx]
                generator = torch.Generator(device=device).manual_seed(example_seed(seed, idx))
                procedure = make_procedure(settings["sequence"], radii, sigma,
                                           settings["alpha"], settings["n"],
                                           int(label) if use_label else None, n0)
                started[idx] = time.perf_counter()
                yield PoolItem((idx, int(label)), x, generator, procedure, noise)

        def write(item: PoolItem) -> None:
            idx, label = typing.cast(tuple[int, int], item.key)
            proc = item.procedure
            elapsed = f"{time.perf_counter() - started.pop(idx):.4f}"
            emit([(idx, label, proc.cls, repr(r), decision,
                   int(decision == "certified" and proc.cls == label), used, elapsed)
                  for r, decision, used in zip(radii, proc.decisions, proc.samples,
                                               strict=True)])

        run_pool(model, items(), sigma, classes, batch_size, write, execution=ex)

    return compute


def _execution(model: nn.Module, device: torch.device, batch_size: int,
               request: Mapping[str, object] | None,
               recorded: Mapping[str, object] | None) -> Execution:
    """The run's execution: what was asked, else what the file being resumed recorded."""
    request = dict(request or {})
    unknown = sorted(set(request) - set(EXECUTION_KEYS))
    require(not unknown, f"unknown execution option(s) {unknown}; known: "
            f"{', '.join(EXECUTION_KEYS)}")
    return resolve_execution(model, device, batch_size, recorded=recorded,
                             **request)  # type: ignore[arg-type]


def _recorded(path: Path, kind: str) -> dict[str, object] | None:
    """The settings of the run that wrote ``path`` when there is one to resume."""
    from smoothmix.storage.table import has_rows

    record = read_record(path, required=False) if has_rows(path) else None
    return dict(record.settings) if record is not None else None


def _settings(sigma: float, counts: Mapping[str, object], skip: int, max_idx: int, seed: int,
              dataset: Sequence, identity: Mapping[str, object] | None,
              grid: int | None = None) -> dict[str, object]:
    """Everything that decides a row's value: a resumed or merged file must agree on it.
    ``grid`` (the sound 8-bit mode) only when on, so that older files keep their settings."""
    require(skip >= 1, f"skip must be >= 1, got {skip}")
    require(grid is None or (isinstance(grid, int) and grid >= 1),
            f"grid must be the number of levels of the input grid (255), got {grid!r}")
    return {"sigma": check_sigma(sigma), **counts, "skip": skip, "max_idx": max_idx,
            "seed": seed, "num_examples": len(dataset), **dict(identity or {}),
            **({"grid": grid} if grid is not None else {})}


def _run(kind: str, compute: Compute, model: nn.Module, dataset: Sequence,
         out_path: str | os.PathLike, base: dict[str, object], shard: Shard | None,
         batch_size: int, progress: bool, execution: Mapping[str, object] | None,
         group: int = 1) -> Path:
    """Resume or start this process's file, compute its missing examples, and under
    torchrun let rank 0 merge the ranks' files once all are complete."""
    out = Path(out_path)
    part, auto = resolve_shard(shard)
    target = shard_path(out, *part) if auto else out
    device = module_device(model, torch.device("cpu"))
    recorded = _recorded(target, kind) or (_recorded(out, kind) if auto else None)
    ex = _execution(model, device, batch_size, execution, recorded)
    base = {**base, **ex.settings()}
    if auto and _finished(out, kind, {**base, "shard": "0/1"}, group):
        return out  # a rerun of a completed job
    settings = {**base, "shard": f"{part[0]}/{part[1]}"}
    expected = selected_indices(len(dataset), base["skip"], base["max_idx"], part)  # type: ignore[arg-type]
    table = resumable_rows(target, kind, settings, group=group)
    done = set(table.idx) if table is not None else set()
    extra = sorted(done - set(expected))
    require(not extra, f"{target} holds idx {extra[:1]}, which this run does not cover")
    if base.get("grid") is not None and len(expected):  # off the grid: refused before any write
        GridNoise(float(base["sigma"]), base["grid"]).to_codes(dataset[expected[0]][0])  # type: ignore[arg-type]
    if table is None:
        info = {"batch_size": batch_size, "device": str(device), "argv": sys.argv,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        start_table(target, new_record(kind, settings, info))
    # An older file keeps its format.
    columns = table.columns if table is not None else COLUMNS[kind]
    todo = [idx for idx in expected if idx not in done]
    bar = Progress(len(expected), initial=len(expected) - len(todo), unit="img",
                   desc=f"{kind} {target.name}", disable=not progress or (auto and part[0] != 0))
    with RowWriter(target) as writer, bar:
        def emit(rows: Sequence[Sequence[object]]) -> None:
            if kind == "attack":
                rows = [_legacy_attack_row(list(r), columns) for r in rows]
            writer.write([r[: len(columns)] for r in rows])
            bar.update(1)

        compute(todo, ex, emit)
    if not auto or part[0] != 0:
        return target
    parts = [shard_path(out, r, part[1]) for r in range(part[1])]
    wait_until(lambda: all(_finished(p, kind, None, group, (r, part[1]))
                           for r, p in enumerate(parts)))
    return merge_results(out, parts)


def _finished(path: Path, kind: str, settings: Mapping[str, object] | None, group: int,
              part: Shard = (0, 1)) -> bool:
    """Whether ``path`` holds every example of ``part`` of its run with all its rows (of
    this run when ``settings`` are given: another run's file is refused)."""
    from smoothmix.storage.table import has_rows

    if not has_rows(path):
        return False
    if settings is not None:
        table = resumable_rows(path, kind, settings, repair=False)
    else:
        table = read_rows(path, kind, strict=False)
    record = read_record(path, required=False)
    if table is None or record is None:
        return False
    counts: dict[int, int] = {}
    for i in table.idx:
        counts[i] = counts.get(i, 0) + 1
    return all(counts.get(i) == group for i in _expected(record.settings)[part[0]::part[1]])


def _legacy_attack_row(fields: list, columns: tuple[str, ...]) -> list:
    """An attack row for a file of ``columns``: a 0.1.0 file's last column is ``robust``
    (PREDICT returned the label at x and at the attacked point), not the outcome."""
    if columns not in LEGACY["attack"]:
        return fields
    label, prediction, adv = (int(fields[i]) for i in (1, 2, 5))
    return [*fields[:-1], int(prediction == label and adv == label)]
