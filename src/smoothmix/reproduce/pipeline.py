"""The pipeline of ``smoothmix reproduce``: check everything, then per row train (resumable,
DDP under torchrun), CERTIFY (resumable, sharded under torchrun) and decide at the budget's
radii; then the report. It only orchestrates the public API: :func:`smoothmix.training.train`,
:func:`smoothmix.certification.certify_dataset`, :func:`smoothmix.decisions.decide_dataset`.

The output folder's ``reproduce.json`` records the experiment and the budget; its rows are
the certification files it holds. A rerun must name the same experiment and budget and a
row list that keeps every row the folder holds (a superset adds rows); anything else is
refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothmix.errors import SmoothmixError, require
from smoothmix.reproduce.budget import Budget, flag
from smoothmix.reproduce.experiments import (
    ALPHA,
    FULL_N,
    N0,
    Experiment,
    get_experiment,
    select_methods,
)
from smoothmix.reproduce.report import (
    PLOT_NAME,
    SUMMARY_NAME,
    TABLE_NAME,
    format_terminal,
    write_report,
)
from smoothmix.targets import REFERENCE_SIGMA

STATE_NAME = "reproduce.json"
# Noisy test accuracy logged after every epoch: a training-time monitor only, not part of
# the recipe or the certificate.
EVAL_IMAGES = 1000
# CAT-RS rows (docs/MATH.md §3.8) first train a Gaussian sigma = 0.25 "teacher" (its preset, same
# budget) and count its votes on the training images into the soft targets.
TEACHER_SIGMA = REFERENCE_SIGMA
TEACHER_DIR = "catrs-teacher"
TARGETS_NAME = "catrs-targets.npz"


def reproduce(
    experiment: str,
    outdir: str | os.PathLike,
    *,
    methods: list[str] | None = None,
    budget: Budget | None = None,
    data_dir: str | os.PathLike | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, certify and tabulate ``methods`` of ``experiment`` into ``outdir``; return the
    summary (also written to ``OUTDIR/summary.json``).

    Every check that can fail on user input (experiment, methods, budget, an outdir of
    another experiment or budget or with rows the list leaves out, the dataset on disk) runs
    before anything is written.
    """
    from smoothmix.distributed import distributed_env

    exp = get_experiment(experiment)
    chosen = select_methods(exp, methods)
    budget = budget or Budget()
    budget.validate()
    budget = budget.normalised(exp)
    cert_device = _certify_device(device)
    out = Path(outdir)
    main = distributed_env()[0] == 0
    test_set = _checked_before_writing(exp, chosen, budget, out, data_dir, main)
    teacher_stages = 2 if any(_needs_soft_targets(exp, m) for m in chosen) else 0
    say = _Say(main, len(chosen) * 2 + 1 + teacher_stages, exp.name)
    say(f"{budget.describe(exp)}")
    say(f"writing to {out.resolve()}")
    run = _Reproduction(exp, budget, out, data_dir, device, cert_device, progress, say,
                        test_set)
    timings = {m: _reproduce_method(run, m) for m in chosen}
    if not main:
        return {}
    say.stage("table")
    summary = write_report(exp, out, chosen, budget, timings)
    # The wide table (three numbers a cell, and the budget said above) is table.md's.
    print(format_terminal(exp, summary.get("rows", []), summary.get("radius_cap", math.inf),
                          out / TABLE_NAME), flush=True)
    say(f"table {out / TABLE_NAME}, curves {out / PLOT_NAME}, summary {out / SUMMARY_NAME}")
    return summary


def _checked_before_writing(exp: Experiment, chosen: list[str], budget: Budget, out: Path,
                            data_dir: str | os.PathLike | None, main: bool) -> Any:
    """Every check that can fail on user input, then (rank 0) the folder and its state
    file; returns the test set."""
    from smoothmix.data import load_dataset
    from smoothmix.storage import atomic_write

    # As JSON has it (tuples become lists), so that a rerun's check compares like with like.
    state = {"experiment": exp.name,
             "budget": json.loads(json.dumps(dataclasses.asdict(budget)))}
    if main:  # rank 0 alone checks and writes the folder (torchrun stops the others on error)
        _check_outdir(out, state, chosen)
        _check_row_folders(out, exp, chosen)
    # Loading both splits here fails with the dataset's own one-line error (which says
    # where it looked) before anything is written.
    load_dataset(exp.dataset, "train", data_dir)
    test_set = load_dataset(exp.dataset, "test", data_dir)
    for m in chosen:
        _train_kwargs(exp, m, budget)  # a preset without the overridden option fails here
        if _needs_soft_targets(exp, m):
            _train_kwargs(dataclasses.replace(exp, sigma=TEACHER_SIGMA), "gaussian", budget)
    if main and not (out / STATE_NAME).exists():
        # Written once: a rerun continues the folder (_check_outdir refused another budget)
        # and keeps the record of the release and commit that started it.
        out.mkdir(parents=True, exist_ok=True)
        from smoothmix.provenance import provenance

        atomic_write(out / STATE_NAME, json.dumps({**state, **provenance()}, indent=2) + "\n")
    return test_set


@dataclass
class _Reproduction:
    """What every method's stages of one ``reproduce`` share."""

    exp: Experiment
    budget: Budget
    out: Path
    data_dir: str | os.PathLike | None
    device: str | None
    cert_device: Any
    progress: bool
    say: _Say
    test_set: Any


def _reproduce_method(run: _Reproduction, m: str) -> dict[str, float]:
    """Train method ``m`` (resuming a run there), certify it, decide at the budget's radii;
    returns the stages' timings."""
    from smoothmix.checkpoint import CHECKPOINT_NAME
    from smoothmix.training import train

    exp, budget, out, say = run.exp, run.budget, run.out, run.say
    run_dir = out / m
    extra: dict[str, Any] = {}
    if _needs_soft_targets(exp, m):
        extra["targets"] = _soft_targets(exp, out, budget, run.data_dir, run.device,
                                         run.progress, say)
    say.stage(f"train {m} (preset {exp.preset_name(m)}) -> {run_dir}")
    start = time.time()
    # resume=True continues an interrupted run and returns at once for a finished one.
    train(run_dir, data_dir=run.data_dir, device=run.device, progress=run.progress,
          resume=run_dir.exists(), **_train_kwargs(exp, m, budget), **extra)
    timings = {"train_seconds": round(time.time() - start, 1)}
    start = time.time()
    model, identity = _certify_method(run, m, run_dir / CHECKPOINT_NAME)
    timings["certify_seconds"] = round(time.time() - start, 1)
    # Under torchrun every rank decides its shard of the images and rank 0 merges them,
    # as for CERTIFY above (run_dataset shards both).
    if budget.decide_radii is not None:
        start = time.time()
        _decide_method(run, m, model, identity)
        timings["decide_seconds"] = round(time.time() - start, 1)
    return timings


def _certify_method(run: _Reproduction, m: str, ckpt: Path) -> tuple[Any, dict[str, Any]]:
    """CERTIFY the test set into ``certify_M.tsv``; returns the model and the rows'
    identity."""
    from smoothmix.certification import certify_dataset
    from smoothmix.checkpoint import file_sha256, load_model
    from smoothmix.run import RunSpec

    budget = run.budget
    tsv = run.out / f"certify_{m}.tsv"
    run.say.stage(f"certify {m} -> {tsv}")
    model, _ = load_model(ckpt, device=run.cert_device)
    # A retrained model must never reuse another model's rows.
    identity = {"experiment": run.exp.name, "method": m, "checkpoint_sha256": file_sha256(ckpt)}
    spec = RunSpec.of(run.exp.sigma, skip=budget.skip or run.exp.skip,
                      max_idx=_max_idx(budget), progress=run.progress, identity=identity,
                      execution=_execution(budget))
    certify_dataset(model, run.test_set, spec, tsv, n0=N0, n=budget.n or FULL_N, alpha=ALPHA,
                    bound=budget.bound or "cohen")
    return model, identity


def _decide_method(run: _Reproduction, m: str, model: Any, identity: dict[str, Any]) -> None:
    """The decisions "robust at r" at the budget's radii into ``decide_M.tsv``."""
    from smoothmix.decisions import decide_dataset
    from smoothmix.run import RunSpec

    budget = run.budget
    assert budget.decide_radii is not None
    decide_tsv = run.out / f"decide_{m}.tsv"
    run.say(f"decide {m} at r = {', '.join(f'{r:g}' for r in budget.decide_radii)} -> "
            f"{decide_tsv}")
    spec = RunSpec.of(run.exp.sigma, skip=budget.decide_skip or 1, max_idx=_max_idx(budget),
                      progress=run.progress, identity=identity, execution=_execution(budget))
    decide_dataset(model, run.test_set, spec, decide_tsv, radii=list(budget.decide_radii),
                   sequence="kt", n=budget.n or FULL_N, alpha=ALPHA, use_label=True)


def _max_idx(budget: Budget) -> int:
    return budget.max_idx if budget.max_idx is not None else -1


def _execution(budget: Budget) -> dict[str, Any]:
    return {"precision": budget.precision} if budget.precision else {}


def _certify_device(name: str | None) -> Any:
    """Where this process certifies: ``name`` (default CUDA if available)."""
    from smoothmix.device import resolve_device

    return resolve_device(name)  # the one device rule: under torchrun each rank its own GPU


def _train_kwargs(exp: Experiment, method: str, budget: Budget) -> dict[str, Any]:
    """The arguments of :func:`smoothmix.training.train` for one row under ``budget``."""
    from smoothmix.methods import method_options
    from smoothmix.training.presets import get_preset

    preset = get_preset(exp.preset_name(method))
    kwargs: dict[str, Any] = {"preset": preset.name, "seed": 0,
                              "test_subset": EVAL_IMAGES}
    if budget.epochs is not None:
        kwargs["epochs"] = budget.epochs
    if budget.train_subset is not None:
        kwargs["train_subset"] = budget.train_subset
    if budget.batch_size is not None:
        kwargs["batch_size"] = budget.batch_size
    accepted = method_options(preset.method)
    if budget.warmup is not None and "warmup" in accepted:
        kwargs["method_options"] = {"warmup": budget.warmup}
    if budget.deferred is not None and "deferred_epochs" in accepted:
        kwargs["deferred"] = budget.deferred  # MACER rows only
    if budget.precision is not None:
        kwargs["precision"] = budget.precision
    return kwargs


def _needs_soft_targets(exp: Experiment, method: str) -> bool:
    """Whether the row's method trains on per-example soft targets (CAT-RS)."""
    from smoothmix.methods import METHODS
    from smoothmix.training.presets import get_preset

    return "soft_target" in METHODS[get_preset(exp.preset_name(method)).method].side_data


def _soft_targets(exp: Experiment, out: Path, budget: Budget, data_dir: Any, device: Any,
                  progress: bool, say: _Say) -> Path:
    """CAT-RS's two stages: the Gaussian sigma = 0.25 teacher (its preset under the same
    budget) and its votes on the training images the row trains on, N = 10,000 as the
    reference (the budget's ``targets_n`` when given). Both resume like every other stage."""
    from smoothmix.checkpoint import CHECKPOINT_NAME
    from smoothmix.run import RunSpec
    from smoothmix.targets import REFERENCE_N, targets_from_checkpoint
    from smoothmix.training import train

    teacher = dataclasses.replace(exp, sigma=TEACHER_SIGMA)
    # At sigma = 0.25 the teacher is the Gaussian row's own model (same preset, budget and
    # seed): train it once, in the row's folder, where that row then finds it finished.
    run_dir = out / ("gaussian" if exp.sigma == TEACHER_SIGMA else TEACHER_DIR)
    say.stage(f"train the CAT-RS teacher (preset {teacher.preset_name('gaussian')}) -> "
              f"{run_dir}")
    train(run_dir, data_dir=data_dir, device=device, progress=progress,
          resume=run_dir.exists(), **_train_kwargs(teacher, "gaussian", budget))
    n = budget.targets_n or REFERENCE_N
    path = out / TARGETS_NAME
    images = (f"the first {budget.train_subset} training images" if budget.train_subset
              else "every training image")
    say.stage(f"CAT-RS soft targets: N={n:,} votes (reference {REFERENCE_N:,}) at sigma "
              f"{TEACHER_SIGMA:g} on one view of {images} -> {path}")
    spec = RunSpec.of(TEACHER_SIGMA, max_idx=budget.train_subset or -1, progress=progress)
    return targets_from_checkpoint(run_dir / CHECKPOINT_NAME, exp.dataset, path, n=n,
                                   data_dir=data_dir, device=device, spec=spec)


def _check_outdir(out: Path, state: dict[str, Any], chosen: list[str]) -> None:
    """A fresh or empty folder, a folder of training runs of ``chosen`` rows that was never
    certified, or one of this experiment with this budget whose rows are all among
    ``chosen``: else one line."""
    require(not out.exists() or out.is_dir(), f"--outdir {out} exists and is not a folder")
    path = out / STATE_NAME
    if not path.is_file():
        _check_new_outdir(out, chosen)
        return
    try:
        old = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise SmoothmixError(f"cannot read {path}: {exc}") from None
    require(old.get("experiment") == state["experiment"],
            f"--outdir {out} holds experiment {old.get('experiment')}, not "
            f"{state['experiment']}; choose a new --outdir (nothing was overwritten)")
    diffs = [f"--{flag(k)} {_show(old.get('budget', {}).get(k))} -> {_show(v)}"
             for k, v in state["budget"].items() if old.get("budget", {}).get(k) != v]
    require(not diffs, f"--outdir {out} was run with another budget ({'; '.join(diffs)}); "
            "repeat its options or choose a new --outdir (nothing was overwritten)")
    held = held_rows(out, state["experiment"])
    left_out = [m for m in held if m not in chosen]
    # Its table would lose them: adding rows is a rerun with a longer list.
    require(not left_out, f"--outdir {out} holds the rows {', '.join(held)}; the rows asked "
            f"for ({','.join(chosen)}) leave out {', '.join(left_out)}: name every row it "
            f"holds (--methods {','.join(chosen + left_out)}) or "
            "choose a new --outdir (nothing was overwritten)")


def _check_new_outdir(out: Path, chosen: list[str]) -> None:
    """A folder without ``reproduce.json``: empty, or holding rows trained first
    (scripts/full-budget-train trains into the folders reproduce uses, with its arguments),
    which are picked up as they are. Anything of its own beside them (notes, logs, the
    results folder's machine.txt) is left alone; a name reproduce would write, or another
    folder, is refused. A folder with no row of ``chosen`` is not a reproduce folder."""
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    rows = [p.name for p in entries if p.is_dir() and p.name in chosen]
    written = {TABLE_NAME, PLOT_NAME, SUMMARY_NAME, TARGETS_NAME}
    prefixes = tuple(f"{kind}_{m}.tsv" for kind in ("certify", "decide") for m in chosen)
    clashes = [p.name for p in entries if p.name not in rows
               and (p.is_dir() or p.name in written or p.name.startswith(prefixes))]
    require(bool(rows) and not clashes,
            f"--outdir {out} is not empty and holds no {STATE_NAME}: not a reproduce folder "
            + (f"(it holds {', '.join(clashes[:3])}{', ...' if len(clashes) > 3 else ''}, "
               "which reproduce would write or is no training folder of the rows asked for)"
               if rows else f"(nor a training folder of the rows asked for, {', '.join(chosen)})")
            + "; choose a new --outdir (nothing was overwritten)")


def _check_row_folders(out: Path, exp: Experiment, chosen: list[str]) -> None:
    """A row's training folder holding a run of another preset (trained for another σ or
    row) contradicts the row list: one line before anything is written, rather than a
    refused resume after the rows before it ran."""
    from smoothmix.checkpoint import CHECKPOINT_NAME, read_checkpoint

    for m in chosen:
        ckpt = out / m / CHECKPOINT_NAME
        if not ckpt.is_file():
            continue
        stored = read_checkpoint(ckpt).settings().get("preset")
        require(stored in (None, exp.preset_name(m)),
                f"--outdir {out}: the training folder of row {m} ({ckpt.parent}) holds a run "
                f"of preset {stored}, not {exp.preset_name(m)}; move it away or choose a new "
                "--outdir (nothing was overwritten)")


def held_rows(out: Path, experiment: str) -> list[str]:
    """The rows a ``reproduce`` folder holds: the methods of its certification files (their
    records name the experiment and the method; other files are not rows)."""
    from smoothmix.storage.records import read_record

    rows: list[str] = []
    for tsv in sorted(out.glob("certify_*.tsv")):
        record = read_record(tsv, required=False)
        method = record.settings.get("method") if record is not None else None
        if (isinstance(method, str) and record is not None
                and record.settings.get("experiment") == experiment and method not in rows):
            rows.append(method)
    return rows


def _show(value: Any) -> str:
    return "(full)" if value is None else str(value)


class _Say:
    """One line per stage (rank 0 only): ``reproduce mnist-0.50 [2/5] certify ...``."""

    def __init__(self, enabled: bool, stages: int, name: str) -> None:
        self.enabled, self.stages, self.name, self.done = enabled, stages, name, 0

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(f"smoothmix reproduce {self.name}: {text}", flush=True)

    def stage(self, text: str) -> None:
        self.done += 1
        self(f"[{self.done}/{self.stages}] {text}")


__all__ = ["EVAL_IMAGES", "STATE_NAME", "TARGETS_NAME", "TEACHER_DIR", "TEACHER_SIGMA",
           "reproduce"]
