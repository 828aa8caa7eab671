"""Batch loaders that yield device tensors and reshuffle reproducibly per epoch.

In-memory datasets (MNIST, CIFAR-10) go through :class:`DeviceBatchLoader`: the uint8
images are copied to the device once, and batching, augmentation (random crop with zero
padding + horizontal flip, as batched tensor ops) and the conversion to float happen there —
no CPU workers, no per-sample PIL transforms. Other datasets use a ``DataLoader`` (with a
``DistributedSampler`` under DDP) behind the same interface.

Per-example side data (e.g. CAT-RS's soft targets): :func:`attach_side_data` gives a dataset
tables keyed by dataset index; a loader built with ``side=("name", ...)`` yields
``(x, y, {"name": rows})`` with the rows of the batch's examples, gathered on the device by
the same indices as the images, so shuffling, DDP sharding and resume (order from
``seed + epoch``) carry over unchanged. Without ``side`` the loaders yield ``(x, y)``.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from smoothmix.data.datasets import TensorImageDataset
from smoothmix.errors import SmoothmixError

__all__ = [
    "SIDE_ATTR", "Batch", "DeviceBatchLoader", "DeviceDataLoader", "SideBatch", "attach_side_data",
    "default_workers", "make_loader", "random_crop_flip", "side_tables",
]

Batch = tuple[torch.Tensor, torch.Tensor]


def default_workers() -> int:
    """DataLoader worker processes when none are asked for: 4, but never more than the
    machine's cores (more only compete for them)."""
    return max(1, min(4, os.cpu_count() or 1))
SideBatch = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
SIDE_ATTR = "side_data"

D = TypeVar("D")


def attach_side_data(dataset: D, **tables: torch.Tensor) -> D:
    """A shallow copy of ``dataset`` carrying per-example tables (row i = example i).

    Existing tables are kept unless replaced by name. Each table must have one row per
    example. The dataset itself is not modified (datasets are cached and shared).
    """
    n = len(dataset)  # type: ignore[arg-type]
    merged = dict(side_tables(dataset))
    for name, table in tables.items():
        table = torch.as_tensor(table)
        if table.dim() < 1 or table.shape[0] != n:
            rows = table.shape[0] if table.dim() else "no"
            raise SmoothmixError(f"side data {name!r} has {rows} rows for a dataset of {n} "
                                 "examples")
        merged[name] = table
    out = copy.copy(dataset)
    setattr(out, SIDE_ATTR, merged)
    return out


def side_tables(dataset: Any) -> Mapping[str, torch.Tensor]:
    """The per-example tables attached to ``dataset`` (empty if none)."""
    return getattr(dataset, SIDE_ATTR, None) or {}


def _side_tables(dataset: Any, names: Sequence[str],
                 device: torch.device) -> dict[str, torch.Tensor]:
    tables = side_tables(dataset)
    missing = [name for name in names if name not in tables]
    if missing:
        raise SmoothmixError(
            f"the training method needs per-example {', '.join(map(repr, missing))} data, "
            "which the training set does not carry (attach it with attach_side_data; "
            "`smoothmix train` does so from --targets)")
    return {name: tables[name].to(device) for name in names}


class _WithIndex:
    """``dataset[i] -> (*dataset[i], i)``, so a DataLoader batch carries its indices."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return (*self.dataset[index], index)


def random_crop_flip(
    images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-example random crop (of the input's size, from a zero-padded copy) and horizontal
    flip with probability 1/2: torchvision's RandomCrop(padding) + RandomHorizontalFlip, but
    for a whole N×C×H×W batch in one gather on the batch's device."""
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=device, generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=device, generator=generator)
    flip = torch.rand(n, 1, 1, device=device, generator=generator) < 0.5
    columns = torch.arange(w, device=device)
    cols = left + torch.where(flip, w - 1 - columns, columns)  # a flip reverses the columns read
    rows = top + torch.arange(h, device=device).view(1, h, 1)
    # One flat gather per channel plane: far cheaper than 3-D advanced indexing on a CPU.
    index = (rows * (w + 2 * padding) + cols).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, index).view(n, c, h, w)


def _check_shard(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise SmoothmixError(f"batch size must be at least 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise SmoothmixError(f"bad distributed rank {rank} of world size {world_size}")


class DeviceBatchLoader:
    """Batches of an in-memory dataset, held on ``device`` as uint8.

    Each epoch uses the permutation of a generator seeded with ``seed + epoch`` — identical
    on all ranks, of which rank r takes every ``world_size``-th index from r on, so DDP ranks
    see disjoint examples and the same number of batches (the permutation is padded by
    wrapping around, as ``DistributedSampler`` does, unless ``drop_last``). Call
    :meth:`set_epoch` before each epoch, or every epoch repeats epoch 0's order.
    """

    def __init__(
        self,
        dataset: TensorImageDataset,
        batch_size: int,
        device: torch.device | str,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        padding: int = 4,
        side: Sequence[str] = (),
    ) -> None:
        _check_shard(batch_size, rank, world_size)
        self.device = torch.device(device)
        self.side = _side_tables(dataset, side, self.device)  # small tables, like the images
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle, self.augment, self.padding = shuffle, augment, padding
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        n = len(dataset)
        self.num_samples = n // world_size if drop_last else math.ceil(n / world_size)
        if self.num_samples == 0:
            raise SmoothmixError(f"{n} examples cannot be shared by {world_size} processes")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def shard_indices(self) -> torch.Tensor:
        """This rank's example indices for the current epoch (on the CPU)."""
        n = len(self.labels)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        total = self.num_samples * self.world_size
        order = order.repeat(math.ceil(total / n))[:total]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[Batch | SideBatch]:
        indices = self.shard_indices().to(self.device)
        generator = None
        if self.augment:
            # Distinct per rank and per epoch, reproducible across runs and resumes.
            generator = torch.Generator(device=self.device)
            generator.manual_seed((self.seed + self.epoch) * 100_003 + self.rank)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = indices[start:start + self.batch_size]
            x = self.images.index_select(0, idx)
            if self.augment:
                x = random_crop_flip(x, self.padding, generator)
            if self.side:
                yield (x.float().div_(255), self.labels.index_select(0, idx),
                       {k: t.index_select(0, idx) for k, t in self.side.items()})
            else:
                yield x.float().div_(255), self.labels.index_select(0, idx)


class DeviceDataLoader:
    """A ``DataLoader`` that yields device tensors and reshuffles with ``seed + epoch``."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: torch.device | str,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int | None = None,
        drop_last: bool = False,
        side: Sequence[str] = (),
    ) -> None:
        _check_shard(batch_size, rank, world_size)
        self.device = torch.device(device)
        self.seed = seed
        # Side rows are looked up by the indices the batch carries (the sampler's, so
        # shuffling and DDP sharding need nothing else). The tables stay in host memory
        # (ImageNet's soft targets are 1.28M x 1000 floats); only a batch's rows move.
        self.side = _side_tables(dataset, side, torch.device("cpu"))
        if self.side:
            dataset = _WithIndex(dataset)  # type: ignore[assignment]
        self.sampler: DistributedSampler | None = (
            DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                               seed=seed, drop_last=drop_last)
            if world_size > 1 else None
        )
        # Also seeds the workers' random transforms, so an epoch is reproducible.
        self.generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and self.sampler is None,
            sampler=self.sampler,
            num_workers=default_workers() if workers is None else workers,
            pin_memory=self.device.type == "cuda",
            drop_last=drop_last,
            generator=self.generator,
        )
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(self.seed + epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch | SideBatch]:
        for batch in self.loader:
            x = batch[0].to(self.device, non_blocking=True)
            y = batch[1].to(self.device, non_blocking=True)
            if self.side:
                idx = batch[2]
                yield x, y, {k: t.index_select(0, idx).to(self.device, non_blocking=True)
                             for k, t in self.side.items()}
            else:
                yield x, y


def make_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device | str,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    workers: int | None = None,
    drop_last: bool = False,
    side: Sequence[str] = (),
) -> DeviceBatchLoader | DeviceDataLoader:
    """The loader for ``dataset``: shuffled (and augmented where the dataset asks for it)
    when ``train``, in order otherwise; sharded over ``world_size`` ranks. With ``side``
    names it yields ``(x, y, {name: rows})`` from the dataset's attached tables."""
    if isinstance(dataset, TensorImageDataset):
        return DeviceBatchLoader(
            dataset, batch_size, device, shuffle=train, augment=train and dataset.augment,
            seed=seed, rank=rank, world_size=world_size, drop_last=drop_last, side=side,
        )
    return DeviceDataLoader(dataset, batch_size, device, shuffle=train, seed=seed, rank=rank,
                            world_size=world_size, workers=workers, drop_last=drop_last,
                            side=side)
