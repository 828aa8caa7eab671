"""``smoothmix reproduce``: run one of the paper's tables end to end and put our numbers
beside the published ones.

An *experiment* is a published table: a dataset and a σ (``mnist-0.50``, ``cifar10-1.00``,
``imagenet-1.00``, ...). Its methods are the rows with a training preset
(``{dataset}-{method}-{sigma}``, see :mod:`smoothmix.training.presets`) and the rows with
published values (``data/published.json``, docs/MATH.md §5); a row needs a preset to be run and
published values to be compared. Adding a row is one entry: a preset of that name, or a
published entry keyed by the method.

The full budget is the presets and the published protocol (the full test set, ImageNet
every 100th validation image, n0 = 100, N = 100,000, α = 0.001). A :class:`Budget` with
overrides (epochs, training subset, images per step, warm-up, MACER deferral, test skip,
N, max index) is smaller and is stated in every output.

This module only orchestrates the public API: :func:`smoothmix.training.train` (resumable,
DDP under torchrun), :func:`smoothmix.certification.certify_dataset` (resumable, sharded
under torchrun) and :mod:`smoothmix.analysis`. Output folder::

    OUTDIR/reproduce.json          experiment + budget (a rerun must match it)
    OUTDIR/<method>/               one training folder per method (checkpoint, log.csv)
    OUTDIR/certify_<method>.tsv    one certification file per method
    OUTDIR/table.md, curves.png, summary.json

Rerunning the same command continues: finished trainings are skipped, an interrupted one
resumes, certification resumes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from smoothmix.errors import SmoothmixError, require

STATE_NAME = "reproduce.json"
TABLE_NAME = "table.md"
PLOT_NAME = "curves.png"
SUMMARY_NAME = "summary.json"
N0 = 100
ALPHA = 0.001
FULL_N = 100_000
# Noisy test accuracy logged after every epoch: a training-time monitor only, not part of
# the recipe or the certificate.
EVAL_IMAGES = 1000
# CAT-RS rows (docs/MATH.md §3.8) first train a Gaussian sigma = 0.25 "teacher" (its preset, same
# budget) and count its votes on the training images into the soft targets.
TEACHER_SIGMA = 0.25
TEACHER_DIR = "catrs-teacher"
TARGETS_NAME = "catrs-targets.npz"
FULL_TARGETS_N = 10_000  # the CAT-RS reference's votes per training image


@dataclass(frozen=True)
class Experiment:
    """One published table."""

    name: str
    dataset: str
    sigma: float
    skip: int  # the published protocol's test subset: every skip-th test image
    test_images: int
    radii: tuple[float, ...]
    published: dict[str, dict[str, Any]]  # method -> {"acr", optional "certified", "note"}

    def preset_name(self, method: str) -> str:
        return f"{self.dataset}-{method}-{self.sigma:.2f}"

    def runnable(self) -> list[str]:
        """Methods with a training preset for this table, in the presets' order."""
        from smoothmix.training.presets import PRESETS

        prefix, suffix = f"{self.dataset}-", f"-{self.sigma:.2f}"
        found = [name[len(prefix):-len(suffix)] for name, p in PRESETS.items()
                 if p.dataset == self.dataset and p.sigma == self.sigma
                 and name.startswith(prefix) and name.endswith(suffix)]
        return [m for m in self.methods() if m in found]

    def methods(self) -> list[str]:
        """Every row, in the paper's order (the published rows), then presets without one."""
        from smoothmix.training.presets import PRESETS

        prefix, suffix = f"{self.dataset}-", f"-{self.sigma:.2f}"
        extra = [name[len(prefix):-len(suffix)] for name, p in PRESETS.items()
                 if p.dataset == self.dataset and p.sigma == self.sigma
                 and name.startswith(prefix) and name.endswith(suffix)]
        return list(self.published) + [m for m in extra if m not in self.published]


@dataclass(frozen=True)
class Budget:
    """What a run spends. ``None`` everywhere is the full published budget; each other value
    overrides one thing for every method of the run (and is stated in the outputs)."""

    epochs: int | None = None  # instead of the presets' epochs
    train_subset: int | None = None  # the first N training images
    batch_size: int | None = None  # images per optimiser step for every method
    warmup: int | None = None  # epochs of SmoothAdv's epsilon / SmoothMix's mix warm-up
    deferred: int | None = None  # MACER: robustness term from this epoch (0: from the start)
    skip: int | None = None  # certify every skip-th test image (default: the protocol's)
    n: int | None = None  # CERTIFY's N (default 100,000)
    max_idx: int | None = None  # certify only test indices below this
    targets_n: int | None = None  # CAT-RS soft targets: votes per image (default 10,000)
    precision: str | None = None  # training and certification in bf16 (default fp32)
    bound: str | None = None  # CERTIFY's radius formula (default cohen, as published)
    # Also decide "robust at r" with the KT confidence sequence (label mode, cap N) at these
    # radii on every decide_skip-th test image (default all): certified accuracy on the
    # whole test set at a fraction of CERTIFY's cost.
    decide_radii: tuple[float, ...] | None = None
    decide_skip: int | None = None

    def is_full(self) -> bool:
        return all(v is None for v in dataclasses.asdict(self).values())

    def validate(self) -> None:
        for name in ("epochs", "train_subset", "batch_size", "skip", "n", "max_idx",
                     "targets_n"):
            value = getattr(self, name)
            require(value is None or (isinstance(value, int) and value >= 1),
                    f"--{_flag(name)} must be an integer >= 1, got {value!r}")
        for name in ("warmup", "deferred"):
            value = getattr(self, name)
            require(value is None or (isinstance(value, int) and value >= 0),
                    f"--{_flag(name)} must be an integer >= 0, got {value!r}")
        if self.n is not None:
            from smoothmix.core import check_certify_args

            check_certify_args(N0, self.n, ALPHA, 1000)
        if self.precision is not None:
            from smoothmix.execution import check_precision

            check_precision(self.precision)
        if self.bound is not None:
            from smoothmix.core import check_bound

            check_bound(self.bound)
        radii = self.decide_radii
        require(radii is None or (len(radii) >= 1 and len(set(radii)) == len(radii)
                                  and all(math.isfinite(r) and r >= 0 for r in radii)),
                f"--decide-radii must be distinct numbers >= 0, got {radii}")
        require(self.decide_skip is None or (isinstance(self.decide_skip, int)
                                             and self.decide_skip >= 1),
                f"--decide-skip must be an integer >= 1, got {self.decide_skip!r}")
        require(self.decide_skip is None or radii is not None,
                "--decide-skip needs --decide-radii")

    def normalised(self, experiment: Experiment) -> Budget:
        """The protocol's own values are not overrides: ``--skip 1 --n 100000`` on MNIST is
        the full budget (and the same budget as no options in a rerun's check)."""
        return dataclasses.replace(
            self, skip=None if self.skip == experiment.skip else self.skip,
            n=None if self.n == FULL_N else self.n,
            targets_n=None if self.targets_n == FULL_TARGETS_N else self.targets_n,
            precision=None if self.precision == "fp32" else self.precision,
            bound=None if self.bound == "cohen" else self.bound,
            decide_radii=tuple(float(r) for r in self.decide_radii) if self.decide_radii
            else None,
            decide_skip=None if self.decide_skip == 1 else self.decide_skip)

    def describe(self, experiment: Experiment) -> str:
        """The one line that says what was spent."""
        n = self.n or FULL_N
        skip = self.skip or experiment.skip
        count = _num_certified(experiment, skip, self.max_idx)
        test = _which_images(skip, self.max_idx, origin=False)
        protocol = f"CERTIFY on {test} ({count} images), n0={N0}, N={n:,}, alpha={ALPHA}"
        if self.bound is not None:
            protocol += f", {self.bound} radius (published: cohen)"
        if self.decide_radii is not None:
            dskip = self.decide_skip or 1
            dtest = _which_images(dskip, self.max_idx, origin=False)
            protocol += (f"; plus KT decisions (certify --radii, label mode) at r = "
                         f"{', '.join(f'{r:g}' for r in self.decide_radii)} on {dtest} "
                         f"({_num_certified(experiment, dskip, self.max_idx)} images), cap "
                         f"N={n:,}, alpha={ALPHA}")
        if self.precision is not None:
            protocol += f"; training and certification in {self.precision} (published: fp32)"
        if self.is_full():
            return f"Budget: full (the presets; {protocol})."
        train = []
        if self.epochs is not None:
            train.append(_plural(self.epochs, "epoch"))
        if self.train_subset is not None:
            train.append(f"first {self.train_subset} training images")
        if self.batch_size is not None:
            train.append(f"{self.batch_size} images per step")
        if self.warmup is not None:
            train.append(f"warm-up over {_plural(self.warmup, 'epoch')}")
        if self.deferred is not None:
            train.append(f"MACER deferred to epoch {self.deferred}" if self.deferred
                         else "MACER not deferred")
        if self.targets_n is not None:
            train.append(f"CAT-RS soft targets from N={self.targets_n:,} votes per image "
                         f"(reference {FULL_TARGETS_N:,})")
        text = (f"{'; '.join(train)} (everything else as the presets)" if train
                else "the published budget (the presets)")
        return (f"Budget: reduced, not the published one. Training: {text}. "
                f"Certification: {protocol}"
                + (" (the radius is capped by N; the published tables use N=100,000)"
                   if n < FULL_N else "") + ".")


def _which_images(skip: int, max_idx: int | None, *, origin: bool = True) -> str:
    """The images a run covers, in words: the full test set, or every skip-th (from idx 0,
    said when ``origin``: the tables compare them with the authors' same images) below
    index max_idx."""
    if skip == 1 and max_idx is None:
        return "the full test set"
    which = (f"every {_ordinal(skip)} test image" + (" from idx 0" if origin else "")
             if skip > 1 else "every test image")
    return which + (f" below index {max_idx}" if max_idx is not None else "")


def _ordinal(k: int) -> str:
    suffix = "th" if k % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _flag(name: str) -> str:
    return {"batch_size": "batch", "max_idx": "max"}.get(name, name.replace("_", "-"))


def _num_certified(experiment: Experiment, skip: int, max_idx: int | None) -> int:
    total = experiment.test_images * experiment.skip  # size of the test split
    stop = total if max_idx is None else min(max_idx, total)
    return len(range(0, stop, skip))


@lru_cache(maxsize=1)
def _published() -> dict[str, Any]:
    text = resources.files("smoothmix.data").joinpath("published.json").read_text("utf-8")
    return json.loads(text)


def list_experiments() -> list[str]:
    return list(_published()["experiments"])


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; unknown names are a one-line error listing all."""
    data = _published()["experiments"]
    require(name in data, f"unknown experiment {name!r}; valid experiments: "
            f"{', '.join(data)} (`smoothmix reproduce --list` describes them)")
    e = data[name]
    return Experiment(name=name, dataset=e["dataset"], sigma=float(e["sigma"]),
                      skip=int(e["skip"]), test_images=int(e["test_images"]),
                      radii=tuple(float(r) for r in e["radii"]),
                      published=dict(e["methods"]))


def select_methods(experiment: Experiment, methods: list[str] | None) -> list[str]:
    """The methods to run (default: every row with a preset); one-line errors otherwise."""
    runnable = experiment.runnable()
    if not methods:
        require(bool(runnable), f"{experiment.name} has no method with a training preset")
        return runnable
    for m in methods:
        require(m in experiment.methods() or m in runnable,
                f"unknown method {m!r} for {experiment.name}; its methods: "
                f"{', '.join(experiment.methods())}")
        require(m in runnable, f"method {m!r} has no training preset for {experiment.name} "
                f"(no preset {experiment.preset_name(m)}; published values only); methods "
                f"with a preset: {', '.join(runnable)}")
    require(len(set(methods)) == len(methods), f"--methods repeats a method: {methods}")
    return list(methods)


def describe_experiments() -> str:
    """What ``smoothmix reproduce --list`` prints."""
    from smoothmix.training.presets import get_preset

    proto = _published()["protocol"]
    lines = [f"Full budget: the presets; CERTIFY n0={proto['n0']}, N={proto['n']:,}, "
             f"alpha={proto['alpha']}. Published values: {_published()['source']}", ""]
    for name in list_experiments():
        e = get_experiment(name)
        test = "full test set" if e.skip == 1 else f"every {e.skip}th validation image"
        lines.append(f"{name}: {e.dataset}, sigma={e.sigma:g}, {test} ({e.test_images} "
                     f"images), radii {', '.join(f'{r:g}' for r in e.radii)}")
        runnable = e.runnable()
        for m in e.methods():
            pub = e.published.get(m)
            if m in runnable:
                p = get_preset(e.preset_name(m))
                what = f"preset {p.name} ({p.epochs} epochs)"
            else:
                what = "no preset: published values only"
            shown = "published: —"
            if pub:
                shown = f"published ACR {pub['acr']:.3f}"
                if pub.get("certified"):
                    shown += " | " + " ".join(f"{a:g}" for a in pub["certified"])
                if pub.get("note"):
                    shown += f" ({pub['note']})"
            lines.append(f"  {m:18s} {what}; {shown}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- the run


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
    another budget, the dataset on disk) runs before anything is written.
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
    print(summary["table"], flush=True)
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
        _check_outdir(out, state)
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

    budget = run.budget
    tsv = run.out / f"certify_{m}.tsv"
    run.say.stage(f"certify {m} -> {tsv}")
    model, _ = load_model(ckpt, device=run.cert_device)
    # A retrained model must never reuse another model's rows.
    identity = {"experiment": run.exp.name, "method": m, "checkpoint_sha256": file_sha256(ckpt)}
    certify_dataset(model, run.test_set, run.exp.sigma, tsv, n0=N0, n=budget.n or FULL_N,
                    alpha=ALPHA, skip=budget.skip or run.exp.skip, max_idx=_max_idx(budget),
                    progress=run.progress, identity=identity, execution=_execution(budget),
                    bound=budget.bound or "cohen")
    return model, identity


def _decide_method(run: _Reproduction, m: str, model: Any, identity: dict[str, Any]) -> None:
    """The decisions "robust at r" at the budget's radii into ``decide_M.tsv``."""
    from smoothmix.decisions import decide_dataset

    budget = run.budget
    assert budget.decide_radii is not None
    decide_tsv = run.out / f"decide_{m}.tsv"
    run.say(f"decide {m} at r = {', '.join(f'{r:g}' for r in budget.decide_radii)} -> "
            f"{decide_tsv}")
    decide_dataset(model, run.test_set, run.exp.sigma, decide_tsv,
                   radii=list(budget.decide_radii), sequence="kt", n=budget.n or FULL_N,
                   alpha=ALPHA, use_label=True, skip=budget.decide_skip or 1,
                   max_idx=_max_idx(budget), progress=run.progress, identity=identity,
                   execution=_execution(budget))


def _max_idx(budget: Budget) -> int:
    return budget.max_idx if budget.max_idx is not None else -1


def _execution(budget: Budget) -> dict[str, Any] | None:
    return {"precision": budget.precision} if budget.precision else None


def _certify_device(name: str | None) -> Any:
    """Where this process certifies: ``name`` (default CUDA if available), and under
    torchrun its own GPU (``cuda`` without an index means ``cuda:LOCAL_RANK``, as in
    training). Not yet run on a GPU."""
    import torch

    from smoothmix.device import resolve_device
    from smoothmix.distributed import distributed_env

    device = resolve_device(name)
    _, world, local_rank = distributed_env()
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


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
    n = budget.targets_n or FULL_TARGETS_N
    path = out / TARGETS_NAME
    images = (f"the first {budget.train_subset} training images" if budget.train_subset
              else "every training image")
    say.stage(f"CAT-RS soft targets: N={n:,} votes (reference {REFERENCE_N:,}) at sigma "
              f"{TEACHER_SIGMA:g} on one view of {images} -> {path}")
    return targets_from_checkpoint(run_dir / CHECKPOINT_NAME, exp.dataset, path,
                                   sigma=TEACHER_SIGMA, n=n, data_dir=data_dir, device=device,
                                   max_idx=budget.train_subset or -1, progress=progress)


def write_report(exp: Experiment, out: Path, methods: list[str], budget: Budget,
                 timings: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """``table.md``, ``curves.png`` and ``summary.json`` from the certification files."""
    from smoothmix.analysis import plot_certified_accuracy, read_decisions, read_results
    from smoothmix.core import radius_from_counts
    from smoothmix.storage import atomic_write
    from smoothmix.training.callbacks import LOG_NAME

    results = [read_results(out / f"certify_{m}.tsv") for m in methods]
    radii = list(exp.radii)
    skip = budget.skip or exp.skip
    rows = []
    for m, res in zip(methods, results, strict=True):
        pub = exp.published.get(m) or {}
        same = _published_subset(pub, skip, budget.max_idx, exp)
        ours_acc = [round(100 * float(a), 4) for a in res.certified_accuracy(radii)]
        row = {
            "method": m, "preset": exp.preset_name(m), "examples": len(res),
            "acr": res.acr(), "certified_accuracy": ours_acc,
            "published_acr": pub.get("acr"), "published_certified_accuracy":
            pub.get("certified"), "published_note": pub.get("note"),
            "published_same_images": same is not None,
            "published_same_images_acr": (same or {}).get("acr"),
            "published_same_images_acr_range": (same or {}).get("acr_range"),
            "published_same_images_certified_accuracy": (same or {}).get("certified"),
            "published_same_images_certified_range": (same or {}).get("certified_range"),
            "published_certified_range": pub.get("certified_range"),
            # This invocation's wall time per stage (a resumed run counts only its part)...
            **(timings or {}).get(m, {}),
            # ...and the whole run's, as its files record it across every resume.
            **_recorded_seconds(out / m / LOG_NAME, res),
        }
        decide = out / f"decide_{m}.tsv"
        if budget.decide_radii is not None and decide.exists():
            dec = read_decisions(decide)
            row["decisions"] = {"examples": len(dec.idx), "radii": dec.radii.tolist(),
                                "certified_accuracy": [round(100 * float(a), 4)
                                                       for a in dec.certified_accuracy()],
                                "mean_samples": dec.mean_samples().tolist()}
        rows.append(row)
    n = budget.n or FULL_N
    cap = radius_from_counts(n, 0, n, ALPHA, exp.sigma, budget.bound or "cohen") or 0.0
    table = _format(exp, rows, budget, cap)
    atomic_write(out / TABLE_NAME, table)
    plot_certified_accuracy(results, out / PLOT_NAME, labels=methods)
    summary = {"experiment": exp.name, "dataset": exp.dataset, "sigma": exp.sigma,
               "budget": dataclasses.asdict(budget), "budget_line": budget.describe(exp),
               "full_budget": budget.is_full(), "n0": N0, "n": budget.n or FULL_N,
               "alpha": ALPHA, "radius_cap": cap, "radii": radii, "rows": rows, "table": table}
    atomic_write(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    return summary


def _recorded_seconds(log_csv: Path, res: Any) -> dict[str, float]:
    """Training time summed over every epoch of ``log.csv`` and CERTIFY time summed over the
    rows (CERTIFY runs one image at a time, so the rows' times add up to its wall time;
    decisions share a pool, so their rows' times do not and are left out)."""
    recorded: dict[str, float] = {}
    if log_csv.is_file():
        with open(log_csv, newline="") as f:
            epochs = [float(r["time_s"]) for r in csv.DictReader(f) if r.get("time_s")]
        recorded["train_epochs_seconds_total"] = round(sum(epochs), 1)
    times = [float(t) for t in res.time if not math.isnan(t)]
    if times:
        recorded["certify_rows_seconds_total"] = round(sum(times), 1)
    return recorded


def _published_subset(pub: dict[str, Any], skip: int, max_idx: int | None,
                      exp: Experiment) -> dict[str, Any] | None:
    """The published values on exactly the images certified (every skip-th from idx 0),
    from the authors' per-image logs; the full-set values when every image is certified;
    None when the logs' figures for that subset are not at hand."""
    if max_idx is not None:
        return None
    if skip == exp.skip:
        if pub.get("acr") is None:
            return None
        return {key: pub.get(key) for key in ("acr", "acr_range", "certified",
                                              "certified_range")}
    return (pub.get("subsets") or {}).get(str(skip))


def _format(exp: Experiment, rows: list[dict[str, Any]], budget: Budget, cap: float) -> str:
    """Markdown: ours, then (published, difference) where a published value exists; the
    published value is the one on the same images where the authors' logs give it, else
    the full test set's (marked *). Radii beyond ``cap`` (the largest radius CERTIFY can
    report with this N) are marked, since a 0 there is an artefact of N, not of the model.
    A second table gives the KT decisions' certified accuracy, when they were run."""
    from smoothmix.analysis import BEYOND_CAP

    lines, starred = _certify_table(exp, rows, budget, cap)
    if starred:
        lines += ["", "* published value of the full test set (10,000 images); subsets "
                  "starting at idx 0 are harder than the whole set, so expect ours lower."]
    if any(r > cap for r in exp.radii):
        lines += ["", f"{BEYOND_CAP} beyond the radius cap = {cap:.3f} of N = "
                  f"{budget.n or FULL_N:,}: no radius there can be certified with this N, so "
                  "our 0 is an artefact of N, not of the model."]
    lines += _outside_seeds([
        _Spread(row["method"], row["acr"], row["published_same_images_acr_range"],
                list(exp.radii), row["certified_accuracy"],
                row["published_same_images_certified_range"])
        for row in rows if row["published_same_images"]], "CERTIFY")
    lines += _decisions_table(exp, rows, budget)
    if _decided_all(budget):  # the published full-set ranges are on the same images
        lines += _outside_seeds([
            _Spread(row["method"], None, None, row["decisions"]["radii"],
                    row["decisions"]["certified_accuracy"],
                    _ranges_at(exp.radii, row["decisions"]["radii"],
                               row["published_certified_range"]))
            for row in rows if "decisions" in row],
            "KT decisions (an image undecided at the cap counts as not certified)")
    return "\n".join(lines) + "\n"


@dataclass
class _Spread:
    """One method's values beside the authors' 5-seed [min, max] on the same images."""

    method: str
    acr: float | None
    acr_range: list[float] | None
    radii: list[float]
    certified: list[float]
    certified_range: list[list[float]] | None


def _ranges_at(radii: Sequence[float], asked: Sequence[float],
               ranges: list[list[float]] | None) -> list[list[float]] | None:
    """The published [min, max] at each radius in ``asked`` (from those at ``radii``)."""
    if ranges is None:
        return None
    at = dict(zip(radii, ranges, strict=False))
    return [at[r] for r in asked] if all(r in at for r in asked) else None


def _outside_seeds(spreads: list[_Spread], what: str) -> list[str]:
    """One line naming every value outside the authors' 5-seed [min, max] on the same
    images (where their logs give it): a difference inside the seeds' spread is what another
    training seed does; one outside it asks for a reason."""
    notes, checked = [], False
    for sp in spreads:
        if sp.acr is not None and sp.acr_range is not None:
            checked = True
            if not sp.acr_range[0] <= round(sp.acr, 3) <= sp.acr_range[1]:
                notes.append(f"{sp.method} ACR {sp.acr:.3f} (seeds {sp.acr_range[0]:.3f}-"
                             f"{sp.acr_range[1]:.3f})")
        for r, a, span in zip(sp.radii, sp.certified, sp.certified_range or [], strict=False):
            checked = True
            if not span[0] <= round(a, 2) <= span[1]:
                notes.append(f"{sp.method} r = {r:g}: {a:.2f} (seeds {span[0]:.2f}-"
                             f"{span[1]:.2f})")
    if not checked:
        return []
    if not notes:
        return ["", f"{what}: every value lies inside the authors' 5-seed range on the same "
                "images."]
    # One more seed of the same recipe lands outside the range of five with probability 2/6
    # at each value (exchangeable seeds), so a few such notes are expected, not a verdict.
    return ["", f"{what}, outside the authors' 5-seed range on the same images: "
            + "; ".join(notes) + ". (A sixth seed of the same recipe lands outside the range "
            "of five with probability 1/3 at each value.)"]


def _certify_table(exp: Experiment, rows: list[dict[str, Any]], budget: Budget,
                   cap: float) -> tuple[list[str], bool]:
    """The heading and the CERTIFY table; whether a cell is marked * (full test set)."""
    from smoothmix.analysis import BEYOND_CAP

    skip = budget.skip or exp.skip
    images = rows[0]["examples"] if rows else 0
    which = _which_images(skip, budget.max_idx)
    head = ["method", "examples", "ACR",
            *(f"r = {r:g}{BEYOND_CAP if r > cap else ''}" for r in exp.radii)]
    lines = [f"{exp.name}: {exp.dataset}, sigma = {exp.sigma:g}.", "", budget.describe(exp), "",
             f"CERTIFY (n0 = {N0}, N = {budget.n or FULL_N:,}, alpha = {ALPHA}, "
             f"{budget.bound or 'cohen'} radius) on {which} ({images} images): ACR and "
             "certified accuracy (%) at radius r; each cell is ours, then (published, ours - "
             "published). Published: the authors' models on the same images (mean of their 5 "
             "seeds, from their per-image logs; docs/MATH.md §5) where known, else the full "
             "test set's mean (marked *).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    starred = False
    for row in rows:
        cells, marked = _certify_cells(exp, row)
        starred |= marked
        lines.append("| " + " | ".join(cells) + " |")
    return lines, starred


def _certify_cells(exp: Experiment, row: dict[str, Any]) -> tuple[list[str], bool]:
    """One method's CERTIFY row; whether it shows a full-test-set (*) published value."""
    same = row["published_same_images"]
    pub_acr = row["published_same_images_acr"] if same else row["published_acr"]
    pub_acc = (row["published_same_images_certified_accuracy"] if same
               else row["published_certified_accuracy"]) or [None] * len(exp.radii)
    mark = "" if same else "*"
    starred = not same and (pub_acr is not None)
    cells = [row["method"], str(row["examples"]), _cell(row["acr"], pub_acr, 3, mark)]
    cells += [_cell(a, p, 2, mark if same or p is None else "*")
              for a, p in zip(row["certified_accuracy"], pub_acc, strict=True)]
    if same and row["published_same_images_certified_accuracy"] is None:
        full = row["published_certified_accuracy"] or [None] * len(exp.radii)
        cells[3:] = [_cell(a, p, 2, "*") for a, p in
                     zip(row["certified_accuracy"], full, strict=True)]
        starred |= any(p is not None for p in full)
    return cells, starred


def _decisions_table(exp: Experiment, rows: list[dict[str, Any]], budget: Budget) -> list[str]:
    """The KT decisions' table (with its blank line before), or nothing."""
    decided = [row for row in rows if "decisions" in row]
    if not decided:
        return []
    d0 = decided[0]["decisions"]
    dwhich = _which_images(budget.decide_skip or 1, budget.max_idx)
    dhead = ["method", "examples", *(f"r = {r:g}" for r in d0["radii"]),
             "mean samples per decision"]
    lines = ["", f"KT confidence-sequence decisions (certify --radii, label mode, alpha "
             f"= {ALPHA}, cap {budget.n or FULL_N:,} samples) on {dwhich} "
             f"({d0['examples']} images): certified accuracy (%), ours then (published "
             "CERTIFY value on the same images, ours - published) where known. A "
             "decision is not a radius: no ACR.", "",
             "| " + " | ".join(dhead) + " |", "|" + "---|" * len(dhead)]
    for row in decided:
        d = row["decisions"]
        pub = row["published_certified_accuracy"] if _decided_all(budget) else None
        pub_at = {r: p for r, p in zip(exp.radii, pub or [], strict=False)}
        cells = [row["method"], str(d["examples"])]
        cells += [_cell(a, pub_at.get(r), 2) for r, a in
                  zip(d["radii"], d["certified_accuracy"], strict=True)]
        cells.append(f"{sum(d['mean_samples']) / len(d['mean_samples']):,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _decided_all(budget: Budget) -> bool:
    """Whether the KT decisions ran on every test image (the published full-set values are
    then on the same images)."""
    return (budget.decide_skip or 1) == 1 and budget.max_idx is None


def _cell(ours: float, published: float | None, digits: int, mark: str = "") -> str:
    if published is None:
        return f"{ours:.{digits}f}"
    return (f"{ours:.{digits}f} ({published:.{digits}f}{mark}, "
            f"{ours - published:+.{digits}f})")


# --------------------------------------------------------------------------- helpers


def _check_outdir(out: Path, state: dict[str, Any]) -> None:
    """A fresh or empty folder, or one of this experiment with this budget: else one line."""
    require(not out.exists() or out.is_dir(), f"--outdir {out} exists and is not a folder")
    path = out / STATE_NAME
    if not path.is_file():
        require(not out.is_dir() or not any(out.iterdir()),
                f"--outdir {out} is not empty and holds no {STATE_NAME}: not a reproduce "
                "folder; choose a new --outdir (nothing was overwritten)")
        return
    try:
        old = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise SmoothmixError(f"cannot read {path}: {exc}") from None
    require(old.get("experiment") == state["experiment"],
            f"--outdir {out} holds experiment {old.get('experiment')}, not "
            f"{state['experiment']}; choose a new --outdir (nothing was overwritten)")
    diffs = [f"--{_flag(k)} {_show(old.get('budget', {}).get(k))} -> {_show(v)}"
             for k, v in state["budget"].items() if old.get("budget", {}).get(k) != v]
    require(not diffs, f"--outdir {out} was run with another budget ({'; '.join(diffs)}); "
            "repeat its options or choose a new --outdir (nothing was overwritten)")


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


__all__ = ["Budget", "Experiment", "describe_experiments", "get_experiment",
           "list_experiments", "reproduce", "select_methods", "write_report"]
