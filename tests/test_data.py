"""Datasets (real MNIST, tiny CIFAR-10 and image-folder fixtures) and the device loaders."""

from __future__ import annotations

import gzip
import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from smoothmix.data import (
    DeviceBatchLoader,
    TensorImageDataset,
    dataset_defaults,
    embedded_mnist_dir,
    list_datasets,
    load_dataset,
    make_loader,
)
from smoothmix.data.loaders import DeviceDataLoader, random_crop_flip
from smoothmix.errors import SmoothmixError

# /work/shared/data/mnist/README.md
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MD5_TEST_IMAGES = "2646ac647ad5339dbf082846283269ea"


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("SMOOTHMIX_DATA", raising=False)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an unsigned-byte idx file (the MNIST format)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


# ------------------------------------------------------------------------------ MNIST


def test_embedded_mnist_is_the_real_dataset():
    test = load_dataset("mnist", "test")
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    # Re-encoding the tensor gives back the canonical file, byte for byte.
    assert hashlib.md5(idx_bytes(test.images[:, 0].numpy())).hexdigest() == MD5_TEST_IMAGES
    train = load_dataset("mnist", "train")
    assert len(train) == 60000 and torch.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert (test.name, test.num_classes, test.input_shape, test.augment) == (
        "mnist", 10, (1, 28, 28), False)
    x, y = test[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and y == 7
    assert x.min() == 0 and x.max() == 1
    torch.testing.assert_close(x * 255, test.images[0].float())


def write_tiny_mnist(directory, n=5, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    for stem, arr in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        data = idx_bytes(arr)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("layout,gz", [("", False), ("mnist", True), ("MNIST/raw", False)])
def test_mnist_from_data_dir(tmp_path, layout, gz):
    images, labels = write_tiny_mnist(tmp_path / layout, gz=gz)
    ds = load_dataset("mnist", "test", data_dir=tmp_path)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert torch.equal(ds.labels, torch.from_numpy(labels).long())


def test_mnist_env_var_and_fallbacks(tmp_path, monkeypatch):
    write_tiny_mnist(tmp_path, n=7)
    monkeypatch.setenv("SMOOTHMIX_DATA", str(tmp_path))
    assert len(load_dataset("mnist", "test")) == 7
    assert len(load_dataset("mnist", "train")) == 60000  # not there: the embedded copy
    with pytest.raises(SmoothmixError, match=r"MNIST train files .* looked in: "
                       fr"{tmp_path}, .*MNIST/raw.*--data-dir"):
        load_dataset("mnist", "train", data_dir=tmp_path)  # explicit dir: no fallback


def test_data_env_var_pointing_nowhere_is_an_error(tmp_path, monkeypatch):
    # Like a wrong --data-dir, not a silent fall back to the embedded MNIST.
    monkeypatch.setenv("SMOOTHMIX_DATA", str(tmp_path / "typo"))
    for name in ("mnist", "cifar10"):
        with pytest.raises(SmoothmixError, match=r"\$SMOOTHMIX_DATA=.*typo is not a directory"):
            load_dataset(name, "test")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SMOOTHMIX_DATA", str(tmp_path / "file"))
    with pytest.raises(SmoothmixError, match="is not a directory"):
        load_dataset("mnist", "test")
    # An explicit --data-dir wins over the variable.
    write_tiny_mnist(tmp_path, n=5)
    assert len(load_dataset("mnist", "test", data_dir=tmp_path)) == 5
    monkeypatch.setenv("SMOOTHMIX_DATA", "")  # set but empty: as if unset
    assert len(load_dataset("mnist", "test")) == 10000


def test_mnist_corrupt_files(tmp_path):
    write_tiny_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SmoothmixError, match="truncated or corrupt"):
        load_dataset("mnist", "test", data_dir=tmp_path)
    path.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(SmoothmixError, match="bad magic"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_subset_and_bad_names(tmp_path):
    test = load_dataset("mnist", "test")
    sub = test.subset(100)
    assert len(sub) == 100 and torch.equal(sub.labels, test.labels[:100])
    for n in (0, 10001):
        with pytest.raises(SmoothmixError, match="between 1 and 10000"):
            test.subset(n)
    with pytest.raises(SmoothmixError, match="unknown dataset 'svhn'.*cifar10.*imagefolder"):
        load_dataset("svhn")
    with pytest.raises(SmoothmixError, match="unknown split 'dev'"):
        load_dataset("mnist", "dev")
    with pytest.raises(SmoothmixError, match="does not exist"):
        load_dataset("mnist", "test", data_dir=tmp_path / "absent")
    assert embedded_mnist_dir().is_dir()


def test_dataset_registry():
    assert list_datasets() == ["mnist", "cifar10", "imagenet", "imagefolder"]
    info = dataset_defaults("cifar10")
    assert (info.num_classes, info.arch, info.normalization) == (10, "cifar_resnet110", "cifar10")
    assert dataset_defaults("imagenet").arch == "resnet50"


# --------------------------------------------------------------------------- CIFAR-10


def write_tiny_cifar(root, per_batch=3):
    """The real ``cifar-10-batches-py`` format: pickled dicts, rows of 3072 bytes R|G|B."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        batches[name] = (data, labels)
        batch = {b"batch_label": name.encode(), b"data": data, b"labels": labels,
                 b"filenames": [b"x.png"] * per_batch}
        # Protocol 2 with NumPy 1's module name, as in the files distributed since 2009.
        raw = pickle.dumps(batch, protocol=2)
        (directory / name).write_bytes(raw.replace(b"numpy._core.", b"numpy.core."))
    with open(directory / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)],
                     b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f)
    return directory, batches


def test_cifar10_reader(tmp_path):
    directory, batches = write_tiny_cifar(tmp_path)
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    assert train.images.shape == (15, 3, 32, 32) and train.augment and train.num_classes == 10
    data, labels = batches["data_batch_2"]
    # Row layout: 1024 red values (row-major 32×32), then green, then blue.
    assert torch.equal(train.images[3, 1, 0, 5], torch.tensor(data[0, 1024 + 5]))
    assert torch.equal(train.images[4, 2, 31, 31], torch.tensor(data[1, 3071]))
    assert train.labels[3:6].tolist() == labels
    test = load_dataset("cifar10", "test", data_dir=directory)  # the batches dir itself
    assert torch.equal(test.images.flatten(1), torch.from_numpy(batches["test_batch"][0]))


def test_cifar10_missing_and_corrupt(tmp_path):
    with pytest.raises(SmoothmixError, match=r"CIFAR-10 test batches .*looked in: .*"
                       r"cifar-10-batches-py.*--data-dir"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    with pytest.raises(SmoothmixError, match=r"nowhere .*--data-dir DIR or set \$SMOOTHMIX_DATA"):
        load_dataset("cifar10", "test")
    directory, _ = write_tiny_cifar(tmp_path)
    (directory / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(SmoothmixError, match="cannot read CIFAR-10 batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    (directory / "test_batch").write_bytes(pickle.dumps({b"data": print}))  # code, not data
    with pytest.raises(SmoothmixError, match="refusing to load builtins.print"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


# ----------------------------------------------------------------------- image folders


def write_folder(root, classes, n=2, size=(8, 6), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    pixels = {}
    channels = 3 if mode == "RGB" else 1
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
            Image.fromarray(arr if channels == 3 else arr[..., 0], mode).save(root / c / f"{i}.png")
            pixels[(c, i)] = arr
    return pixels


def test_imagefolder(tmp_path):
    pixels = write_folder(tmp_path / "train", ["cat", "dog"])
    write_folder(tmp_path / "val", ["cat", "dog"], n=1, seed=1)
    train = load_dataset("imagefolder", "train", data_dir=tmp_path)
    assert (len(train), train.num_classes, train.input_shape) == (4, 2, (3, 6, 8))
    x, y = train[2]  # sorted by class, then file: dog/0.png
    assert y == 1
    torch.testing.assert_close(x, torch.from_numpy(pixels[("dog", 0)]).permute(2, 0, 1) / 255)
    test = load_dataset("imagefolder", "test", data_dir=tmp_path)
    assert len(test) == 2 and len(test.subset(1)) == 1 and test[1][0].shape == (3, 6, 8)


def test_imagefolder_grayscale_and_mismatch(tmp_path):
    write_folder(tmp_path / "train", ["a", "b", "c"], mode="L")
    write_folder(tmp_path / "test", ["a", "b"], mode="L")
    train = load_dataset("imagefolder", "train", data_dir=tmp_path)
    assert train.input_shape == (1, 6, 8) and train[0][0].shape == (1, 6, 8)
    with pytest.raises(SmoothmixError, match="class folders .* differ"):
        load_dataset("imagefolder", "test", data_dir=tmp_path)
    with pytest.raises(SmoothmixError, match=r"image-folder train split .*looked in: nowhere"):
        load_dataset("imagefolder", "train")


def test_imagenet_transforms(tmp_path):
    write_folder(tmp_path / "imagenet" / "train", ["n01", "n02"], n=1, size=(300, 260))
    write_folder(tmp_path / "imagenet" / "val", ["n01", "n02"], n=1, size=(260, 300))
    for split in ("train", "test"):
        ds = load_dataset("imagenet", split, data_dir=tmp_path)
        x, y = ds[1]
        assert x.shape == (3, 224, 224) and y == 1 and 0 <= x.min() and x.max() <= 1
    with pytest.raises(SmoothmixError, match=r"ImageNet test split \(test/ or val/"):
        load_dataset("imagenet", "test", data_dir=tmp_path / "imagenet" / "train")


# -------------------------------------------------------------------------- loaders


def indexed_dataset(n, shape=(1, 2, 2)):
    """Labels are the example indices, so batches reveal which examples they hold."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, *shape)
    return TensorImageDataset(images.contiguous(), torch.arange(n), n, "indexed")


def all_labels(loader):
    return torch.cat([y for _, y in loader])


def test_loader_in_order_matches_dataset():
    ds = load_dataset("mnist", "test").subset(1000)
    loader = make_loader(ds, 300, "cpu", train=False)
    assert isinstance(loader, DeviceBatchLoader) and len(loader) == 4
    xs, ys = zip(*loader, strict=True)
    assert [len(y) for y in ys] == [300, 300, 300, 100]
    torch.testing.assert_close(torch.cat(xs), ds.images.float() / 255)
    assert torch.equal(torch.cat(ys), ds.labels)


def test_loader_shuffles_reproducibly_per_epoch():
    loader = DeviceBatchLoader(indexed_dataset(50), 16, "cpu", shuffle=True, seed=3)
    epoch0 = all_labels(loader)
    assert sorted(epoch0.tolist()) == list(range(50)) and not torch.equal(epoch0, torch.arange(50))
    assert torch.equal(all_labels(loader), epoch0)  # same epoch, same order
    loader.set_epoch(1)
    epoch1 = all_labels(loader)
    assert sorted(epoch1.tolist()) == list(range(50)) and not torch.equal(epoch1, epoch0)
    other = DeviceBatchLoader(indexed_dataset(50), 16, "cpu", shuffle=True, seed=3)
    other.set_epoch(1)
    assert torch.equal(all_labels(other), epoch1)


@pytest.mark.parametrize("n,drop_last", [(99, False), (100, False), (100, True)])
def test_loader_shards_are_disjoint_and_equal(n, drop_last):
    world = 3
    loaders = [DeviceBatchLoader(indexed_dataset(n), 8, "cpu", shuffle=True, seed=0, rank=r,
                                 world_size=world, drop_last=drop_last) for r in range(world)]
    for loader in loaders:
        loader.set_epoch(5)
    shards = [all_labels(loader) for loader in loaders]
    assert len({len(loader) for loader in loaders}) == 1  # same number of steps on every rank
    assert len({len(s) for s in shards}) == 1
    seen = torch.cat(shards).tolist()
    if n % world == 0 or drop_last:
        assert len(set(seen)) == len(seen)  # disjoint
    else:
        assert len(seen) - len(set(seen)) == world - n % world  # padded by wrapping around
    # drop_last drops the uneven tail across ranks and then each rank's partial batch.
    assert len(set(seen)) == (world * (n // world // 8 * 8) if drop_last else n)


def test_loader_errors():
    with pytest.raises(SmoothmixError, match="batch size"):
        DeviceBatchLoader(indexed_dataset(4), 0, "cpu")
    with pytest.raises(SmoothmixError, match="rank 2 of world size 2"):
        DeviceBatchLoader(indexed_dataset(4), 2, "cpu", rank=2, world_size=2)


def crops_of(image, padding):
    """Every crop (and its mirror image) of a zero-padded image, built without F.pad."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=image.dtype)
    padded[:, padding:padding + h, padding:padding + w] = image
    return {(dy, dx, flip): (padded[:, dy:dy + h, dx:dx + w].flip(-1) if flip
                             else padded[:, dy:dy + h, dx:dx + w])
            for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
            for flip in (False, True)}


def test_random_crop_flip_is_torchvision_crop_and_flip():
    images = torch.randint(1, 256, (400, 3, 8, 8), dtype=torch.uint8)  # no zeros inside
    out = random_crop_flip(images, padding=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    found = []
    for img, aug in zip(images, out, strict=True):
        matches = [k for k, crop in crops_of(img, 4).items() if torch.equal(crop, aug)]
        assert len(matches) >= 1
        found.append(matches[0])
    flips = sum(f for _, _, f in found)
    assert 400 * 0.5 - 4 * 10 < flips < 400 * 0.5 + 4 * 10  # Binomial(400, 1/2): sd 10
    assert {dy for dy, _, _ in found} == set(range(9)) == {dx for _, dx, _ in found}


def test_augmentation_only_for_cifar_training(tmp_path):
    write_tiny_cifar(tmp_path, per_batch=8)
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    loader = make_loader(train, 40, "cpu", train=True, seed=0)
    assert loader.augment
    x, y = next(iter(loader))
    assert x.shape == (40, 3, 32, 32) and x.dtype == torch.float32
    original = train.images[y].float() / 255
    assert not torch.equal(x, original) and (x == 0).any()  # crops show the zero padding
    assert not make_loader(train, 40, "cpu", train=False).augment
    assert not make_loader(load_dataset("mnist", "test"), 8, "cpu", train=True).augment
    again = make_loader(train, 40, "cpu", train=True, seed=0)
    assert torch.equal(next(iter(again))[0], x)  # reproducible


def test_folder_loader_shards_and_epochs(tmp_path):
    write_folder(tmp_path / "train", ["a", "b"], n=5, size=(4, 4))
    ds = load_dataset("imagefolder", "train", data_dir=tmp_path)
    loaders = [make_loader(ds, 2, "cpu", train=True, seed=1, rank=r, world_size=2, workers=0)
               for r in range(2)]
    assert all(isinstance(loader, DeviceDataLoader) for loader in loaders)
    batches = [list(loader) for loader in loaders]
    assert [len(b) for b in batches] == [3, 3]
    seen = [x.sum().item() for b in batches for xb, _ in b for x in xb]
    assert len(seen) == 10 and len(set(seen)) == 10  # disjoint and complete
    single = make_loader(ds, 4, "cpu", train=True, seed=1, workers=0)
    order0 = all_labels(single)
    single.set_epoch(0)
    assert torch.equal(all_labels(single), order0)


# DataLoader warns when asked for more workers than this machine has: here on purpose.
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 2), (16, 4), (None, 1)])
def test_folder_loader_workers_default_to_at_most_the_cores(tmp_path, monkeypatch, cores,
                                                            expected):
    from smoothmix.training import TrainConfig

    write_folder(tmp_path / "train", ["a", "b"], n=2, size=(4, 4))
    ds = load_dataset("imagefolder", "train", data_dir=tmp_path)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert make_loader(ds, 2, "cpu", train=False).loader.num_workers == expected
    assert make_loader(ds, 2, "cpu", train=False, workers=TrainConfig().workers
                       ).loader.num_workers == expected  # what `smoothmix train` passes
    assert make_loader(ds, 2, "cpu", train=False, workers=3).loader.num_workers == 3  # asked
