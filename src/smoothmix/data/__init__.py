"""Datasets by name and the loaders that feed training.

``load_dataset(name, split, data_dir)`` finds the files in ``data_dir`` (``--data-dir``), else
in ``$SMOOTHMIX_DATA`` (an error when it names no directory), else — MNIST only — in the copy
embedded in the package. Images come
out as float C×H×W in [0, 1]; normalisation belongs to the model (docs/MATH.md §1).
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from smoothmix.checks import check_choice, check_num_classes
from smoothmix.data.datasets import (
    MNIST_FILES,
    Examples,
    FolderImageDataset,
    ImageDataset,
    TensorImageDataset,
    cifar10_files,
    dataset_fingerprint,
    find_mnist_files,
    first_image,
    read_cifar10,
    read_image_folder,
    read_mnist,
)
from smoothmix.data.loaders import DeviceBatchLoader, make_loader
from smoothmix.errors import SmoothmixError, is_integer, require
from smoothmix.registry import Registry

__all__ = [
    "DatasetInfo",
    "DeviceBatchLoader",
    "Examples",
    "FolderImageDataset",
    "ImageDataset",
    "TensorImageDataset",
    "dataset_defaults",
    "dataset_fingerprint",
    "embedded_mnist_dir",
    "Loader",
    "list_datasets",
    "load_dataset",
    "make_loader",
    "register_dataset",
]

DATA_ENV = "SMOOTHMIX_DATA"


#: How a dataset is read: ``loader(split, data_dir)`` with ``split`` "train" or "test" and
#: ``data_dir`` the directory the user gave (``None``: their default, e.g. $SMOOTHMIX_DATA).
Loader = Callable[[str, "str | os.PathLike | None"], ImageDataset]


@dataclass(frozen=True)
class DatasetInfo:
    """What the CLI needs before loading: defaults of the published experiments, and the
    dataset's ``loader`` (see :data:`Loader`)."""

    name: str
    num_classes: int | None  # None: read from the class folders
    arch: str | None  # default architecture; None: the user must choose
    normalization: str
    input_shape: tuple[int, int, int] | None
    description: str
    loader: Loader | None = field(default=None, repr=False, compare=False)
    # True: every image is exactly k/255 (8-bit pixels, transformed as integers if at all),
    # so grid noise applies; False: float transforms leave the grid; None: unknown (each
    # image is checked as it is certified).
    on_grid: bool | None = None


_DATASETS: Registry[DatasetInfo] = Registry(
    "dataset", hint="add your own with smoothmix.data.register_dataset")

_L = TypeVar("_L", bound=Loader)


def register_dataset(
    name: str,
    loader: _L | None = None,
    *,
    num_classes: int | None = None,
    arch: str | None = None,
    normalization: str = "none",
    input_shape: Sequence[int] | None = None,
    description: str = "",
    on_grid: bool | None = None,
    overwrite: bool = False,
) -> Any:
    """Add a dataset under ``name``, after which :func:`load_dataset`, ``train(dataset=name)``
    and (with ``smoothmix --import MODULE``) the CLI's ``--dataset`` read it like the built-ins.

    ``loader(split, data_dir)`` returns ``split`` ("train" or "test") as an
    :class:`ImageDataset` (``(image, label)`` pairs, images float C×H×W in [0, 1], with
    ``name``, ``num_classes`` and ``input_shape``; :class:`TensorImageDataset` wraps uint8
    tensors). ``data_dir`` is ``--data-dir`` (or ``None``). ``num_classes``, ``arch`` (the
    default architecture), ``normalization`` and ``input_shape`` (C, H, W) are the
    dataset's defaults, ``None`` when unknown. ``on_grid`` says whether every image is
    exactly k/255 (8-bit pixels, as :class:`TensorImageDataset` keeps them), which grid
    noise (``--grid``) needs: ``False`` refuses ``--grid`` before anything loads, ``None``
    (unknown) leaves it to the check of each image. Use it
    as a call or as a decorator; either returns ``loader`` unchanged. A name already
    registered is an error unless ``overwrite=True``.
    """
    from smoothmix.models import NORMALIZATIONS

    _DATASETS.check_new(name, overwrite=overwrite)
    check_choice(f"normalization of dataset {name!r}", normalization, list(NORMALIZATIONS))
    if num_classes is not None:
        check_num_classes(num_classes)
    shape = None if input_shape is None else cast("tuple[int, int, int]", tuple(input_shape))
    require(shape is None or (len(shape) == 3 and all(is_integer(d) and d >= 1 for d in shape)),
            f"register_dataset({name!r}): input_shape must be three positive integers "
            f"(C, H, W), got {input_shape!r}")

    def add(fn: _L) -> _L:
        require(callable(fn), f"register_dataset({name!r}): the loader must be a function "
                f"(split, data_dir) -> dataset, got {fn!r}")
        info = DatasetInfo(name, num_classes, arch, normalization, shape, description, fn,
                           on_grid)
        _DATASETS.register(name, info, overwrite=overwrite)
        return fn

    return add if loader is None else add(loader)


def list_datasets() -> list[str]:
    """Names of every registered dataset, built-ins first."""
    return _DATASETS.names()


def dataset_defaults(name: str) -> DatasetInfo:
    """Defaults of dataset ``name``; unknown names raise :class:`SmoothmixError`."""
    return _DATASETS.get(name)


def embedded_mnist_dir() -> Path:
    """The MNIST copy shipped inside the package."""
    return Path(str(importlib.resources.files("smoothmix.data").joinpath("mnist")))


def _roots(data_dir: str | os.PathLike | None) -> tuple[list[Path], str]:
    """Data roots to search, and how the user can provide another one."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()], "check --data-dir"
    if os.environ.get(DATA_ENV):
        root = Path(os.environ[DATA_ENV]).expanduser()
        # A mistyped variable must not fall back silently (e.g. to the embedded MNIST).
        if not root.is_dir():
            raise SmoothmixError(f"${DATA_ENV}={os.environ[DATA_ENV]} is not a directory; fix "
                                 f"it, unset it, or pass --data-dir")
        return [root], f"check ${DATA_ENV}"
    return [], f"pass --data-dir DIR or set ${DATA_ENV}"


def _not_found(what: str, looked: list[Path], how: str) -> SmoothmixError:
    where = ", ".join(str(p) for p in looked) if looked else "nowhere (no data directory given)"
    return SmoothmixError(f"{what} not found; looked in: {where}; {how}")


@functools.lru_cache(maxsize=4)
def _cached(reader, directory: str, split: str, stamp) -> TensorImageDataset:
    return reader(Path(directory), split)


def _in_memory(reader, directory: Path, split: str, files) -> TensorImageDataset:
    # Re-reading 60k MNIST images costs ~1 s; share the tensors (keyed by the files' size and
    # mtime, so edited files are re-read) but not the dataset object.
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    d = _cached(reader, str(directory.resolve()), split, stamp)
    return TensorImageDataset(d.images, d.labels, d.num_classes, d.name, d.augment)


def _load_mnist(split: str, data_dir) -> TensorImageDataset:
    roots, how = _roots(data_dir)
    looked = [c for r in roots for c in (r, r / "mnist", r / "MNIST" / "raw", r / "MNIST")]
    if data_dir is None:
        looked.append(embedded_mnist_dir())  # $SMOOTHMIX_DATA without MNIST: same data
    for directory in looked:
        files = find_mnist_files(directory, split)
        if files is not None:
            return _in_memory(read_mnist, directory, split, files)
    stems = " and ".join(f"{s}[.gz]" for s in MNIST_FILES[split])
    raise _not_found(f"MNIST {split} files ({stems})", looked, how)


def _load_cifar10(split: str, data_dir) -> TensorImageDataset:
    roots, how = _roots(data_dir)
    looked = [c for r in roots for c in
              (r, r / "cifar-10-batches-py", r / "cifar10" / "cifar-10-batches-py", r / "cifar10")]
    for directory in looked:
        files = cifar10_files(directory, split)
        if all(p.is_file() for p in files):
            return _in_memory(read_cifar10, directory, split, files)
    names = "data_batch_1..5" if split == "train" else "test_batch"
    raise _not_found(f"CIFAR-10 {split} batches ({names} of cifar-10-batches-py)", looked,
                     how + " (download cifar-10-python.tar.gz and extract it there)")


def _split_dir(root: Path, split: str) -> Path | None:
    names = ("train",) if split == "train" else ("test", "val")
    return next((root / n for n in names if (root / n).is_dir()), None)


def _split_folder_missing(what: str, split: str, looked: list[Path], how: str) -> SmoothmixError:
    want = "train/" if split == "train" else "test/ or val/"
    return _not_found(f"{what} {split} split ({want} with one folder per class)", looked, how)


def _load_imagenet(split: str, data_dir) -> FolderImageDataset:
    from torchvision import transforms as T

    roots, how = _roots(data_dir)
    looked = [c for r in roots for c in (r, r / "imagenet")]
    directory = next(filter(None, (_split_dir(root, split) for root in looked)), None)
    if directory is None:
        raise _split_folder_missing("ImageNet", split, looked, how)
    if split == "train":
        transform = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
    else:
        transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    return read_image_folder(directory, "imagenet", transform, "RGB", (3, 224, 224))


def _load_imagefolder(split: str, data_dir) -> FolderImageDataset:
    from PIL import Image
    from torchvision import transforms as T

    roots, how = _roots(data_dir)
    root = roots[0] if roots else None
    directory = _split_dir(root, split) if root is not None else None
    if root is None or directory is None:
        raise _split_folder_missing("image-folder", split, roots, how)
    # Size and colour mode come from the training split's first image so that both splits
    # (and every image in them) reach the model with one shape.
    reference = first_image(_split_dir(root, "train") or directory)
    with Image.open(reference) as img:
        mode = "L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB"
        width, height = img.size
    transform = T.Compose([T.Resize((height, width)), T.ToTensor()])
    dataset = read_image_folder(directory, "imagefolder", transform, mode,
                                (1 if mode == "L" else 3, height, width))
    train_dir = _split_dir(root, "train")
    if split != "train" and train_dir is not None:
        train_classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        if train_classes != dataset.classes:
            raise SmoothmixError(f"class folders of {directory} differ from those of "
                                 f"{train_dir}; both splits need the same classes")
    return dataset


# The built-ins, through the same door as users' datasets. All four are on the 8-bit grid:
# the folder loaders resize, crop and flip PIL uint8 images and only then divide by 255
# (ToTensor), so every pixel is still k/255 (docs/grid.md).
register_dataset("mnist", _load_mnist, num_classes=10, arch="lenet", normalization="mnist",
                 input_shape=(1, 28, 28), on_grid=True,
                 description="MNIST idx files (embedded copy used when no data dir is given)")
register_dataset("cifar10", _load_cifar10, num_classes=10, arch="cifar_resnet110",
                 normalization="cifar10", input_shape=(3, 32, 32), on_grid=True,
                 description="CIFAR-10 python batches (cifar-10-batches-py)")
register_dataset("imagenet", _load_imagenet, num_classes=1000, arch="resnet50",
                 normalization="imagenet", input_shape=(3, 224, 224), on_grid=True,
                 description="ImageNet train/ and val/ class folders")
register_dataset("imagefolder", _load_imagefolder, on_grid=True,
                 description="any class-folder dataset: DIR/train and DIR/test (or DIR/val)")


def load_dataset(
    name: str, split: str = "test", data_dir: str | os.PathLike | None = None
) -> ImageDataset:
    """Load ``split`` ("train" or "test"; "val" means "test") of dataset ``name`` as an
    :class:`ImageDataset` of ``(image, label)`` pairs, images float C×H×W in [0, 1].

    Built-ins: ``mnist`` (the copy embedded in the package when ``data_dir`` is None),
    ``cifar10``, ``imagenet``, ``imagefolder``; more with :func:`register_dataset`. Nothing is
    ever downloaded: an unknown name or split, a ``data_dir`` that does not exist, or files
    missing from it are a one-line :class:`SmoothmixError`.
    """
    info = dataset_defaults(name)  # validates the name
    split = {"val": "test"}.get(split, split)
    if split not in ("train", "test"):
        raise SmoothmixError(f"unknown split {split!r}; valid: train, test")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise SmoothmixError(f"data directory {data_dir} does not exist")
    assert info.loader is not None, "register_dataset always sets the loader"
    dataset = info.loader(split, data_dir)
    if not isinstance(dataset, ImageDataset):
        raise SmoothmixError(f"the loader of dataset {name!r} returned a "
                             f"{type(dataset).__name__}, not a smoothmix.data.ImageDataset")
    return dataset
