"""Models by name, each wrapped as ``Sequential(Normalize, net)`` (SPEC §1, §4).

Normalisation is the first layer of the model, never a data transform, because Gaussian noise
is added in pixel space. Its mean/std are non-persistent buffers, so the state dict holds only
the network's keys behind the prefix ``1.`` — exactly like the public reference checkpoints,
whose normalisation layer kept plain tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from smoothmix.errors import SmoothmixError, is_integer
from smoothmix.models.cifar_resnet import CifarResNet
from smoothmix.models.lenet import LeNet

__all__ = [
    "NORMALIZATIONS",
    "ModelInfo",
    "Normalize",
    "create_model",
    "list_models",
    "model_defaults",
    "normalize_layer",
    "wrap_model",
]

_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)

#: name -> (mean, std) per channel. The "-center" variants subtract the mean only, as the
#: released SmoothAdv ImageNet and most CIFAR-10 models do. "none" is the identity for any
#: number of channels (one value broadcasts), for users' own models.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "none": ((0.0,), (1.0,)),
    "mnist": ((0.0,), (1.0,)),
    "cifar10": (_CIFAR10_MEAN, (0.2023, 0.1994, 0.2010)),
    "cifar10-center": (_CIFAR10_MEAN, (1.0, 1.0, 1.0)),
    "imagenet": (_IMAGENET_MEAN, (0.229, 0.224, 0.225)),
    "imagenet-center": (_IMAGENET_MEAN, (1.0, 1.0, 1.0)),
}


class Normalize(nn.Module):
    """(x - mean) / std per channel; the first layer of every smoothmix model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise SmoothmixError(f"bad normalisation mean={tuple(mean)} std={tuple(std)}")
        # Non-persistent: kept out of the state dict (reference checkpoint layout) but moved
        # with .to(device) so nothing is allocated per forward.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def normalize_layer(normalization: str) -> Normalize:
    """The :class:`Normalize` layer for a name in :data:`NORMALIZATIONS`."""
    if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
        raise SmoothmixError(
            f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}"
        )
    return Normalize(*NORMALIZATIONS[normalization])


def wrap_model(net: nn.Module, normalization: str = "none") -> nn.Sequential:
    """``Sequential(Normalize, net)``: use this to train or certify your own network."""
    if not isinstance(net, nn.Module):
        raise SmoothmixError(f"wrap_model needs a torch.nn.Module, got {type(net).__name__}")
    return nn.Sequential(normalize_layer(normalization), net)


@dataclass(frozen=True)
class ModelInfo:
    """Defaults of a named architecture (the dataset it was published with)."""

    name: str
    num_classes: int
    normalization: str
    input_shape: tuple[int, int, int]
    dataset: str
    build: Callable[[int], nn.Module]


def _resnet50(num_classes: int) -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(weights=None, num_classes=num_classes)


_MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo("lenet", 10, "mnist", (1, 28, 28), "mnist", LeNet),
        ModelInfo("cifar_resnet20", 10, "cifar10", (3, 32, 32), "cifar10",
                  lambda k: CifarResNet(20, k)),
        ModelInfo("cifar_resnet110", 10, "cifar10", (3, 32, 32), "cifar10",
                  lambda k: CifarResNet(110, k)),
        ModelInfo("resnet50", 1000, "imagenet", (3, 224, 224), "imagenet", _resnet50),
    )
}


def list_models() -> list[str]:
    return list(_MODELS)


def model_defaults(arch: str) -> ModelInfo:
    """Defaults for ``arch``; unknown names raise :class:`SmoothmixError` listing valid ones."""
    if not isinstance(arch, str) or arch not in _MODELS:
        raise SmoothmixError(f"unknown architecture {arch!r}; valid: {', '.join(_MODELS)}")
    return _MODELS[arch]


def create_model(
    arch: str, num_classes: int | None = None, normalization: str | None = None
) -> nn.Sequential:
    """``Sequential(Normalize, net)`` for a named architecture, freshly initialised.

    ``num_classes`` and ``normalization`` default to those of the dataset the architecture
    was published with (see :func:`model_defaults`).
    """
    info = model_defaults(arch)
    num_classes = info.num_classes if num_classes is None else num_classes
    if not is_integer(num_classes) or num_classes < 2:
        raise SmoothmixError(f"num_classes must be an integer >= 2 (create_model(arch, "
                             f"num_classes, normalization)), got {num_classes!r}")
    return wrap_model(info.build(int(num_classes)), normalization or info.normalization)

