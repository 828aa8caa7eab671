"""Where a diffusion denoiser's model comes from: a local diffusers folder, a hub id, or a
smoothmix checkpoint of the ``ddpm-unet`` kind (used by :func:`~smoothmix.denoisers.
diffusion.load`).

Nothing is fetched unless the source is ``hub:ID[@revision]``. With ``HF_HUB_OFFLINE=1`` a hub
id is read from the local cache only; a hub id that cannot be had is one line. ``diffusers``
is an optional dependency: without it every source is one line naming the extra to install.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from smoothmix.errors import SmoothmixError, first_line, require

__all__ = ["INSTALL_HINT", "ModelSource", "folder_sha256", "from_checkpoint", "from_folder",
           "from_hub", "import_diffusers", "resolve"]

INSTALL_HINT = 'pip install "smoothmix[diffusion]"'
HUB_PREFIX = "hub:"
# What a hub download fetches: configs and the UNet's weights (never images or READMEs).
_HUB_PATTERNS = ["*.json", "*diffusion_pytorch_model.safetensors", "*diffusion_pytorch_model.bin"]
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass
class ModelSource:
    """A loaded UNet with the parts of its schedule one-shot denoising needs."""

    unet: nn.Module
    alphas_cumprod: Tensor
    prediction_type: str
    channels: int
    sample_size: Any  # int, (H, W) or None
    learned_variance: bool
    identity: dict[str, Any]


def import_diffusers() -> Any:
    """The ``diffusers`` module, or a one-line error saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise SmoothmixError("diffusion denoisers need the diffusers library, which is not "
                             f"installed: {INSTALL_HINT}") from None
    return diffusers


def resolve(source: str) -> ModelSource:
    """The model behind ``source`` (see :func:`smoothmix.denoisers.diffusion.load`)."""
    require(isinstance(source, (str, os.PathLike)) and str(source).strip() != "",
            f"a diffusion denoiser source must be a folder, a checkpoint or hub:ID, got "
            f"{source!r}")
    text = os.fspath(source)
    if text.startswith(HUB_PREFIX):
        return from_hub(text[len(HUB_PREFIX):])
    path = Path(text).expanduser()
    require(path.exists(), f"diffusion denoiser source {text} does not exist (a hub model is "
                           f"named {HUB_PREFIX}ID, e.g. hub:google/ddpm-cifar10-32)")
    if path.is_file() or (path / "checkpoint.pth.tar").is_file():
        return from_checkpoint(path)
    return from_folder(path)


def _layout(folder: Path) -> tuple[Path, Path]:
    """(UNet folder, scheduler folder) of a UNet2DModel or DDPMPipeline folder."""
    if (folder / "unet" / "config.json").is_file():
        unet = folder / "unet"
    elif (folder / "config.json").is_file():
        unet = folder
    else:
        raise SmoothmixError(f"{folder} is not a diffusers model folder: no config.json or "
                             "unet/config.json (save one with save_pretrained)")
    for candidate in (unet, folder, folder / "scheduler"):
        if (candidate / "scheduler_config.json").is_file():
            return unet, candidate
    raise SmoothmixError(f"{folder} has no scheduler_config.json (next to the UNet's config "
                         "or in scheduler/); save its DDPMScheduler with save_pretrained")


def _weights(unet_dir: Path) -> Path:
    for name in _WEIGHTS:  # diffusers' own preference: safetensors first
        if (unet_dir / name).is_file():
            return unet_dir / name
    raise SmoothmixError(f"{unet_dir} has no UNet weights ({' or '.join(_WEIGHTS)})")


def folder_sha256(folder: Path) -> str:
    """SHA-256 over the files the denoiser is built from: the UNet's config and weights and
    the scheduler's config, each with its path relative to ``folder``."""
    unet_dir, scheduler_dir = _layout(folder)
    files = [unet_dir / "config.json", _weights(unet_dir), scheduler_dir / "scheduler_config.json"]
    digest = hashlib.sha256()
    for file in files:
        content = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                content.update(block)
        digest.update(f"{file.relative_to(folder).as_posix()}\0{content.hexdigest()}\n".encode())
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SmoothmixError(f"cannot read {path}: {first_line(exc)}") from None
    require(isinstance(data, dict), f"{path} is not a JSON object")
    return data


def _scheduler(diffusers: Any, scheduler_dir: Path) -> Any:
    config = _read_json(scheduler_dir / "scheduler_config.json")
    # Any DDPM-family scheduler config (DDPM, DDIM, ...) defines the same ᾱ table.
    try:
        return diffusers.DDPMScheduler.from_config(config)
    except Exception as exc:  # a malformed config: diffusers raises many kinds
        raise SmoothmixError(f"cannot build the scheduler of {scheduler_dir}: "
                             f"{first_line(exc)}") from None


def from_folder(folder: Path, identity: dict[str, Any] | None = None) -> ModelSource:
    """A UNet2DModel (+ scheduler) saved with diffusers' ``save_pretrained``."""
    diffusers = import_diffusers()
    unet_dir, scheduler_dir = _layout(folder)
    kind = _read_json(unet_dir / "config.json").get("_class_name", "UNet2DModel")
    require(kind == "UNet2DModel", f"{unet_dir} holds a {kind}; the diffusion denoiser takes "
                                   "an unconditional UNet2DModel (a DDPM)")
    try:
        unet = diffusers.UNet2DModel.from_pretrained(unet_dir, local_files_only=True,
                                                    low_cpu_mem_usage=False)
    except Exception as exc:  # corrupt or mismatched weights
        raise SmoothmixError(f"cannot load the UNet in {unet_dir}: {first_line(exc)}") from None
    scheduler = _scheduler(diffusers, scheduler_dir)
    if identity is None:
        identity = {"folder_sha256": folder_sha256(folder)}
    return _source(unet, scheduler.alphas_cumprod, scheduler.config.prediction_type,
                   identity)


def _source(unet: Any, alphas_cumprod: Tensor, prediction_type: str,
            identity: dict[str, Any]) -> ModelSource:
    config = unet.config
    channels = int(config.in_channels)
    return ModelSource(unet=unet, alphas_cumprod=alphas_cumprod.double(),
                       prediction_type=str(prediction_type), channels=channels,
                       sample_size=config.sample_size,
                       learned_variance=int(config.out_channels) == 2 * channels,
                       identity=identity)


def _offline() -> bool:
    import huggingface_hub.constants as hub_constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(hub_constants.HF_HUB_OFFLINE) or flag in {"1", "ON", "YES", "TRUE"}


def from_hub(spec: str) -> ModelSource:
    """``ID[@revision]`` from the Hugging Face hub (or its local cache when offline)."""
    model_id, _, revision = spec.partition("@")
    require(model_id.count("/") <= 1 and model_id.strip("/") != "" and " " not in model_id,
            f"a hub model is named hub:OWNER/NAME[@revision], got hub:{spec}")
    import_diffusers()
    from huggingface_hub import snapshot_download

    offline = _offline()
    try:
        folder = snapshot_download(repo_id=model_id, revision=revision or None,
                                   allow_patterns=_HUB_PATTERNS, local_files_only=offline)
    except Exception as exc:  # offline, unknown id or revision, network: all one line
        where = "offline (HF_HUB_OFFLINE) and not in the local cache" if offline else \
            "no network, or no such model or revision"
        raise SmoothmixError(f"cannot fetch hub:{spec} ({where}): {first_line(exc)}") from None
    path = Path(folder)
    # The snapshot folder is named after the commit it holds: the exact revision.
    return from_folder(path, identity={"model_id": model_id, "revision": path.name})


def _strip_prefix(state: dict[str, Tensor], keys: list[str]) -> dict[str, Tensor]:
    """The entries of ``state`` under the prefix that wrappers (e.g. Sequential) added in
    front of the module's own ``keys``; others (a normalisation layer's) are left out."""
    anchor = keys[0]
    prefix = next((k[:-len(anchor)] for k in state if k.endswith(anchor)), "")
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def from_checkpoint(path: Path) -> ModelSource:
    """A smoothmix checkpoint of a DDPM denoiser kind (``ddpm-unet``): its module carries
    the UNet and the scheduler config it was trained with."""
    import_diffusers()
    from smoothmix.checkpoint import (
        checkpoint_file,
        file_sha256,
        read_checkpoint,
        strip_wrapper_prefixes,
    )
    from smoothmix.denoisers import DENOISERS

    file = checkpoint_file(path)
    ckpt = read_checkpoint(file)
    module = DENOISERS.get(ckpt.arch)(**ckpt.arch_kwargs)
    require(hasattr(module, "unet") and hasattr(module, "alphas_cumprod"),
            f"checkpoint {file} holds a {ckpt.arch!r} denoiser, not a diffusion model")
    state = strip_wrapper_prefixes(ckpt.state_dict)
    try:
        module.load_state_dict(_strip_prefix(state, list(module.state_dict())))
    except RuntimeError as exc:
        raise SmoothmixError(f"checkpoint {file} does not fit its {ckpt.arch!r} settings: "
                             f"{first_line(exc)}") from None
    identity = {"checkpoint_sha256": file_sha256(file), "arch": ckpt.arch}
    return _source(module.unet, torch.as_tensor(module.alphas_cumprod),
                   str(module.prediction_type), identity)
