"""Models by name, each wrapped as ``Sequential(Normalize, net)`` (docs/MATH.md §1, §4).

Normalisation is the first layer of the model, never a data transform, because Gaussian noise
is added in pixel space. Its mean/std are non-persistent buffers, so the state dict holds only
the network's keys behind the prefix ``1.`` — exactly like the public reference checkpoints,
whose normalisation layer kept plain tensors.

The registry is open: :func:`register_model` adds your own architecture under a name, after
which ``create_model(name, **kwargs)``, ``train(arch=name, arch_kwargs=...)``, ``load_model``
and (with ``smoothmix --import MODULE``) the CLI build it like the built-in ones::

    @register_model("mynet", num_classes=10, normalization="mnist", input_shape=(1, 28, 28))
    class MyNet(nn.Module):
        def __init__(self, num_classes: int, width: int = 16) -> None: ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from smoothmix.checks import check_num_classes
from smoothmix.errors import SmoothmixError, first_line
from smoothmix.models.cifar_resnet import CifarResNet
from smoothmix.models.lenet import LeNet
from smoothmix.registry import Registry

__all__ = [
    "NORMALIZATIONS",
    "ModelInfo",
    "Normalize",
    "create_model",
    "list_models",
    "model_defaults",
    "normalize_layer",
    "register_model",
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

    mean: torch.Tensor
    std: torch.Tensor

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
    """Defaults of a named architecture (the dataset it was published with).

    ``build(num_classes, **kwargs)`` makes the bare network. ``dataset`` is the dataset it
    was published with (``None`` unless given to :func:`register_model`).
    """

    name: str
    num_classes: int
    normalization: str
    input_shape: tuple[int, ...]
    dataset: str | None
    build: Callable[..., nn.Module]


#: Every architecture by name, the built-ins (registered below) first.
_MODELS: Registry[ModelInfo] = Registry(
    "architecture", hint="add your own with smoothmix.models.register_model")

_Factory = TypeVar("_Factory", bound=Callable[..., nn.Module])


def register_model(
    name: str,
    factory: _Factory | None = None,
    *,
    num_classes: int,
    normalization: str,
    input_shape: Sequence[int],
    overwrite: bool = False,
    dataset: str | None = None,
) -> Any:
    """Add your own architecture to the registry under ``name``.

    ``factory(num_classes, **kwargs)`` (a class or a function) returns the bare network,
    mapping normalised images to logits; :func:`create_model` wraps it in
    ``Sequential(Normalize, net)`` like the built-ins. ``num_classes``, ``normalization``
    (a key of :data:`NORMALIZATIONS`) and ``input_shape`` (C, H, W) are its defaults; the
    input shape is what ``certify`` checks a dataset against. ``dataset`` names the dataset
    it was published with, if any. Use it as a call,
    ``register_model("mynet", MyNet, num_classes=10, ...)``, or as a decorator,
    ``@register_model("mynet", num_classes=10, ...)``; either returns ``factory`` unchanged.
    A name already registered is an error unless ``overwrite=True``.

    For the CLI to rebuild a checkpoint of it, the module that calls this must be imported
    first: ``smoothmix --import MODULE certify ...`` (or ``SMOOTHMIX_IMPORT=MODULE``).
    """
    if not isinstance(name, str) or not name.strip():
        raise SmoothmixError(f"register_model: the name must be a non-empty string, got {name!r}")
    _MODELS.check_new(name, overwrite=overwrite)  # before the factory: decorator form too
    if normalization not in NORMALIZATIONS:
        raise SmoothmixError(f"register_model({name!r}): unknown normalization "
                             f"{normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    check_num_classes(num_classes)
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    if not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise SmoothmixError(f"register_model({name!r}): input_shape must be positive integers "
                             f"(C, H, W), got {input_shape!r}")

    def add(fn: _Factory) -> _Factory:
        if not callable(fn):
            raise SmoothmixError(f"register_model({name!r}): the factory must be a class or "
                                 f"function returning an nn.Module, got {fn!r}")
        try:
            inspect.signature(fn).bind_partial(num_classes)
        except TypeError:
            raise SmoothmixError(f"register_model({name!r}): the factory must take the number "
                                 "of classes as its first argument") from None
        except ValueError:  # no inspectable signature (some builtins): trust it
            pass
        info = ModelInfo(name, num_classes, normalization, shape, dataset, fn)
        _MODELS.register(name, info, overwrite=overwrite)
        return fn

    return add if factory is None else add(factory)


def _resnet50(num_classes: int) -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(weights=None, num_classes=num_classes)


def _cifar_resnet20(num_classes: int) -> nn.Module:
    return CifarResNet(20, num_classes)


def _cifar_resnet110(num_classes: int) -> nn.Module:
    return CifarResNet(110, num_classes)


# The built-ins, through the same door as users' architectures.
register_model("lenet", LeNet, num_classes=10, normalization="mnist",
               input_shape=(1, 28, 28), dataset="mnist")
register_model("cifar_resnet20", _cifar_resnet20, num_classes=10, normalization="cifar10",
               input_shape=(3, 32, 32), dataset="cifar10")
register_model("cifar_resnet110", _cifar_resnet110, num_classes=10, normalization="cifar10",
               input_shape=(3, 32, 32), dataset="cifar10")
register_model("resnet50", _resnet50, num_classes=1000, normalization="imagenet",
               input_shape=(3, 224, 224), dataset="imagenet")


def list_models() -> list[str]:
    """Names of every registered architecture, built-ins first."""
    return _MODELS.names()


def model_defaults(arch: str) -> ModelInfo:
    """Defaults for ``arch``; unknown names raise :class:`SmoothmixError` listing valid ones."""
    return _MODELS.get(arch)


def create_model(
    arch: str, num_classes: int | None = None, normalization: str | None = None,
    **kwargs: Any,
) -> nn.Sequential:
    """``Sequential(Normalize, net)`` for a named architecture, freshly initialised.

    ``num_classes`` and ``normalization`` default to those of the dataset the architecture
    was published with (see :func:`model_defaults`); ``kwargs`` go to the architecture's
    factory (e.g. a registered ``width=32``).
    """
    info = model_defaults(arch)
    num_classes = info.num_classes if num_classes is None else num_classes
    check_num_classes(num_classes)
    try:
        inspect.signature(info.build).bind(int(num_classes), **kwargs)
    except TypeError as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in {"num_classes": num_classes, **kwargs}.items())
        raise SmoothmixError(f"architecture {arch!r} cannot be built with {given}: "
                             f"{first_line(exc)}") from None
    except ValueError:  # no inspectable signature: let the call decide
        pass
    net = info.build(int(num_classes), **kwargs)
    if not isinstance(net, nn.Module):
        raise SmoothmixError(f"the factory of architecture {arch!r} returned a "
                             f"{type(net).__name__}, not an nn.Module")
    return wrap_model(net, normalization or info.normalization)
