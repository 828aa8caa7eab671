"""Dataset classes and on-disk readers.

Images are returned as float C×H×W in [0, 1] with no normalisation (that is the model's
first layer). Small datasets (MNIST, CIFAR-10) are held in memory as uint8 tensors so that
:class:`~smoothmix.data.loaders.DeviceBatchLoader` can keep them on the accelerator.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from smoothmix.errors import SmoothmixError

__all__ = [
    "MNIST_FILES", "Examples", "FolderImageDataset", "ImageDataset", "TensorImageDataset",
    "cifar10_files", "dataset_fingerprint", "find_mnist_files", "first_image", "read_cifar10",
    "read_idx", "read_image_folder", "read_mnist",
]


class Examples(Protocol):
    """What certification reads: indexable ``(image, label)`` pairs with a length. Every
    :class:`ImageDataset` is one, and so is any map-style torch dataset or a plain list."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


class ImageDataset(Dataset):
    """Base class: ``__getitem__`` -> (float C×H×W in [0, 1], int label)."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def subset(self, n: int) -> ImageDataset:
        raise NotImplementedError

    def _check_subset(self, n: int) -> None:
        if not 1 <= n <= len(self):
            raise SmoothmixError(
                f"subset size must be between 1 and {len(self)} for {self.name}, got {n}"
            )


class TensorImageDataset(ImageDataset):
    """An in-memory dataset: ``images`` uint8 N×C×H×W, ``labels`` int64 N.

    ``augment`` says whether training on it should use random crop + flip (CIFAR-10).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        name: str,
        augment: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise SmoothmixError(f"{name}: images must be uint8 N×C×H×W, got "
                                 f"{images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise SmoothmixError(f"{name}: {len(labels)} labels for {len(images)} images")
        self.images = images
        self.labels = labels.long()
        self.num_classes = num_classes
        self.name = name
        self.augment = augment
        channels, height, width = images.shape[1:]
        self.input_shape = (channels, height, width)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255), int(self.labels[index])

    def subset(self, n: int) -> TensorImageDataset:
        """The first ``n`` examples (a view, no copy)."""
        self._check_subset(n)
        return TensorImageDataset(
            self.images[:n], self.labels[:n], self.num_classes, self.name, self.augment
        )


# ----------------------------------------------------------------------------------- MNIST

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8}


def find_mnist_files(directory: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) idx files of ``split`` in ``directory``, gzipped or not."""
    found = []
    for stem in MNIST_FILES[split]:
        candidates = [directory / stem, directory / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def read_idx(path: Path) -> torch.Tensor:
    """Read an unsigned-byte idx file (LeCun's MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise SmoothmixError(f"cannot read {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise SmoothmixError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise SmoothmixError(f"{path} is truncated or corrupt: header says {shape}, "
                             f"file holds {len(data) - offset} values")
    array = np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)
    return torch.from_numpy(array.copy())


def read_mnist(directory: Path, split: str) -> TensorImageDataset:
    files = find_mnist_files(directory, split)
    assert files is not None, "caller checks find_mnist_files first"
    images, labels = (read_idx(p) for p in files)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise SmoothmixError(f"MNIST files in {directory} disagree: images "
                             f"{tuple(images.shape)}, labels {tuple(labels.shape)}")
    return TensorImageDataset(images.unsqueeze(1), labels.long(), 10, "mnist")


# -------------------------------------------------------------------------------- CIFAR-10

_CIFAR_FILES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}


def cifar10_files(directory: Path, split: str) -> list[Path]:
    return [directory / f for f in _CIFAR_FILES[split]]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batches (dicts, lists, numpy arrays) and nothing else, so a
    tampered file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return _ArrayUnpickler(f, encoding="bytes").load()


def read_cifar10(directory: Path, split: str) -> TensorImageDataset:
    """Read the python-pickle batches of ``cifar-10-batches-py``."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    for path in cifar10_files(directory, split):
        try:
            batch = _unpickle(path)
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            images.append(data.reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in batch[b"labels"])
        except Exception as exc:  # unpickling bad bytes raises many types
            raise SmoothmixError(f"cannot read CIFAR-10 batch {path}: {exc!r}") from exc
    num_classes = 10
    meta = directory / "batches.meta"
    if meta.is_file():
        try:
            num_classes = len(_unpickle(meta).get(b"label_names", [0] * 10))
        except Exception as exc:
            raise SmoothmixError(f"cannot read CIFAR-10 metadata {meta}: {exc!r}") from exc
    x = torch.from_numpy(np.concatenate(images))
    y = torch.tensor(labels, dtype=torch.int64)
    if len(x) != len(y):
        raise SmoothmixError(f"CIFAR-10 in {directory}: {len(x)} images but {len(y)} labels")
    return TensorImageDataset(x, y, num_classes, "cifar10", augment=True)


# ---------------------------------------------------------------------------- image folders


def _pil_loader(path: str, mode: str):
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert(mode)


class FolderImageDataset(ImageDataset):
    """A class-folder dataset (torchvision ``ImageFolder``) read lazily from disk."""

    def __init__(self, folder, name: str, input_shape: tuple[int, int, int],
                 indices: list[int] | None = None) -> None:
        self.folder = folder
        self.name = name
        self.classes: list[str] = list(folder.classes)
        self.num_classes = len(self.classes)
        self.input_shape = input_shape
        self.indices = list(range(len(folder))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.folder[self.indices[index]]

    def subset(self, n: int) -> FolderImageDataset:
        """The first ``n`` examples. Folders are sorted by class: take every k-th image
        instead (as the published ImageNet certification does) to cover all classes."""
        self._check_subset(n)
        return FolderImageDataset(self.folder, self.name, self.input_shape, self.indices[:n])


def read_image_folder(directory: Path, name: str, transform: Callable[[Any], torch.Tensor],
                      mode: str, input_shape: tuple[int, int, int]) -> FolderImageDataset:
    from functools import partial

    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(directory), transform=transform,
                             loader=partial(_pil_loader, mode=mode))
    except (FileNotFoundError, OSError) as exc:
        raise SmoothmixError(f"cannot read image folder {directory}: {exc}") from exc
    return FolderImageDataset(folder, name, input_shape)


def first_image(directory: Path) -> Path:
    """The first image of an ImageFolder-style directory (to learn size and colour mode)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    for class_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS:
                return path
    raise SmoothmixError(f"no images found in the class folders of {directory}")


def dataset_fingerprint(dataset: Any) -> str | None:
    """SHA-256 of what identifies a dataset's examples and their order: the pixels and
    labels of an in-memory dataset, the relative file paths and classes of a folder
    dataset (or anything holding a torchvision-style ``folder`` with ``samples``); ``None``
    when neither is available (then only the size can be checked). Files built on a dataset
    (CAT-RS targets) record it, so that they are never used with other data."""
    digest = hashlib.sha256()
    if isinstance(dataset, TensorImageDataset):
        digest.update(str(tuple(dataset.images.shape)).encode())
        digest.update(dataset.images.contiguous().numpy().tobytes())
        digest.update(dataset.labels.contiguous().numpy().astype(np.int64).tobytes())
        return digest.hexdigest()
    folder = getattr(dataset, "folder", None)
    samples = getattr(folder, "samples", None)
    if samples is not None:
        root = str(getattr(folder, "root", ""))
        for i in getattr(dataset, "indices", range(len(samples))):
            path, label = samples[i]
            digest.update(f"{os.path.relpath(path, root)}\t{label}\n".encode())
        return digest.hexdigest()
    return None
