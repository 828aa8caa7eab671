"""Certify or predict a whole dataset into a resumable, shardable result file.

The result file is the reference ``certify.py`` format (docs/MATH.md §2): one tab-separated header
line, then ``idx label predict radius correct time`` per example (``predict`` files drop
``radius``), radius written with ``repr`` so no example moves across a ``>= r`` threshold,
time in seconds. Reference analysis scripts (``pandas.read_csv(path, sep="\\t")``) read it.
Certify files add two columns after these six: ``samples`` (noise samples actually drawn,
n0 included: fewer after an early abstain or a skip) and ``status`` (``certified``,
``abstain``, or ``skipped`` under ``skip_wrong``). Files of the six columns only (older
smoothmix) still resume, in their own format.

The run's settings live in a sidecar ``FILE.json`` so that the TSV stays plain. A rerun with
the same settings appends only the missing examples (a row is flushed and fsync'ed as soon
as it is computed; a torn last line from a crash is cut off); a rerun with other settings is
refused. Each example draws its noise from a generator seeded by (seed, idx), in blocks of
``batch_size``, so a row does not depend on which process or shard computed it: merged shards
equal a single-process run with the same seed and batch size (on the same kind of device).
A resumed run may change the batch size or device; its rows are then equally valid but no
longer bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smoothmix.core import (
    Smooth,
    check_bound,
    check_certify_args,
    check_predict_args,
    module_device,
)
from smoothmix.distributed import distributed_env
from smoothmix.errors import SmoothmixError, require
from smoothmix.execution import EXECUTION_KEYS, LEGACY_EXECUTION, Execution, resolve_execution
from smoothmix.grid import GridNoise
from smoothmix.progress import Progress
from smoothmix.provenance import provenance
from smoothmix.storage import atomic_write, settings_diff

COLUMNS: dict[str, tuple[str, ...]] = {
    # n_a, n_b: the estimation's votes for the selected class and the largest other count
    # (-1 when skipped), from which either bound's radius can be recomputed; bound: the
    # formula of the radius column (cohen or two-sided).
    "certify": ("idx", "label", "predict", "radius", "correct", "time", "samples", "status",
                "n_a", "n_b", "bound"),
    "predict": ("idx", "label", "predict", "correct", "time"),
    # attack_dataset: PREDICT at x (predict, correct) and at the attacked point
    # (adv_predict; adv_outcome: kept the label, abstained, or changed to another class).
    "attack": ("idx", "label", "predict", "correct", "time", "adv_predict", "distance",
               "adv_outcome"),
    # decide_dataset: one row per (example, radius), an example's rows written together.
    # Not the certify names on purpose: `tested` is the class tested (the label in label
    # mode, certified or not) and `at_radius` the radius asked about, so a script written
    # for certify files (`(correct & radius >= r)`) fails on a KeyError instead of
    # computing nonsense.
    "decide": ("idx", "label", "tested", "at_radius", "decision", "certified_correct",
               "samples", "time"),
}
# Headers of older smoothmix files that a run may still resume or merge, in their format.
_LEGACY: dict[str, tuple[tuple[str, ...], ...]] = {
    "certify": (("idx", "label", "predict", "radius", "correct", "time"),
                ("idx", "label", "predict", "radius", "correct", "time", "samples", "status")),
    "decide": (("idx", "label", "predict", "radius", "decision", "correct", "samples",
                "time"),),
    # smoothmix 0.1/0.2 attack files: robust = PREDICT returned the label at both points.
    "attack": (("idx", "label", "predict", "correct", "time", "adv_predict", "distance",
                "robust"),),
}
_POLL_SECONDS = 2.0

Shard = tuple[int, int]
# What a classify callback returns for one example: prediction, radius (nan for predict),
# and the values of the columns after ``time``.
Row = tuple[int, float, tuple]


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
    return _run("certify", classify, model, dataset, out_path, settings, shard, batch_size,
                progress, num_classes, execution)


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
    return _run("predict", classify, model, dataset, out_path, settings, shard, batch_size,
                progress, num_classes, execution)


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
    return _run("attack", classify, model, dataset, out_path, settings, shard, batch_size,
                progress, num_classes, execution)


ATTACK_OUTCOMES = ("kept", "abstained", "changed")


def attack_outcome(adv_predict: int, label: int) -> str:
    """What PREDICT did at the attacked point: ``kept`` the label, ``abstained`` (-1), or
    ``changed`` to another class. Where CERTIFY certified the label at a radius >= epsilon,
    only ``changed`` is bounded (probability <= CERTIFY's alpha + PREDICT's alpha); an
    abstention near a tie is allowed by every certificate."""
    if adv_predict == label:
        return "kept"
    return "abstained" if adv_predict == Smooth.ABSTAIN else "changed"


def selected_indices(num_examples: int, skip: int = 1, max_idx: int = -1,
                     shard: Shard = (0, 1)) -> range:
    """The dataset indices a run covers: every ``skip``-th idx below ``max_idx`` (like the
    reference ``certify.py``), then every k-th of those starting at the i-th for shard (i, k)."""
    stop = num_examples if max_idx < 0 else min(max_idx, num_examples)
    i, k = shard
    return range(0, stop, skip)[i::k]


def shard_path(out_path: str | os.PathLike, rank: int, world_size: int,
               default_suffix: str = ".tsv") -> Path:
    """Where rank ``rank`` of ``world_size`` writes its part: ``OUT.rankIofK.tsv`` (OUT's
    own suffix, ``default_suffix`` when it has none)."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.rank{rank}of{world_size}{out.suffix or default_suffix}")


def resolve_shard(shard: Shard | None) -> tuple[Shard, bool]:
    """The part (i, k) of the examples this process covers, and whether torchrun chose it:
    the given ``shard`` (independent jobs), else (rank, world size) under torchrun (the
    ranks' parts are merged by rank 0), else (0, 1)."""
    rank, world, _ = distributed_env()
    require(shard is None or world == 1,
            "--shard splits work between independent jobs; under torchrun the ranks shard "
            "automatically, so leave --shard out")
    auto = shard is None and world > 1
    part = (rank, world) if auto else (shard or (0, 1))
    require(part[1] >= 1 and 0 <= part[0] < part[1], f"bad shard {part}")
    return part, auto


def parse_shard(text: str) -> Shard:
    """``"I/K"`` -> (I, K) with 0 <= I < K."""
    try:
        i, k = (int(part) for part in text.split("/"))
    except ValueError:
        raise SmoothmixError(f"--shard must look like I/K (e.g. 0/4), got {text!r}") from None
    require(k >= 1 and 0 <= i < k, f"--shard I/K needs 0 <= I < K, got {text!r}")
    return i, k


def check_shard_set(parts: Sequence[Shard]) -> int:
    """Refuse a set of shards (i, k) that is not each of 0/k ... k-1/k exactly once (the
    shards of one run, for a merge); returns k."""
    num_shards = {k for _, k in parts}
    require(len(num_shards) == 1, f"shards of different splits: {sorted(num_shards)} parts")
    k = num_shards.pop()
    given = [i for i, _ in parts]
    for i in range(k):
        require(given.count(i) <= 1, f"shard {i}/{k} is given more than once")
        require(i in given, f"shard {i}/{k} is missing (shards {sorted(given)} given)")
    return k


def merge_results(out_path: str | os.PathLike, shards: Sequence[str | os.PathLike]) -> Path:
    """Merge the shard files of one run into ``out_path``, sorted by idx.

    Refuses shards of different runs, a shard given twice or missing, rows that overlap,
    and gaps relative to the examples the run's settings cover.
    """
    require(len(shards) >= 1, "merge needs at least one shard file")
    metas = [read_meta(Path(p), required=True) for p in shards]
    first = metas[0]
    common = {k: v for k, v in first["settings"].items() if k != "shard"}
    for path, meta in zip(shards, metas, strict=True):
        require(meta["kind"] == first["kind"],
                f"{path} is a {meta['kind']} file, {shards[0]} a {first['kind']} file")
        other = {k: v for k, v in meta["settings"].items() if k != "shard"}
        diff = settings_diff(common, other)
        require(not diff, f"{path} comes from another run than {shards[0]} ({diff})")
    kind = first["kind"]
    check_shard_set([parse_shard(meta["settings"]["shard"]) for meta in metas])

    columns = _header(Path(shards[0]))
    rows: dict[int, str] = {}
    for path in shards:
        require(_header(Path(path)) == columns, f"{path} has other columns than {shards[0]}")
        for idx, line in _read_rows(Path(path), kind, repair=False):
            require(idx not in rows, f"idx {idx} appears twice (overlapping shards at {path})")
            rows[idx] = line
    expected = selected_indices(common["num_examples"], common["skip"], common["max_idx"])
    _require_complete(rows.keys(), expected, "merged shards")

    out = Path(out_path)
    settings = {**common, "shard": "0/1"}
    existing = read_meta(out, required=False) if out.exists() else None
    if existing is not None and _has_rows(out, kind):
        diff = settings_diff(_comparable(existing["settings"], settings), settings)
        require(existing["kind"] == kind and not diff,
                f"{out} already holds another run ({diff or existing['kind']}); choose another "
                "output file")
    meta = {**first, "settings": settings}
    atomic_write(_meta_path(out), json.dumps(meta, indent=2) + "\n")
    atomic_write(out, "\t".join(columns) + "\n" + "".join(rows[i] for i in sorted(rows)))
    return out


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
    last). Resumable like certify (an example's rows are written and fsync'ed together);
    not shardable yet.
    """
    from smoothmix.sequences import SEQUENCES, PoolItem, make_procedure

    radii = [float(r) for r in radii]
    require(radii and all(math.isfinite(r) and r >= 0 for r in radii),
            f"radii must be numbers >= 0, got {radii}")
    require(len(set(radii)) == len(radii), f"radii repeat: {radii}")
    require(sequence in SEQUENCES, f"unknown sequence {sequence!r}; choose one of "
            f"{', '.join(SEQUENCES)}")
    check_certify_args(n0, n, alpha, batch_size)
    require(distributed_env()[1] == 1, "decisions at given radii do not run under torchrun "
            "yet; run one process (or split the examples with --skip/--max-idx by hand)")
    classes = _num_classes(dataset, num_classes)
    Smooth(model, classes, sigma)  # validates sigma and num_classes
    counts: dict[str, object] = {"radii": radii, "sequence": sequence, "n": n,
                                 "alpha": alpha, "label": use_label}
    if not use_label:
        counts["n0"] = n0
    settings = {**_settings(sigma, counts, skip, max_idx, seed, dataset, identity, grid),
                "shard": "0/1"}
    out = Path(out_path)
    device = module_device(model, torch.device("cpu"))
    ex = _execution(model, device, batch_size, execution, _recorded(out, "decide"))
    settings.update(ex.settings())
    expected = selected_indices(len(dataset), skip, max_idx)
    _check_existing(out, "decide", settings, repair=True)
    done = _complete_examples(out, len(radii))
    noise = GridNoise(sigma, grid) if grid is not None else None
    if noise is not None and len(expected):  # off the grid: refused before any write
        noise.to_codes(dataset[expected[0]][0])
    device = _start_file(out, "decide", settings, done, expected, model, batch_size)

    todo = [idx for idx in expected if idx not in done]
    started: dict[int, float] = {}

    def items():
        for idx in todo:
            x, label = dataset[idx]
            generator = torch.Generator(device=device).manual_seed(example_seed(seed, idx))
            procedure = make_procedure(sequence, radii, sigma, alpha, n,
                                       int(label) if use_label else None, n0)
            started[idx] = time.perf_counter()
            yield PoolItem((idx, int(label)), x, generator, procedure, noise)

    bar = Progress(len(expected), initial=len(expected) - len(todo), unit="img",
                   desc=f"decide {out.name}", disable=not progress)
    with open(out, "a", encoding="utf-8") as fh, bar:
        def write(item: PoolItem) -> None:
            idx, label = item.key
            proc = item.procedure
            elapsed = time.perf_counter() - started.pop(idx)
            lines = [
                "\t".join(str(f) for f in (
                    idx, label, proc.cls, repr(r), decision,
                    int(decision == "certified" and proc.cls == label), used,
                    f"{elapsed:.4f}"))
                for r, decision, used in zip(radii, proc.decisions, proc.samples, strict=True)
            ]
            fh.write("\n".join(lines) + "\n")  # one write: a crash tears at most one row
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(1)

        from smoothmix.sequences import run_pool

        run_pool(model, items(), sigma, classes, batch_size, write, execution=ex)
    return out


def read_meta(path: Path, required: bool) -> dict | None:
    """The settings sidecar ``FILE.json`` of a result file (``kind``, ``settings``, ...);
    ``None`` when there is none and it is not ``required``; SmoothmixError if malformed."""
    meta_path = _meta_path(path)
    if not meta_path.exists():
        require(not required, f"{path} has no settings file {meta_path.name}")
        return None
    try:
        meta = json.loads(meta_path.read_text())
        meta["kind"], meta["settings"]  # noqa: B018 - shape check
    except (ValueError, KeyError, TypeError):
        raise SmoothmixError(f"{meta_path} is not a smoothmix settings file") from None
    return meta


def example_seed(seed: int, idx: int) -> int:
    """A 63-bit seed for example ``idx`` that does not depend on the shard computing it."""
    return int(np.random.SeedSequence([seed, idx]).generate_state(1, np.uint64)[0] >> 1)


# --------------------------------------------------------------------------- internals


def _complete_examples(path: Path, per_example: int) -> set[int]:
    """The idx with all their ``per_example`` rows in a decide file; the rows of an example
    cut short by a crash (only ever the last one written) are removed."""
    if not path.exists() or not _has_rows(path, "decide"):
        return set()
    rows = _read_rows(path, "decide", repair=True)
    counts: dict[int, int] = {}
    for idx, _ in rows:
        counts[idx] = counts.get(idx, 0) + 1
    partial = [idx for idx, c in counts.items() if c != per_example]
    require(not partial or (len(partial) == 1 and partial[0] == rows[-1][0]
                            and counts[partial[0]] < per_example),
            f"{path} has examples with a wrong number of rows ({partial[:3]}); it is damaged")
    if partial:
        keep = rows[: len(rows) - counts[partial[0]]]
        header = _header(path)
        atomic_write(path, "\t".join(header) + "\n" + "".join(line for _, line in keep))
        del counts[partial[0]]
    return set(counts)



def _num_classes(dataset: Sequence, num_classes: int | None) -> int:
    if num_classes is None:
        num_classes = getattr(dataset, "num_classes", None)
        require(num_classes is not None, "num_classes not given and the dataset has none")
    return int(num_classes)  # type: ignore[arg-type]


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
    if not path.exists() or not _has_rows(path, kind):
        return None
    meta = read_meta(path, required=False)
    return dict(meta["settings"]) if meta else None


def _comparable(recorded: Mapping[str, object], now: Mapping[str, object]) -> dict:
    """A file's settings as the current release would write them: files from before the
    execution was recorded ran in LEGACY_EXECUTION, their chunk and threads unknown."""
    if "precision" in recorded:
        return dict(recorded)
    unknown = {k: now[k] for k in ("chunk", "threads") if k in now}
    return {**LEGACY_EXECUTION, **unknown, **recorded}


def _settings(sigma: float, counts: dict[str, object], skip: int, max_idx: int, seed: int,
              dataset: Sequence, identity: Mapping[str, object] | None,
              grid: int | None = None) -> dict[str, object]:
    """Everything that decides a row's value: a resumed or merged file must agree on it.
    ``grid`` (the sound 8-bit mode) only when on, so that older files keep their settings."""
    require(skip >= 1, f"skip must be >= 1, got {skip}")
    require(grid is None or (isinstance(grid, int) and grid >= 1),
            f"grid must be the number of levels of the input grid (255), got {grid!r}")
    return {"sigma": float(sigma), **counts, "skip": skip, "max_idx": max_idx, "seed": seed,
            "num_examples": len(dataset), **dict(identity or {}),
            **({"grid": grid} if grid is not None else {})}


def _run(
    kind: str,
    classify: Callable[[Smooth, torch.Tensor, int, torch.Generator], Row],
    model: nn.Module,
    dataset: Sequence,
    out_path: str | os.PathLike,
    base: dict[str, object],
    shard: Shard | None,
    batch_size: int,
    progress: bool,
    num_classes: int | None,
    execution: Mapping[str, object] | None,
) -> Path:
    out = Path(out_path)
    part, auto = resolve_shard(shard)
    num_examples, skip, max_idx = len(dataset), base["skip"], base["max_idx"]
    target = shard_path(out, *part) if auto else out
    device = module_device(model, torch.device("cpu"))
    recorded = _recorded(target, kind) or (_recorded(out, kind) if auto else None)
    ex = _execution(model, device, batch_size, execution, recorded)
    base = {**base, **ex.settings()}
    smooth = Smooth(model, _num_classes(dataset, num_classes), float(base["sigma"]),  # type: ignore[arg-type]
                    execution=ex, grid=base.get("grid"))  # type: ignore[arg-type]
    if auto:
        # A finished merged file means this is a rerun of a completed job.
        finished = _check_existing(out, kind, {**base, "shard": "0/1"}, repair=False)
        if finished == set(selected_indices(num_examples, skip, max_idx)):
            return out
    settings = {**base, "shard": f"{part[0]}/{part[1]}"}
    expected = selected_indices(num_examples, skip, max_idx, part)
    done = _check_existing(target, kind, settings, repair=True)
    if smooth.grid is not None and len(expected):  # off the grid: refused before any write
        smooth.grid.to_codes(dataset[expected[0]][0])
    device = _start_file(target, kind, settings, done, expected, model, batch_size)

    columns = _header(target) if done else COLUMNS[kind]  # an older file keeps its format
    todo = [idx for idx in expected if idx not in done]
    bar = Progress(len(expected), initial=len(expected) - len(todo), unit="img",
                   desc=f"{kind} {target.name}", disable=not progress or (auto and part[0] != 0))
    with open(target, "a", encoding="utf-8") as fh, bar:
        for idx in todo:
            x, label = dataset[idx]
            generator = torch.Generator(device=device).manual_seed(example_seed(base["seed"], idx))
            start = time.perf_counter()
            prediction, radius, extra = classify(smooth, x, int(label), generator)
            elapsed = time.perf_counter() - start
            fields = [idx, int(label), prediction]
            if kind == "certify":
                fields.append(repr(float(radius)))
            fields += [int(prediction == int(label)), f"{elapsed:.4f}", *extra]
            fields = _legacy_attack_row(fields, columns) if kind == "attack" else fields
            fh.write("\t".join(str(f) for f in fields[: len(columns)]) + "\n")
            fh.flush()
            os.fsync(fh.fileno())  # a killed run loses at most the example in flight
            bar.update(1)

    if not auto or part[0] != 0:
        return target
    world = part[1]
    parts = [shard_path(out, r, world) for r in range(world)]
    _wait_for_shards(parts, kind, num_examples, skip, max_idx, world)
    return merge_results(out, parts)


def _start_file(path: Path, kind: str, settings: Mapping[str, object], done: set[int],
                expected: range, model: nn.Module, batch_size: int) -> torch.device:
    """Refuse rows this run does not cover; for a new run write the settings file and the
    header. Returns the device the noise is drawn on."""
    extra = sorted(done - set(expected))
    require(not extra, f"{path} holds idx {extra[:1]}, which this run does not cover")
    device = module_device(model, torch.device("cpu"))
    if not done:
        info = {"batch_size": batch_size, "device": str(device),
                "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        meta = {**provenance(), "kind": kind, "settings": dict(settings),
                "info": info}
        atomic_write(_meta_path(path), json.dumps(meta, indent=2) + "\n")
        atomic_write(path, "\t".join(COLUMNS[kind]) + "\n")
    return device


def _wait_for_shards(parts: list[Path], kind: str, num_examples: int, skip: int, max_idx: int,
                     world: int) -> None:
    """Rank 0's barrier: a file-based wait, because a rank resuming a long shard can outlast
    any process-group timeout; torchrun stops rank 0 if another rank fails."""
    for r, path in enumerate(parts):
        expected = set(selected_indices(num_examples, skip, max_idx, (r, world)))
        while not (path.exists() and expected <= _indices(path, kind)):
            time.sleep(_POLL_SECONDS)


def _indices(path: Path, kind: str) -> set[int]:
    return {idx for idx, _ in _read_rows(path, kind, repair=False, strict=False)}


def _check_existing(path: Path, kind: str, settings: Mapping[str, object],
                    repair: bool) -> set[int]:
    """The idx already in ``path`` if it belongs to this run (torn last line repaired);
    an empty set if there is nothing to resume; SmoothmixError if it is another run's file."""
    if not path.exists() or not _has_rows(path, kind):
        return set()
    meta = read_meta(path, required=False)
    require(meta is not None,
            f"{path} exists but has no settings file {_meta_path(path).name}, so it cannot be "
            "resumed safely; choose another output file or move it away")
    diff = settings_diff(_comparable(meta["settings"], settings), settings)
    require(meta["kind"] == kind and not diff,
            f"{path} was written by another run ({diff or meta['kind'] + ' file'}); rerun with "
            "the same settings to resume, or choose another output file")
    return {idx for idx, _ in _read_rows(path, kind, repair=repair, strict=repair)}


def _read_rows(path: Path, kind: str, repair: bool, strict: bool = True) -> list[tuple[int, str]]:
    """(idx, line) of every complete row. A torn or malformed *last* line is what a crash
    leaves behind: it is cut off when ``repair``, an error when ``strict``, else ignored.
    A malformed line anywhere else means the file is damaged."""
    lines = path.read_bytes().split(b"\n")
    header, complete, tail = lines[0], lines[1:-1], lines[-1]  # tail: bytes after the last \n
    columns = tuple(header.decode("utf-8", "replace").split("\t"))
    require(columns == COLUMNS[kind] or columns in _LEGACY.get(kind, ()),
            f"{path} is not a smoothmix {kind} result file (header {header[:60]!r})")
    rows: list[tuple[int, str]] = []
    good_end = len(header) + 1
    for pos, raw in enumerate(complete):
        idx = _parse_row(raw, columns)
        if idx is None:
            require(pos == len(complete) - 1 and not tail,
                    f"{path}: line {pos + 2} is damaged ({raw[:60]!r}); fix or remove it")
            tail = raw
            break
        rows.append((idx, raw.decode() + "\n"))
        good_end += len(raw) + 1
    if tail:
        require(repair or not strict, f"{path} ends in an incomplete row; rerun to repair it")
        if repair:
            with open(path, "r+b") as fh:
                fh.truncate(good_end)
    return rows


def _parse_row(raw: bytes, columns: tuple[str, ...]) -> int | None:
    try:
        fields = raw.decode("utf-8").split("\t")
        if len(fields) != len(columns):
            return None
        for value in fields[1:3]:
            int(value)
        numeric = ("radius", "at_radius", "time", "samples", "distance", "n_a", "n_b")
        for name in numeric:
            if name in columns:
                float(fields[columns.index(name)])
        if "status" in columns and fields[columns.index("status")] not in _STATUSES:
            return None
        if "decision" in columns and fields[columns.index("decision")] not in _DECISIONS:
            return None
        if "bound" in columns and fields[columns.index("bound")] not in _BOUNDS:
            return None
        if "adv_outcome" in columns and fields[columns.index("adv_outcome")] not in \
                ATTACK_OUTCOMES:
            return None
        return int(fields[0])
    except ValueError:
        return None


def _legacy_attack_row(fields: list, columns: tuple[str, ...]) -> list:
    """An attack row for a file of ``columns``: a 0.1.0 file's last column is ``robust``
    (PREDICT returned the label at x and at the attacked point), not the outcome."""
    if columns not in _LEGACY["attack"]:
        return fields
    label, prediction, adv = (int(fields[i]) for i in (1, 2, 5))
    return [*fields[:-1], int(prediction == label and adv == label)]


_STATUSES = ("certified", "abstain", "skipped")
_BOUNDS = ("cohen", "two-sided")  # smoothmix.core.BOUNDS
_DECISIONS = ("certified", "not-certified", "undecided")  # smoothmix.sequences.DECISIONS


def _header(path: Path) -> tuple[str, ...]:
    with open(path, "rb") as fh:
        return tuple(fh.readline().decode("utf-8", "replace").rstrip("\n").split("\t"))


def _has_rows(path: Path, kind: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    return head.count(b"\n") >= 1 and len(head) > head.index(b"\n") + 1


def _require_complete(found: object, expected: range, what: str) -> None:
    found_set = set(found)  # type: ignore[call-overload]
    missing = [i for i in expected if i not in found_set]
    require(not missing, f"{what} miss {len(missing)} example(s), first idx {missing[:5]}")
    extra = sorted(found_set - set(expected))
    require(not extra, f"{what} hold idx {extra[:5]} that the run's settings do not cover")


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")
