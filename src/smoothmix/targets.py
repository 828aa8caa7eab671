"""Soft targets for CAT-RS (docs/MATH.md §3.8): the vote frequencies of a smoothed classifier on
every training image, keyed by dataset index.

``pi_b = counts_b / N``, the votes of the base classifier on ``N`` noisy copies (sigma, in
the reference a Gaussian model trained at sigma = 0.25 with N = 10,000) of ONE augmented
view of training image ``b`` (a random crop/flip where the dataset trains with them, as the
reference computed it once on its augmented training loader). The votes are counted by
:meth:`smoothmix.core.Smooth.votes`, the counter CERTIFY uses; each example draws
its view and its noise from a generator seeded by ``(seed, idx)``, so a row does not depend
on which shard or resumed process computed it.

The file (``--out FILE``) is a NumPy ``.npz`` with ``counts`` (``num_examples x K``
unsigned integers; ``counts.sum(1) == N`` on every row) and ``meta`` (JSON: dataset, split,
size, a fingerprint of the dataset's contents, N, sigma, seed, the checkpoint's SHA-256,
...). While a run is in progress its rows live in ``FILE.part.npy`` beside its settings
``FILE.part.json`` (:class:`smoothmix.storage.arrays.ResumableRows`: each row written as soon
as it is counted); rerunning the same command resumes; the final file is written atomically
at the end. ``--shard I/K``
covers every K-th example starting at the I-th into ``FILE.rankIofK.npz`` (merge them with
``smoothmix merge``); under torchrun the ranks shard automatically and rank 0
merges.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from smoothmix.checks import check_count, num_classes_of
from smoothmix.core import Smooth
from smoothmix.data.datasets import Examples, TensorImageDataset, dataset_fingerprint
from smoothmix.data.loaders import random_crop_flip
from smoothmix.device import module_device
from smoothmix.errors import require
from smoothmix.execution import EXECUTION_KEYS, Execution
from smoothmix.noise import Noise
from smoothmix.provenance import provenance
from smoothmix.run import _REMOVED_KEYWORDS, RunSpec, as_spec
from smoothmix.runner import (  # noqa: F401 - example_seed re-exported
    Compute,
    Emit,
    Rows,
    Store,
    example_generator,
    example_seed,
    run_dataset,
)
from smoothmix.storage.arrays import (
    ResumableRows,
    merge_array_rows,
    part_paths,
    read_arrays,
    require_same,
    write_arrays,
)
from smoothmix.storage.merge import same_run
from smoothmix.storage.shards import Shard, selected_indices, shard_path

__all__ = [
    "FORMAT", "FORMAT_VERSION", "REFERENCE_N", "REFERENCE_SIGMA", "Targets", "build_targets",
    "check_targets", "covered_rows", "load_targets", "merge_targets", "shard_file",
    "soft_targets_for", "targets_from_checkpoint",
]

FORMAT = "smoothmix-targets"
FORMAT_VERSION = 1
REFERENCE_N = 10_000  # the CAT-RS reference's N
REFERENCE_SIGMA = 0.25  # the CAT-RS reference's sigma (of the Gaussian model that votes)


@dataclass
class Targets:
    """A loaded targets file: vote ``counts`` (num_examples x K) and its ``meta``."""

    counts: np.ndarray
    meta: dict[str, Any]
    path: Path

    @property
    def n(self) -> int:
        return int(self.meta["n"])

    def probs(self) -> torch.Tensor:
        """pi = counts / N as float32, row i = dataset index i (computed in float32: no
        float64 copy of ImageNet's 1.28M x 1000 table)."""
        return torch.from_numpy(self.counts.astype(np.float32)).div_(self.n)


# --------------------------------------------------------------------------- building


def build_targets(
    model: nn.Module,
    dataset: Examples,
    spec: RunSpec | float | Noise,
    out_path: str | os.PathLike,
    *,
    n: int = REFERENCE_N,
    augment: bool | None = None,
    **extra: Any,
) -> Path:
    """Count ``n`` votes on one (augmented) view of every example into ``out_path``.

    ``spec`` (:class:`smoothmix.run.RunSpec`): the noise, ``batch_size``, ``seed``,
    ``shard``, ``identity`` (dataset name, checkpoint hash, ...: stored in the file and
    checked on resume), ``num_classes``, ``progress``, ``max_idx`` (-1: all; else only the
    examples with index below it, a file that serves training subsets of at most that many
    images) and ``execution`` (as for certify: "bf16" counts under bf16 autocast; the
    resolved execution is recorded in the file, and a resumed run takes the recorded one).
    Targets cover every example (``skip`` 1).
    ``augment`` (default: the dataset's ``augment`` flag) takes one random crop (padding 4)
    + flip per in-memory example; folder datasets apply their own training transform under
    the example's seed. Returns the path of the finished file (the merged file under
    torchrun, the shard file with ``shard``). A bare sigma or noise is a spec with the
    default fields.

    Before 0.5 the spec's fields (and ``precision``) were keyword arguments; that form was
    removed in 0.6 (``extra``: any keyword is a one-line ``TypeError`` naming RunSpec).
    """
    spec = as_spec(spec, extra, "build_targets")
    check_count("n", n)
    require(len(dataset) >= 1, "the dataset is empty")
    max_idx = spec.max_idx  # -1 or >= 1 (RunSpec checks it)
    require(spec.skip == 1, f"targets cover every example; skip must be 1, got {spec.skip}")
    classes = num_classes_of(dataset, spec.num_classes)
    if augment is None:
        augment = bool(getattr(dataset, "augment", False))
    base = {
        "format": FORMAT, "version": FORMAT_VERSION, "num_examples": len(dataset),
        "num_classes": classes, "dataset_sha256": dataset_fingerprint(dataset), "n": n,
        "sigma": spec.noise.sigma, "seed": spec.seed, "augment": augment,
        "max_idx": max_idx if 0 < max_idx < len(dataset) else -1, **dict(spec.identity),
        **spec.noise.settings(),  # none for Gaussian noise, as in files of earlier releases
        **spec.denoiser_settings(),  # likewise none without a denoiser
    }
    compute = _counting(model, dataset, spec, classes, n, augment)
    store = TargetsStore(n, len(dataset), classes)
    return run_dataset("targets", compute, model, dataset, out_path, base, spec, store=store)


def _counting(model: nn.Module, dataset: Examples, spec: RunSpec, classes: int, n: int,
              augment: bool) -> Compute:
    """The rows of targets: each example's ``n`` votes on its one view, as ``(idx, counts)``."""
    device = module_device(model, torch.device("cpu"))

    def compute(todo: list[int], ex: Execution, emit: Emit) -> None:
        smooth = Smooth(model, classes, spec.noise, execution=ex)
        for idx in todo:
            generator = example_generator(model, spec.seed, idx)
            x = _view(dataset, idx, augment, generator, device)
            emit([(idx, _votes(smooth, x, n, spec.batch_size, generator))])

    return compute


class TargetsStore(Store):
    """The ``.npz`` vote table as the one runner (:func:`smoothmix.runner.run_dataset`)
    keeps it: rows in ``FILE.part.npy`` while counted (a row is done when its votes sum to
    N), the finished file written atomically, shards in ``OUT.rankIofK.npz`` (an explicit
    ``shard`` too), merged by :func:`merge_targets`; under torchrun the other ranks wait
    for the merged file, which training reads next."""

    wait_for_merge = True

    def __init__(self, n: int, num_examples: int, classes: int) -> None:
        self.n, self.shape = n, (num_examples, classes)

    def part_path(self, out: Path, part: Shard, auto: bool) -> Path:
        return shard_file(out, *part) if part != (0, 1) else out

    def recorded(self, path: Path) -> dict[str, object] | None:
        """The execution ``path`` recorded, finished or in progress, mapped by
        :func:`legacy_recorded`; None when there is nothing to resume."""
        if path.exists():
            return legacy_recorded(_read(path).meta)
        _, work_meta = part_paths(path)
        try:
            return legacy_recorded(json.loads(work_meta.read_text())["settings"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # nothing to resume (a damaged file is named when it is reopened)

    def execution_settings(self, ex: Execution, recorded: Mapping[str, object] | None,
                           request: Mapping[str, object]) -> dict[str, object]:
        """Every field (0.5); for a file of an earlier release (no ``layout``) its own
        format, the precision when not fp32. Legacy rule: such a file ran the rule's layout
        and chunk, so it resolves from its precision alone (:func:`legacy_recorded`)."""
        if recorded is None or "layout" in recorded:
            return ex.settings()
        others = sorted(set(request) - {"precision"})
        require(not others, f"a targets file of smoothmix < 0.5 recorded only its precision; "
                f"resume it without {others}")
        return {"precision": ex.precision} if ex.precision != "fp32" else {}

    def finished(self, path: Path, settings: Mapping[str, object] | None,
                 part: Shard = (0, 1)) -> bool:
        if not path.exists():
            return False  # a finished table appears whole (written atomically)
        if settings is not None:
            require_same(path, _read(path).meta, settings)
        return True

    def open(self, target: Path, settings: dict[str, object], expected: range,
             info: dict[str, object]) -> Rows:
        if target.exists():  # finished: reused as it is when it is this run's
            require_same(target, _read(target).meta, settings)
            return _FinishedRows(set(expected))
        dtype = np.uint16 if self.n < 2**16 else np.uint32
        table = ResumableRows(target, settings, self.shape, dtype, {**provenance(), **info},
                              "smoothmix targets")
        return _CountRows(table, self.n, expected, settings)

    def merge(self, out: Path, parts: list[Path]) -> Path:
        return merge_targets(out, parts)


class _FinishedRows(Rows):
    def __init__(self, done: set[int]) -> None:
        self.done = done

    def write(self, rows: Sequence[Sequence[object]]) -> None:
        raise AssertionError("a finished targets file is not written")

    def close(self, ok: bool) -> None:
        pass


class _CountRows(Rows):
    def __init__(self, table: ResumableRows, n: int, expected: range,
                 settings: dict[str, object]) -> None:
        self.table, self.n, self.expected, self.settings = table, n, expected, settings
        done = table.rows.sum(1, dtype=np.int64) == n
        self.done = {i for i in expected if done[i]}

    def write(self, rows: Sequence[Sequence[object]]) -> None:
        for idx, counts in rows:  # (idx, the example's vote counts)
            self.table.rows[cast(int, idx)] = cast(np.ndarray, counts)
        self.table.wrote()

    def close(self, ok: bool) -> None:
        if not ok:
            return  # the part files stay, for the rerun to resume
        rows = self.table.rows[list(self.expected)]
        missing = np.flatnonzero(rows.sum(1, dtype=np.int64) != self.n)
        require(missing.size == 0, f"{len(missing)} rows of {self.table.work} were not counted")
        self.table.finish(self.settings)


def legacy_recorded(saved: Mapping[str, object]) -> dict[str, object]:
    """What a targets file's settings say about its execution, for
    :func:`smoothmix.execution.resolve_execution`: a file of an earlier release recorded
    only a precision other than fp32 and ran the rule's layout and chunk, so it maps to its
    precision alone (fp32 when absent), not to the certify files' LEGACY_EXECUTION."""
    recorded = {k: saved[k] for k in EXECUTION_KEYS if k in saved}
    recorded.setdefault("precision", "fp32")
    return recorded


def targets_from_checkpoint(
    checkpoint: str | os.PathLike,
    dataset_name: str,
    out_path: str | os.PathLike,
    *,
    sigma: float = REFERENCE_SIGMA,
    n: int = REFERENCE_N,
    data_dir: str | os.PathLike | None = None,
    device: str | None = None,
    normalization: str | None = None,
    spec: RunSpec | None = None,
    **kwargs: Any,
) -> Path:
    """:func:`build_targets` for a checkpoint and a dataset by name (what ``smoothmix
    targets`` runs): the file records the dataset, the checkpoint's SHA-256, arch,
    normalisation, training sigma and method. With ``spec`` (whose noise replaces
    ``sigma``) its identity and classes are set here; ``kwargs`` go to
    :func:`build_targets` (``augment``; the spec's fields as keywords, the form before 0.5,
    are a one-line ``TypeError`` naming RunSpec since 0.6)."""
    # Before anything is loaded: the run's fields as keywords are an error since 0.6.
    run_fields = {k: kwargs.pop(k) for k in list(kwargs) if k in _REMOVED_KEYWORDS}
    spec = as_spec(sigma if spec is None else spec, run_fields, "targets_from_checkpoint")
    from smoothmix.checkpoint import (
        Checkpoint,
        check_checkpoint_for_dataset,
        check_model_fits_dataset,
        checkpoint_file,
        file_sha256,
        load_model,
    )
    from smoothmix.data import load_dataset
    from smoothmix.device import resolve_device

    checkpoint = checkpoint_file(checkpoint)  # a training folder means its checkpoint
    model, ckpt = load_model(checkpoint, resolve_device(device), normalization)
    check_checkpoint_for_dataset(ckpt, dataset_name, checkpoint)
    dataset = load_dataset(dataset_name, "train", data_dir)
    check_model_fits_dataset(model, ckpt, dataset, dataset_name, checkpoint)
    record = Checkpoint.from_dict(ckpt)  # the normalisation load_model chose
    identity = {
        "dataset": dataset_name, "split": "train",
        "checkpoint_sha256": ckpt.get("weights_sha256") or file_sha256(checkpoint),
        "arch": record.arch,
        "normalization": record.normalization, "checkpoint_sigma": record.sigma,
        "checkpoint_method": record.method,
    }
    classes = dataset.num_classes  # type: ignore[attr-defined]
    spec = spec.replace(identity={**identity, **spec.identity}, num_classes=classes)
    return build_targets(model, dataset, spec, out_path, n=n, **kwargs)


def _votes(smooth: Smooth, x: torch.Tensor, n: int, batch_size: int,
           generator: torch.Generator) -> np.ndarray:
    """The ``n`` votes on ``x`` from CERTIFY's own counter (no second vote counter)."""
    return smooth.votes(x, n, batch_size, generator).counts.cpu().numpy()


def _view(dataset: Examples, idx: int, augment: bool, generator: torch.Generator,
          device: torch.device) -> torch.Tensor:
    """One view of example ``idx``: its random crop/flip from ``generator`` for in-memory
    data; for other datasets their own transform, run under the example's seed."""
    if isinstance(dataset, TensorImageDataset):
        x = dataset.images[idx].to(device)
        if augment:
            x = random_crop_flip(x.unsqueeze(0), 4, generator)[0]
        return x.float().div_(255)
    # The transform's own seed, derived from the example's: seeded with the noise stream's
    # seed itself, both CPU mt19937 streams would start with the same words.
    seed = np.random.SeedSequence([generator.initial_seed(), 1]).generate_state(1, np.uint64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed[0] >> 1))
        x, _ = dataset[idx]
    return torch.as_tensor(x).to(device)


def shard_file(out_path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Where shard ``rank`` of ``world_size`` is written: ``OUT.rankIofK.npz``."""
    return shard_path(out_path, rank, world_size, default_suffix=".npz")


# --------------------------------------------------------------------------- merge & load


def merge_targets(out_path: str | os.PathLike, shards: Sequence[str | os.PathLike]) -> Path:
    """Merge the shard files ``OUT.rankIofK.npz`` of one run into ``out_path``."""
    require(len(shards) >= 1, "merge needs at least one shard file")
    loaded = [_read(Path(p)) for p in shards]
    common, k = same_run([(t.path, t.meta) for t in loaded],
                         "{path} (against {first}) was built by another run ({diff}); rerun "
                         "with the same settings to resume, or choose another --out")
    counts = merge_array_rows([
        (t.counts, selected_indices(common["num_examples"], 1, common["max_idx"],
                                    (int(str(t.meta["shard"]).split("/")[0]), k)))
        for t in loaded])
    merged = {**common, "shard": "0/1"}
    _check_complete(Path(out_path), counts, merged)
    write_arrays(Path(out_path), counts, merged)
    return Path(out_path)


def _read(path: Path) -> Targets:
    """Parse a targets file; any damage is a one-line SmoothmixError."""
    require(path.is_file(), f"targets file {path} does not exist (build it with "
            "`smoothmix targets CHECKPOINT --dataset D --out FILE`)")
    counts, meta = read_arrays(path, "smoothmix targets file")
    require(isinstance(meta, dict) and meta.get("format") == FORMAT,
            f"{path} is not a smoothmix targets file (no {FORMAT!r} header)")
    try:
        shape_ok = counts.shape == (int(meta["num_examples"]), int(meta["num_classes"]))
        n_ok = int(meta["n"]) >= 1
    except (KeyError, TypeError, ValueError):
        shape_ok = n_ok = False
    require(shape_ok and n_ok and np.issubdtype(counts.dtype, np.integer),
            f"{path} is damaged: counts {counts.dtype} {counts.shape} do not match its header")
    return Targets(counts, meta, path)


def covered_rows(meta: Mapping[str, Any]) -> int:
    """How many leading dataset indices a targets file covers."""
    max_idx = int(meta.get("max_idx", -1))
    return int(meta["num_examples"]) if max_idx < 0 else max_idx


def _check_complete(path: Path, counts: np.ndarray, meta: Mapping[str, Any]) -> None:
    covered = counts[: covered_rows(meta)]
    bad = np.flatnonzero(covered.sum(1, dtype=np.int64) != int(meta["n"]))
    require(bad.size == 0, f"{path}: {bad.size} of {len(covered)} rows do not hold N = "
            f"{meta['n']} votes (first idx {bad[:3].tolist()}); the file is damaged or "
            "incomplete")


def load_targets(path: str | os.PathLike) -> Targets:
    """A finished, complete (all shards merged) targets file; SmoothmixError otherwise."""
    targets = _read(Path(path))
    require(targets.meta.get("shard") == "0/1",
            f"{path} holds only shard {targets.meta.get('shard')}; merge the shards first "
            "(`smoothmix merge`)")
    _check_complete(targets.path, targets.counts, targets.meta)
    return targets


def check_targets(targets: Targets, dataset: Any, dataset_name: str) -> None:
    """Refuse targets built for another dataset: name, split, size, classes, contents."""
    meta, path = targets.meta, targets.path
    require(meta.get("dataset") == dataset_name and meta.get("split", "train") == "train",
            f"{path} holds targets for {meta.get('dataset')!r} ({meta.get('split')}), not the "
            f"{dataset_name!r} training set")
    require(int(meta["num_examples"]) == len(dataset),
            f"{path} has {meta['num_examples']} rows but the {dataset_name} training set has "
            f"{len(dataset)} images; build the targets on the whole training set")
    classes = getattr(dataset, "num_classes", None)
    require(classes is None or int(meta["num_classes"]) == int(classes),
            f"{path} has {meta['num_classes']} classes, the dataset {classes}")
    saved, now = meta.get("dataset_sha256"), dataset_fingerprint(dataset)
    require(saved is None or now is None or saved == now,
            f"{path} was built on different {dataset_name} training data (content hash "
            f"{str(saved)[:12]} vs {now[:12] if now else None}); rebuild it for this copy")


def soft_targets_for(path: str | os.PathLike, dataset: Any, dataset_name: str,
                     subset: int | None = None) -> tuple[torch.Tensor, Targets]:
    """pi rows for ``dataset`` (the whole training set), checked against it; with
    ``subset`` the rows of its first ``subset`` images (pi is keyed by dataset index)."""
    targets = load_targets(path)
    check_targets(targets, dataset, dataset_name)
    covered = covered_rows(targets.meta)
    need = len(dataset) if subset is None else min(subset, len(dataset))
    require(need <= covered, f"{path} covers only the first {covered} training images; train "
            f"on --train-subset {covered} or fewer, or build it without --max")
    probs = targets.probs()
    return (probs[:subset] if subset is not None else probs), targets
