"""Checkpoints: atomic save, safe load, and model reconstruction.

A checkpoint is a dict with at least ``arch`` and ``state_dict`` (of ``Sequential(Normalize,
net)``); smoothmix adds ``arch_kwargs`` (the architecture's construction keyword arguments),
``num_classes``, ``normalization``, ``epoch``, ``optimizer``, ``scheduler``, ``rng``,
``method``, ``sigma`` and ``config``. The public reference checkpoints (``arch``,
``state_dict``, ``optimizer``, ``epoch``) and smoothmix checkpoints without ``arch_kwargs``
load too: they do not record their normalisation, so :func:`load_model` states which one it
assumed, and they are built with no extra arguments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from smoothmix.errors import SmoothmixError, first_line, require
from smoothmix.models import NORMALIZATIONS, create_model, list_models, model_defaults
from smoothmix.pretrained import pretrained_checkpoint, pretrained_name, pretrained_of_file
from smoothmix.storage import atomic_write_with

__all__ = ["CHECKPOINT_NAME", "CHECKPOINT_VERSION", "Checkpoint", "capture_rng_state",
           "check_checkpoint_for_dataset", "check_model_fits_dataset", "checkpoint_file",
           "file_sha256", "load_checkpoint", "load_model", "load_state_into",
           "read_checkpoint", "restore_rng_state", "save_checkpoint", "strip_wrapper_prefixes"]

log = logging.getLogger(__name__)

#: Name of the latest checkpoint in a training output directory (the reference's name).
CHECKPOINT_NAME = "checkpoint.pth.tar"

# Wrapper segments that DataParallel/DDP ("module") and torch.compile ("_orig_mod") insert
# into state-dict keys; they carry no weights of their own.
_WRAPPER_SEGMENTS = frozenset({"module", "_orig_mod"})


#: The checkpoint layouts this code reads (``Checkpoint.version``; inferred from the keys, not
#: stored, so that files keep the keys older readers and the reference scripts know):
#: 0 the reference repositories' (``arch``, ``state_dict``, ``optimizer``, ``epoch``),
#: 1 smoothmix 0.2 (run identity and ``config``; ``amp`` but no ``precision``), 2 smoothmix
#: 0.3 on (``arch_kwargs``, ``precision`` and the provenance keys). This code writes 2.
CHECKPOINT_VERSION = 2


@dataclass
class Checkpoint:
    """One checkpoint file as a typed record (see the module docstring for the keys).

    :meth:`from_dict` accepts every layout of :data:`CHECKPOINT_VERSION`'s list (missing
    keys are None, ``arch_kwargs`` ``{}``); :meth:`to_dict` writes the keys smoothmix has
    always written, in the same order, plus any unknown keys the file held (``extra``).
    """

    arch: str | None
    state_dict: dict[str, Any]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    normalization: str | None = None
    epoch: int | None = None  # completed epochs
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: list[Any] | None = None  # capture_rng_state() of every rank
    method: str | None = None
    method_options: dict[str, Any] | None = None  # the options the run was given
    method_config: dict[str, Any] | None = None  # every option value of the method
    sigma: float | None = None
    config: dict[str, Any] = field(default_factory=dict)  # TrainConfig + run metadata
    metrics: dict[str, float] | None = None  # the epoch's log row
    smoothmix: str | None = None  # release that wrote it
    git_commit: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = CHECKPOINT_VERSION

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "version"}
        values = {k: data[k] for k in names if data.get(k) is not None}
        values.setdefault("arch", None)
        values.setdefault("state_dict", {})
        if "config" not in data and "method" not in data:
            version = 0
        else:
            version = 2 if "arch_kwargs" in data else 1
        return cls(**values, extra={k: v for k, v in data.items() if k not in names},
                   version=version)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("extra", "version")}
        return {**data, **self.extra}

    def settings(self) -> dict[str, Any]:
        """The run's settings as one flat record: ``config`` (schedule, execution, dataset,
        subsets, preset) with the run identity (arch, its kwargs, method, options, sigma,
        normalisation, classes). ``precision`` is derived from ``amp`` for 0.2's files.
        Empty for a reference checkpoint (it records no recipe)."""
        if self.version == 0:
            return {}
        saved = dict(self.config)
        saved.update(arch=self.arch, arch_kwargs=dict(self.arch_kwargs), method=self.method,
                     sigma=self.sigma, normalization=self.normalization,
                     num_classes=self.num_classes,
                     method_options=dict(self.method_options or {}))
        saved["precision"] = saved.get("precision") or ("bf16" if saved.get("amp") else "fp32")
        return {k: v for k, v in saved.items() if v is not None}


def save_checkpoint(path: str | os.PathLike, state: Checkpoint | Mapping[str, Any]) -> None:
    """Write ``state`` (a :class:`Checkpoint` or a plain dict) to ``path`` atomically: a
    killed process leaves the old file intact."""
    data = state.to_dict() if isinstance(state, Checkpoint) else dict(state)
    atomic_write_with(path, lambda fh: torch.save(data, fh))


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file meant by ``path``: the file itself, or ``DIR/checkpoint.pth.tar``
    when ``path`` is a training output directory (``pretrained:NAME`` is returned as it is,
    for :func:`load_checkpoint`). One-line error otherwise."""
    if pretrained_name(path) is not None:
        return Path(path)  # resolved by load_checkpoint; Path keeps "pretrained:NAME" intact
    path = Path(path)
    if path.is_dir():
        require((path / CHECKPOINT_NAME).is_file(),
                f"{path} is a directory without a {CHECKPOINT_NAME}; pass the checkpoint file "
                "or the --outdir of a training run that finished at least one epoch")
        return path / CHECKPOINT_NAME
    require(path.exists(), f"checkpoint {path} does not exist")
    require(path.is_file(), f"checkpoint {path} is not a regular file")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict without executing pickled code (``weights_only=True``).

    ``path`` may be a training output directory holding ``checkpoint.pth.tar``, or
    ``pretrained:NAME``, a pretrained model (:func:`smoothmix.pretrained.pretrained_checkpoint`:
    its weights, with the model card's arch, sigma, normalisation and recipe).
    """
    name = pretrained_name(path)
    if name is not None:
        return pretrained_checkpoint(name)
    path = checkpoint_file(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for bad bytes; all mean "unreadable"
        reason = first_line(exc)
        with open(path, "rb") as fh:
            magic = fh.read(2)
        if magic != b"PK" and not magic.startswith(b"\x80"):  # zip (torch >= 1.6) or pickle
            reason = "not a PyTorch checkpoint file (unrecognised format)"
        elif "weights only" in str(exc).lower() or "weights_only" in str(exc):
            reason = "it contains pickled Python objects other than tensors and plain data"
        raise SmoothmixError(
            f"cannot read checkpoint {path}: {reason} (is it a complete PyTorch checkpoint?)"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "arch" not in ckpt:
        _not_a_checkpoint(path, ckpt)
    return ckpt


def _not_a_checkpoint(path: Path, ckpt: object) -> NoReturn:
    """The one-line error for a file without 'arch' and 'state_dict'; a bare state_dict is
    named as such (a pretrained model's weights/*.pt loads with its card as pretrained:NAME)."""
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor)
                                               for v in ckpt.values()):
        name = pretrained_of_file(path)
        require(name is None, f"{path} is the weights-only file of pretrained model {name}: "
                f"pass pretrained:{name}, which loads it with its model card")
        raise SmoothmixError(f"{path} is a weights-only state_dict, not a checkpoint: it "
                             "records no architecture (save {'arch': NAME, 'state_dict': "
                             "...} or load it into your model yourself)")
    what = (f"a dict with keys {sorted(map(str, ckpt))[:6]}" if isinstance(ckpt, dict)
            else f"a {type(ckpt).__name__}")
    raise SmoothmixError(f"{path} is not a smoothmix/reference checkpoint: expected a dict "
                         f"with 'arch' and 'state_dict', found {what}")


def capture_rng_state() -> dict[str, Any]:
    """All RNG states (torch CPU and current CUDA device, numpy, random) in a form that
    ``weights_only`` loading accepts (numpy's own state tuple holds an ndarray, which safe
    loading refuses). Only the current CUDA device is read: querying all of them would open
    a context on every GPU from every DDP rank."""
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # legacy=True: (kind, keys, pos, has_gauss, cached)
    kind, keys, pos, has_gauss, cached = state
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if cuda else None,
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (the CUDA state goes to the current device)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.`` key segments."""
    return {
        ".".join(p for p in key.split(".") if p not in _WRAPPER_SEGMENTS): value
        for key, value in state_dict.items()
    }


def _first(keys: set[str], k: int = 3) -> str:
    items = sorted(keys)
    return ", ".join(items[:k]) + (f" (+{len(items) - k} more)" if len(items) > k else "")


def _infer_num_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    # The classifier is the last 2-D weight (fc2 for LeNet, fc for the ResNets).
    weights = [v for k, v in state_dict.items() if k.endswith(".weight") and v.ndim == 2]
    return int(weights[-1].shape[0]) if weights else None


def load_state_into(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str, source: str
) -> None:
    """Load ``state_dict`` into ``Sequential(Normalize, net)`` with one-line errors.

    Accepts keys of the wrapped model (``1.…``) or of the bare network (no ``1.`` prefix).
    """
    sd = strip_wrapper_prefixes(state_dict)
    if sd and not any(k.startswith(("0.", "1.")) for k in sd):
        sd = {f"1.{k}": v for k, v in sd.items()}  # a bare network's state dict
    norm_keys = {k for k in sd if k.startswith("0.")}
    if norm_keys:
        raise SmoothmixError(
            f"{source} stores a normalisation layer ({_first(norm_keys)}) that smoothmix does "
            "not keep in checkpoints; its first layer does not match — choose the "
            f"normalisation with --normalization ({', '.join(NORMALIZATIONS)}) and save the "
            "state dict without it"
        )
    expected = model.state_dict()
    # Checkpoints from PyTorch < 0.4.1 have no BatchNorm counters; BatchNorm fills them in.
    missing = {k for k in expected.keys() - sd.keys() if not k.endswith("num_batches_tracked")}
    unexpected = sd.keys() - expected.keys()
    bad_shape = {
        f"{k} {tuple(sd[k].shape)} (model: {tuple(v.shape)})"
        for k, v in expected.items() if k in sd and sd[k].shape != v.shape
    }
    if missing or unexpected or bad_shape:
        parts = [
            f"missing {_first(missing)}" if missing else "",
            f"unexpected {_first(unexpected)}" if unexpected else "",
            f"shape mismatch {_first(bad_shape, 2)}" if bad_shape else "",
        ]
        raise SmoothmixError(
            f"{source} does not fit architecture {arch!r}: "
            + "; ".join(p for p in parts if p)
            + " — was it saved for a different --arch or number of classes?"
        )
    model.load_state_dict(sd, strict=False)  # strictness checked above, with better messages


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Checkpoint:
    """:func:`load_checkpoint` as a typed :class:`Checkpoint` record."""
    return Checkpoint.from_dict(load_checkpoint(path, map_location))


def load_model(
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    normalization: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (ours or a reference one, or ``pretrained:NAME``),
    in eval mode.

    The architecture is ``create_model(ckpt["arch"], **ckpt["arch_kwargs"])`` (no kwargs when
    the checkpoint has none); an architecture of your own must be registered first
    (:func:`smoothmix.models.register_model`).

    Normalisation: ``normalization`` if given, else the checkpoint's, else the default of the
    architecture's dataset — reference checkpoints do not record it (SmoothAdv's released
    models centre only: pass ``cifar10-center``/``imagenet-center``). The choice is returned
    in ``ckpt["normalization"]`` and its origin in ``ckpt["normalization_source"]``.
    """
    ckpt = load_checkpoint(path)
    arch = _named_arch(ckpt.get("arch"), path)
    arch_kwargs = ckpt.get("arch_kwargs") or {}
    if not isinstance(arch_kwargs, dict) or not all(isinstance(k, str) for k in arch_kwargs):
        raise SmoothmixError(f"checkpoint {path} has a malformed 'arch_kwargs' entry "
                             f"{arch_kwargs!r} (expected a dict of keyword arguments)")
    info = model_defaults(arch)
    normalization, source = _normalization(ckpt.get("normalization"), normalization, info,
                                           arch, path)
    num_classes = ckpt.get("num_classes") or _infer_num_classes(
        strip_wrapper_prefixes(ckpt["state_dict"])
    )
    model = create_model(arch, num_classes=num_classes, normalization=normalization,
                         **arch_kwargs)
    load_state_into(model, ckpt["state_dict"], arch, f"checkpoint {path}")
    if device is not None:
        model.to(device)
    model.eval()
    ckpt.update(
        arch_kwargs=arch_kwargs,
        num_classes=num_classes or info.num_classes,
        normalization=normalization,
        normalization_source=source,
    )
    return model, ckpt


def _named_arch(arch: Any, path: str | os.PathLike) -> str:
    """The checkpoint's architecture name, registered; one line otherwise."""
    if arch is None:
        raise SmoothmixError(
            f"checkpoint {path} holds a custom network (no architecture name): build it "
            "yourself and load load_checkpoint(path)['state_dict'] into it, or register it "
            "with smoothmix.models.register_model and train it by name"
        )
    if not isinstance(arch, str):
        raise SmoothmixError(f"checkpoint {path} has a non-string 'arch' entry: {arch!r}")
    if arch not in list_models():
        from smoothmix.denoisers import DENOISERS

        require(arch not in DENOISERS, f"checkpoint {path} is a denoiser ({arch}), not a "
                "classifier: pass it as --denoiser, with a classifier checkpoint")
        raise SmoothmixError(
            f"checkpoint {path} is of unknown architecture {arch!r} (registered: "
            f"{', '.join(list_models())}); if it is your own network, import the module that "
            f"calls smoothmix.models.register_model({arch!r}, ...) first (CLI: smoothmix "
            "--import MODULE ..., or SMOOTHMIX_IMPORT=MODULE)"
        )
    return arch


def _normalization(stored: str | None, requested: str | None, info: Any, arch: str,
                   path: str | os.PathLike) -> tuple[str, str]:
    """The normalisation to build with and where it came from (requested, checkpoint, or
    assumed from the architecture's dataset, with a warning)."""
    if requested is not None:
        if stored not in (None, requested):
            log.warning("overriding the checkpoint's normalization %r with %r", stored,
                        requested)
        return requested, "requested"
    if stored is not None:
        return stored, "checkpoint"
    log.warning(
        "checkpoint %s does not record its normalization; assuming %r (the %s default) — "
        "pass a different one if it was trained otherwise", path, info.normalization,
        info.dataset or f"registered {arch!r}"
    )
    return info.normalization, "assumed (not recorded in checkpoint)"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file: what identifies "the same model" across reruns of a result file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checkpoint_for_dataset(ckpt: dict[str, Any], dataset_name: str,
                                 checkpoint: str | os.PathLike) -> None:
    """Before any data is loaded: a checkpoint whose architecture takes images of another
    shape than the registered dataset ``dataset_name`` is refused in one line naming the
    dataset the model is for (not with a complaint about that dataset's missing files)."""
    from smoothmix.data import dataset_defaults

    arch = ckpt.get("arch")
    if arch is None or arch not in list_models() or dataset_name not in _dataset_names():
        return  # a network of the user's own, or a dataset we cannot describe: later checks
    info = model_defaults(arch)
    wanted = dataset_defaults(dataset_name).input_shape
    if wanted is None or tuple(info.input_shape) == tuple(wanted):
        return
    trained = Checkpoint.from_dict(ckpt).settings().get("dataset") or info.dataset
    meant = f"; use --dataset {trained}" if trained else ""
    raise SmoothmixError(
        f"checkpoint {checkpoint} is a {arch} model for {trained or _shape(info.input_shape)} "
        f"images ({_shape(info.input_shape)}), but {dataset_name} images are "
        f"{_shape(wanted)}{meant}")


def _dataset_names() -> list[str]:
    from smoothmix.data import list_datasets

    return list_datasets()


def check_model_fits_dataset(model: nn.Module, ckpt: dict[str, Any], dataset: Any,
                             dataset_name: str, checkpoint: str | os.PathLike) -> None:
    """Catch a model/dataset mismatch now, with one clear line, not deep inside a forward."""
    classes = ckpt.get("num_classes")
    require(classes in (None, dataset.num_classes),
            f"checkpoint {checkpoint} has {classes} classes but {dataset_name} has "
            f"{dataset.num_classes}; is it a model for another dataset?")
    x, _ = dataset[0]
    if ckpt.get("arch") is not None:
        expected = tuple(model_defaults(ckpt["arch"]).input_shape)
        # Convolutional nets with global pooling accept other sizes without complaint and
        # then give meaningless certificates; insist on the shape the arch was built for.
        require(tuple(x.shape) == expected,
                f"model {ckpt['arch']!r} takes {_shape(expected)} images but {dataset_name} "
                f"has {_shape(x.shape)}; is the checkpoint for another dataset?")
    try:
        with torch.inference_mode():
            logits = model(x.unsqueeze(0).to(next(model.parameters()).device))
    except RuntimeError as exc:
        raise SmoothmixError(
            f"model {ckpt.get('arch')!r} cannot classify {dataset_name} images of shape "
            f"{tuple(x.shape)} ({first_line(exc)})"
        ) from None
    require(logits.shape[-1] == dataset.num_classes,
            f"model outputs {logits.shape[-1]} classes but {dataset_name} has "
            f"{dataset.num_classes}")


def _shape(shape: Any) -> str:
    return "x".join(str(d) for d in shape)
