"""Training run folders written by older releases (0.2, 0.3.0, 0.4.0) still load and resume.

The folders in tests/fixtures/train/ were written by those releases themselves
(tests/fixtures/train/make_fixtures.py): a 1-epoch SmoothMix LeNet on the first 256 embedded
MNIST images, no momentum. ``RELEASE.expected.json`` holds what the release wrote when it
resumed the folder for a second epoch: the current code must continue the same run (same
recipe, no refusal, log.csv extended with the same columns) to the same weights: bit for bit
on a machine the release itself resumed the folder on (its digest is in the file), and to
float rounding on any other (another CPU's kernels sum in another order).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from smoothmix.checkpoint import Checkpoint, load_checkpoint, load_model
from smoothmix.training import train

FIXTURES = Path(__file__).parent / "fixtures" / "train"
RELEASES = ["v0.2", "v0.3.0", "v0.4.0"]


def _make_fixtures():
    """tests/fixtures/train/make_fixtures.py, for its digest, fingerprint and machine key."""
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(text):
    return list(csv.reader(io.StringIO(text)))


@pytest.mark.parametrize("release", RELEASES)
def test_old_run_folder_loads_as_a_model(release):
    model, ckpt = load_model(FIXTURES / release)
    assert ckpt["arch"] == "lenet" and ckpt["num_classes"] == 10
    assert ckpt["normalization_source"] == "checkpoint"
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    record = Checkpoint.from_dict(load_checkpoint(FIXTURES / release))
    assert record.epoch == 1 and record.method == "smoothmix" and record.sigma == 0.5
    settings = record.settings()
    assert settings["precision"] == "fp32" and settings["momentum"] == 0.0
    assert settings["train_subset"] == 256 and settings["arch_kwargs"] == {}


@pytest.mark.parametrize("release", RELEASES)
def test_old_run_folder_resumes_as_the_release_would(release, tmp_path):
    expected = json.loads((FIXTURES / f"{release}.expected.json").read_text())
    run = tmp_path / release
    shutil.copytree(FIXTURES / release, run)
    # One more epoch with the stored recipe: no recipe-change refusal, no flags needed. One
    # thread, as the release ran, so that even the summation order is the same.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = train(run, resume=True, epochs=2, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == expected["epoch"] == 2
    assert ckpt["config"]["momentum"] == 0.0 and ckpt["method_options"] == {
        "num_noise": 2, "num_steps": 2}
    # The same random streams and recipe as the release: the same weights, to the last bit
    # where the release ran on this machine and torch, and to rounding everywhere. Measured:
    # 1 vs 2 threads (another summation order) moves the fingerprint by 3.5e-8 relative, one
    # more epoch by up to 0.42; the tolerance sits between.
    fixtures = _make_fixtures()
    digest = expected["state_sha256_by_machine"].get(fixtures.machine_key())
    if digest is not None:
        assert fixtures.state_sha256(ckpt["state_dict"]) == digest
    got = fixtures.state_fingerprint(ckpt["state_dict"])
    assert got.keys() == expected["state_fingerprint"].keys()
    for name, values in expected["state_fingerprint"].items():
        assert got[name] == pytest.approx(values, rel=1e-5, abs=1e-6), name
    rows, old = _rows((run / "log.csv").read_text()), _rows(expected["log_csv"])
    assert rows[0] == old[0]  # the columns continue
    assert [r[0] for r in rows[1:]] == ["1", "2"]
    assert rows[1] == old[1]  # the release's own row is kept as written
    # The new row: the same values as the release's (time_s apart).
    # (log.csv keeps 6 digits, so a value that rounding moves near a digit's edge differs
    # in the last one on another machine).
    assert rows[2][0] == old[2][0] and len(rows[2]) == len(old[2])
    assert [float(v) for v in rows[2][1:-1]] == pytest.approx(
        [float(v) for v in old[2][1:-1]], rel=1e-4)
