"""`smoothmix targets` (the soft targets of CAT-RS): vote frequencies against the closed form
of a half-space classifier, shard/resume equality, file checks, and `smoothmix train
--method catrs --targets` end to end (bad input, subsets, kill-and-resume)."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

import smoothmix.targets as targets_module
from smoothmix.checkpoint import load_checkpoint, save_checkpoint
from smoothmix.cli import main
from smoothmix.data import load_dataset
from smoothmix.data.datasets import TensorImageDataset
from smoothmix.errors import SmoothmixError
from smoothmix.models import create_model
from smoothmix.run import RunSpec
from smoothmix.storage.arrays import write_arrays
from smoothmix.targets import (
    build_targets,
    check_targets,
    load_targets,
    merge_targets,
    shard_file,
    soft_targets_for,
)

SIGMA = 0.5


class HalfSpace(nn.Module):
    """Class 1 iff w . x > c: under N(0, s^2 I) noise P(class 1) = Phi((w.x - c) / (s |w|))."""

    def __init__(self, w: torch.Tensor, c: float) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w - self.c
        return torch.stack([torch.zeros_like(s), s], 1)


def halfspace_data(n: int = 12, seed: int = 0) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 2, 2), generator=g).to(torch.uint8)
    return TensorImageDataset(images, torch.arange(n) % 2, 2, "halfspace")


def halfspace_model() -> HalfSpace:
    return HalfSpace(torch.tensor([1.0, -0.5, 0.8, 0.3]), 0.8)


def build(data, path, n: int = 200, augment: bool | None = None, **fields):
    """build_targets of the half-space model at SIGMA; ``fields`` of the RunSpec over these
    tests' (64 noisy copies per block, the half-space identity, no progress bar)."""
    spec = RunSpec.of(SIGMA, **{"batch_size": 64, "progress": False,
                                "identity": {"dataset": "halfspace", "split": "train"},
                                **fields})
    return build_targets(halfspace_model(), data, spec, path, n=n, augment=augment)


# ---- the votes ---------------------------------------------------------------------------


def test_vote_frequencies_match_the_closed_form(tmp_path):
    data = halfspace_data(8)
    n = 4000
    model = halfspace_model()
    t = load_targets(build(data, tmp_path / "pi.npz", n=n, batch_size=1000))
    x = data.images.flatten(1).double() / 255
    w = model.w.double()
    p1 = norm.cdf(((x @ w - model.c) / (SIGMA * w.norm())).numpy())
    pi = t.probs().double().numpy()
    np.testing.assert_allclose(pi.sum(1), 1.0, rtol=1e-6)
    tolerance = 4.5 * np.sqrt(p1 * (1 - p1) / n) + 1e-3  # a 4.5-sigma band per image
    assert np.all(np.abs(pi[:, 1] - p1) <= tolerance), (pi[:, 1], p1)
    assert t.n == n and t.counts.dtype == np.uint16 and t.counts.sum(1).tolist() == [n] * 8


def test_shards_merged_equal_one_run_and_rerun_is_idempotent(tmp_path, capsys):
    data = halfspace_data(11)
    whole = load_targets(build(data, tmp_path / "pi.npz")).counts
    shards = [build(data, tmp_path / "s.npz", shard=(i, 3)) for i in range(3)]
    assert shards[1] == shard_file(tmp_path / "s.npz", 1, 3)
    with pytest.raises(SmoothmixError, match="holds only shard 0/3; merge the shards"):
        load_targets(shards[0])
    merged = load_targets(merge_targets(tmp_path / "merged.npz", shards)).counts
    assert np.array_equal(merged, whole)
    from smoothmix.cli import main  # the one merge command takes targets shards too

    assert main(["merge", str(tmp_path / "cli.npz"), *map(str, shards)]) == 0
    assert np.array_equal(load_targets(tmp_path / "cli.npz").counts, whole)
    # The old command (targets-merge, removed in 0.6) is a one-line error naming merge.
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        main(["targets-merge", str(tmp_path / "old.npz"), *map(str, shards)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "targets-merge is now merge" in err
    assert not (tmp_path / "old.npz").exists()
    with pytest.raises(SmoothmixError, match=r"shards \[0, 2\] given"):
        merge_targets(tmp_path / "bad.npz", [shards[0], shards[2]])
    # A finished file is not recounted; other settings are refused.
    mtime = (tmp_path / "pi.npz").stat().st_mtime_ns
    build(data, tmp_path / "pi.npz")
    assert (tmp_path / "pi.npz").stat().st_mtime_ns == mtime
    with pytest.raises(SmoothmixError, match="built by another run .*n: 200 in the file vs 100"):
        build(data, tmp_path / "pi.npz", n=100)


def die_after_four_votes(monkeypatch) -> list[int]:
    """Make the fifth image's vote count raise KeyboardInterrupt (a kill mid-run); the list
    of calls made."""
    real, calls = targets_module._votes, []

    def dies_after_four(*args):
        calls.append(1)
        if len(calls) > 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(targets_module, "_votes", dies_after_four)
    return calls


def test_killed_run_resumes_to_the_same_file(tmp_path, monkeypatch):
    data = halfspace_data(10)
    whole = load_targets(build(data, tmp_path / "whole.npz", seed=3)).counts
    real = targets_module._votes
    die_after_four_votes(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        build(data, tmp_path / "pi.npz", seed=3)
    assert not (tmp_path / "pi.npz").exists()
    assert (tmp_path / "pi.npz.part.npy").exists()
    monkeypatch.setattr(targets_module, "_votes", real)
    with pytest.raises(SmoothmixError, match="an unfinished run.*seed: 3 in the file vs 4"):
        build(data, tmp_path / "pi.npz", seed=4)
    counted = []
    monkeypatch.setattr(targets_module, "_votes", lambda *a: counted.append(1) or real(*a))
    resumed = load_targets(build(data, tmp_path / "pi.npz", seed=3)).counts
    assert len(counted) == 6  # only the rows the killed run had not written
    assert np.array_equal(resumed, whole)
    assert not (tmp_path / "pi.npz.part.npy").exists()


def test_one_augmented_view_per_image_is_reproducible(tmp_path):
    plain = halfspace_data(9)
    data = TensorImageDataset(plain.images, plain.labels, 2, "halfspace", augment=True)
    a = load_targets(build(data, tmp_path / "a.npz")).counts
    shards = [build(data, tmp_path / "s.npz", shard=(i, 2)) for i in range(2)]
    assert np.array_equal(load_targets(merge_targets(tmp_path / "m.npz", shards)).counts, a)
    assert load_targets(tmp_path / "a.npz").meta["augment"] is True
    # A crop of a 2x2 image with padding 4 is mostly zeros: the view changes the votes.
    b = load_targets(build(data, tmp_path / "b.npz", augment=False)).counts
    assert not np.array_equal(a, b)


# ---- file checks -------------------------------------------------------------------------


def test_damaged_or_foreign_files_are_one_line_errors(tmp_path):
    data = halfspace_data(6)
    good = build(data, tmp_path / "pi.npz")
    with pytest.raises(SmoothmixError, match="does not exist"):
        load_targets(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(SmoothmixError, match="not a readable smoothmix targets file"):
        load_targets(tmp_path / "junk.npz")
    raw = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SmoothmixError, match="not a readable smoothmix targets file"):
        load_targets(tmp_path / "cut.npz")
    original = load_targets(good)
    for at in range(40, len(raw) - 200, 7):  # flipped bytes anywhere in the data
        flipped = bytearray(raw)
        flipped[at] ^= 0xFF
        (tmp_path / "flip.npz").write_bytes(bytes(flipped))
        try:
            loaded = load_targets(tmp_path / "flip.npz")
        except SmoothmixError as e:
            assert "\n" not in str(e), at  # one line; never a zlib/zip traceback
            continue
        # A flip that loads (in a byte the reader does not use) changes nothing it returns.
        assert np.array_equal(loaded.counts, original.counts), at
        assert loaded.counts.dtype == original.counts.dtype and loaded.meta == original.meta, at
    np.savez(tmp_path / "other.npz", counts=np.zeros((6, 2)), meta=np.array("{}"))
    with pytest.raises(SmoothmixError, match="not a smoothmix targets file"):
        load_targets(tmp_path / "other.npz")
    t = load_targets(good)
    counts = t.counts.copy()
    counts[2, 0] += 1
    write_arrays(tmp_path / "bad.npz", counts, t.meta)
    with pytest.raises(SmoothmixError, match=r"1 of 6 rows do not hold N = 200 votes"):
        load_targets(tmp_path / "bad.npz")
    write_arrays(tmp_path / "shape.npz", counts[:4], t.meta)
    with pytest.raises(SmoothmixError, match="damaged: counts"):
        load_targets(tmp_path / "shape.npz")


def test_targets_must_match_the_training_set(tmp_path):
    data = halfspace_data(6)
    t = load_targets(build(data, tmp_path / "pi.npz"))
    check_targets(t, data, "halfspace")
    with pytest.raises(SmoothmixError, match="targets for 'halfspace'.*not the 'mnist'"):
        check_targets(t, data, "mnist")
    with pytest.raises(SmoothmixError, match="has 6 rows but the halfspace training set has 5"):
        check_targets(t, data.subset(5), "halfspace")
    other = halfspace_data(6, seed=1)
    with pytest.raises(SmoothmixError, match="built on different halfspace training data"):
        check_targets(t, other, "halfspace")
    # A subset takes the rows of its images from the file built on the whole set.
    rows, _ = soft_targets_for(t.path, data, "halfspace", subset=4)
    assert torch.equal(rows, t.probs()[:4]) and rows.dtype == torch.float32
    with pytest.raises(SmoothmixError, match="has 6 rows but the halfspace training set has 4"):
        soft_targets_for(t.path, data.subset(4), "halfspace")


# ---- smoothmix targets / train --method catrs, end to end ----------------------------------


def idx_file(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    """The first 40 training and 16 test images of the embedded MNIST, as a --data-dir;
    a second copy with 32 training images; a LeNet checkpoint."""
    root = tmp_path_factory.mktemp("mnist")
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    dirs = {}
    for name, n in (("d40", 40), ("d32", 32)):
        d = root / name
        d.mkdir()
        idx_file(d / "train-images-idx3-ubyte.gz", train.images[:n, 0].numpy())
        idx_file(d / "train-labels-idx1-ubyte.gz", train.labels[:n].numpy())
        idx_file(d / "t10k-images-idx3-ubyte.gz", test.images[:16, 0].numpy())
        idx_file(d / "t10k-labels-idx1-ubyte.gz", test.labels[:16].numpy())
        dirs[name] = d
    torch.manual_seed(0)
    model = create_model("lenet")
    ckpt = root / "gauss.pth.tar"
    save_checkpoint(ckpt, {"arch": "lenet", "state_dict": model.state_dict(), "num_classes": 10,
                           "normalization": "mnist", "sigma": 0.25, "method": "gaussian",
                           "epoch": 1})
    pi = root / "pi.npz"
    assert main(["targets", str(ckpt), "--dataset", "mnist", "--data-dir", str(dirs["d40"]),
                 "--n", "10", "--out", str(pi), "--no-progress"]) == 0
    return {"root": root, "ckpt": ckpt, "pi": pi, **dirs}


def train_args(tiny, out, *extra, data="d40", method="catrs"):
    options = ["--num-noise", "2", "--num-steps", "1"] if method == "catrs" else []
    return ["train", "--dataset", "mnist", "--data-dir", str(tiny[data]), "--method", method,
            "--sigma", "0.25", *options, "--epochs", "1", "--batch", "16", "--lr", "0.01",
            "--device", "cpu", "--no-progress", "--outdir", str(out), *extra]


def test_targets_cli_writes_the_file_and_states_small_n(tiny_mnist, capsys):
    t = load_targets(tiny_mnist["pi"])
    from smoothmix.checkpoint import file_sha256

    assert t.meta["checkpoint_sha256"] == file_sha256(tiny_mnist["ckpt"])
    assert (t.meta["dataset"], t.meta["n"], t.meta["sigma"], t.counts.shape) == \
        ("mnist", 10, 0.25, (40, 10))
    # Rerunning the finished command is a no-op and says N is below the reference's.
    assert main(["targets", str(tiny_mnist["ckpt"]), "--dataset", "mnist", "--data-dir",
                 str(tiny_mnist["d40"]), "--n", "10", "--out", str(tiny_mnist["pi"]),
                 "--no-progress"]) == 0
    assert "N = 10 votes per image (the reference uses 10000)" in capsys.readouterr().err


def test_catrs_training_bad_input_is_exit_2_with_one_line(tiny_mnist, tmp_path, capsys):
    cases = [
        (train_args(tiny_mnist, tmp_path / "a"), "needs --targets FILE"),
        (train_args(tiny_mnist, tmp_path / "b", "--targets", str(tmp_path / "none.npz")),
         "does not exist"),
        (train_args(tiny_mnist, tmp_path / "c", "--targets", str(tiny_mnist["pi"]),
                    data="d32"), "has 40 rows but the mnist training set has 32 images"),
    ]
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 broken")
    cases.append((train_args(tiny_mnist, tmp_path / "d", "--targets", str(junk)),
                  "not a readable smoothmix targets file"))
    cases.append((train_args(tiny_mnist, tmp_path / "e", "--targets", str(tiny_mnist["pi"]),
                             method="gaussian"),
                  "--targets is only used by methods that train on soft targets"))
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not any(p.name != "junk.npz" and p.name != "none.npz"
                       for p in tmp_path.iterdir() if p.is_file())


def test_catrs_trains_on_a_subset_and_resumes_exactly(tiny_mnist, tmp_path, capsys):
    full = tmp_path / "full"
    assert main(train_args(tiny_mnist, full, "--targets", str(tiny_mnist["pi"]),
                           "--train-subset", "16", "--epochs", "2")) == 0
    assert "N=10 votes per image (the reference uses 10,000)" in capsys.readouterr().out
    ckpt = load_checkpoint(full / "checkpoint.pth.tar")
    assert ckpt["method"] == "catrs" and ckpt["epoch"] == 2
    assert ckpt["config"]["targets_n"] == 10 and len(ckpt["config"]["targets_sha256"]) == 64
    part = tmp_path / "part"
    assert main(train_args(tiny_mnist, part, "--targets", str(tiny_mnist["pi"]),
                           "--train-subset", "16", "--epochs", "1")) == 0
    assert main(train_args(tiny_mnist, part, "--targets", str(tiny_mnist["pi"]),
                           "--train-subset", "16", "--epochs", "2", "--resume")) == 0
    resumed = load_checkpoint(part / "checkpoint.pth.tar")
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert math.isfinite(ckpt["metrics"]["train_loss"])
    # A resumed CAT-RS run keeps its targets: another file (same dataset) is refused.
    t = load_targets(tiny_mnist["pi"])
    other = tmp_path / "other.npz"
    write_arrays(other, t.counts, {**t.meta, "seed": 1})
    capsys.readouterr()
    assert main(train_args(tiny_mnist, part, "--targets", str(other), "--train-subset", "16",
                           "--epochs", "3", "--resume")) == 2
    assert "targets_sha256" in capsys.readouterr().err


def test_a_file_built_for_the_first_images_serves_subsets_of_them(tmp_path):
    data = halfspace_data(6)
    t = load_targets(build(data, tmp_path / "pi.npz", max_idx=4))
    assert t.counts[4:].sum() == 0 and t.meta["max_idx"] == 4
    rows, _ = soft_targets_for(t.path, data, "halfspace", subset=4)
    assert torch.equal(rows, t.probs()[:4])
    with pytest.raises(SmoothmixError, match="covers only the first 4 training images"):
        soft_targets_for(t.path, data, "halfspace", subset=5)
    with pytest.raises(SmoothmixError, match="covers only the first 4 training images"):
        soft_targets_for(t.path, data, "halfspace")
    full = load_targets(build(data, tmp_path / "full.npz")).counts
    assert np.array_equal(t.counts[:4], full[:4])  # rows do not depend on the range


def test_reproduce_runs_the_catrs_prerequisites_first(tmp_path, monkeypatch, capsys):
    # The plan only (the stages themselves are tested above and in test_reproduce): teacher
    # Gaussian sigma = 0.25 under the same budget -> its targets on the budget's images ->
    # CAT-RS trained on them.
    import smoothmix.certification
    import smoothmix.checkpoint
    import smoothmix.reproduce as rep
    import smoothmix.training

    calls = []
    monkeypatch.setattr(smoothmix.training, "train", lambda outdir, **kw: calls.append(
        ("train", outdir.name, kw["preset"], kw.get("targets"), kw.get("train_subset"),
         kw.get("epochs"))))
    monkeypatch.setattr(targets_module, "targets_from_checkpoint", lambda ckpt, name, out, **kw:
                        calls.append(("targets", ckpt.parent.name, name, out.name,
                                      kw["spec"].noise.sigma, kw["n"], kw["spec"].max_idx))
                        or out)
    monkeypatch.setattr(smoothmix.checkpoint, "load_model", lambda *a, **k: (None, {}))
    monkeypatch.setattr(smoothmix.checkpoint, "file_sha256", lambda path: "0" * 64)
    monkeypatch.setattr(smoothmix.certification, "certify_dataset", lambda *a, **k: None)
    monkeypatch.setattr(rep.pipeline, "write_report", lambda *a, **k: {"table": ""})
    budget = rep.Budget(epochs=1, train_subset=64, n=100, skip=5000, targets_n=100)
    rep.reproduce("mnist-0.25", tmp_path / "r", methods=["catrs"], budget=budget,
                  progress=False)
    targets_path = tmp_path / "r" / rep.TARGETS_NAME
    # At sigma = 0.25 the teacher is the Gaussian row's model, in that row's folder.
    assert calls == [
        ("train", "gaussian", "mnist-gaussian-0.25", None, 64, 1),
        ("targets", "gaussian", "mnist", rep.TARGETS_NAME, 0.25, 100, 64),
        ("train", "catrs", "mnist-catrs-0.25", targets_path, 64, 1),
    ]
    printed = capsys.readouterr().out
    assert "[2/5] CAT-RS soft targets: N=100 votes (reference 10,000)" in printed
    assert "CAT-RS soft targets from N=100 votes per image" in budget.describe(
        rep.get_experiment("mnist-0.25"))
    assert rep.Budget(targets_n=10_000).normalised(rep.get_experiment("mnist-0.25")).is_full()
    with pytest.raises(SmoothmixError, match="--targets-n must be an integer >= 1"):
        rep.Budget(targets_n=0).validate()


def test_an_interrupted_bf16_run_resumes_without_the_flag(tiny_mnist, tmp_path, monkeypatch):
    # `--precision` not given means "the recorded one" on resume (as certify's), so rerunning
    # the same job without the flag resumes it; with its default fp32 it was refused.
    out = tmp_path / "bf16.npz"
    command = ["targets", str(tiny_mnist["ckpt"]), "--dataset", "mnist", "--data-dir",
               str(tiny_mnist["d40"]), "--n", "10", "--out", str(out), "--no-progress"]
    real = targets_module._votes
    calls = die_after_four_votes(monkeypatch)
    assert main([*command, "--precision", "bf16"]) != 0  # interrupted: the rows so far kept
    assert not out.exists() and len(calls) == 5
    monkeypatch.setattr(targets_module, "_votes", real)
    assert main(command) == 0
    assert load_targets(out).meta["precision"] == "bf16"
    assert main([*command, "--precision", "fp32"]) == 2  # a contradicting flag: refused


def test_a_folder_datasets_transform_draws_apart_from_the_noise_stream():
    # Seeded with the noise stream's own seed, the transform's torch.rand would repeat the
    # noise generator's first words (both are CPU mt19937); its seed is derived instead.
    from smoothmix.targets import _view

    class RandomView:
        def __len__(self):
            return 1

        def __getitem__(self, idx):
            return torch.rand(1, 2, 2), 0

    generator = torch.Generator().manual_seed(123)
    x = _view(RandomView(), 0, True, generator, torch.device("cpu"))
    assert torch.equal(x, _view(RandomView(), 0, True, generator, torch.device("cpu")))
    same_words = torch.rand(1, 2, 2, generator=torch.Generator().manual_seed(123))
    assert not torch.equal(x, same_words)


def test_the_run_fields_as_keywords_are_one_line_errors_naming_the_spec(tmp_path):
    # targets_from_checkpoint(..., seed=...) was deprecated in 0.5 and removed in 0.6: refused
    # before the checkpoint is read (it does not exist here) or anything is written.
    from smoothmix.targets import targets_from_checkpoint

    with pytest.raises(TypeError, match=r"^targets_from_checkpoint\(\) got an unexpected "
                       r"keyword argument 'seed': the run's fields go in a "
                       r"smoothmix\.run\.RunSpec \(RunSpec\.of\(sigma, seed=\.\.\.\)\) since 0.6$"):
        targets_from_checkpoint(tmp_path / "none.pth", "mnist", tmp_path / "t.npz", seed=1)
    with pytest.raises(TypeError, match="'batch_size': the run's fields go in a"):
        targets_from_checkpoint(tmp_path / "none.pth", "mnist", tmp_path / "t.npz",
                                spec=RunSpec.of(0.25), batch_size=10)
    assert list(tmp_path.iterdir()) == []
