"""Checkpoints: atomic save, safe load, reference-style checkpoints, clear errors."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import smoothmix.models
from smoothmix import checkpoint as ckpt_mod
from smoothmix.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_model,
    restore_rng_state,
    save_checkpoint,
)
from smoothmix.errors import SmoothmixError
from smoothmix.models import create_model


def reference_checkpoint(path, arch, net_state, prefix="1."):
    """Write a checkpoint the way the public reference code did: its own torch.save, keys
    arch/state_dict/optimizer/epoch only, normalisation not in the state dict."""
    state = {f"{prefix}{k}": v for k, v in net_state.items()}
    torch.save({"arch": arch, "state_dict": state, "epoch": 90,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.001}]}}, path)


def same_outputs(a, b, x):
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def test_roundtrip_with_metadata(tmp_path):
    model = create_model("lenet", normalization="none")
    path = tmp_path / "run" / "checkpoint.pth.tar"
    save_checkpoint(path, {"arch": "lenet", "state_dict": model.state_dict(), "epoch": 3,
                           "num_classes": 10, "normalization": "none", "sigma": 0.5})
    loaded, info = load_model(tmp_path / "run")  # a run directory works too
    assert info["epoch"] == 3 and info["normalization"] == "none"
    assert info["normalization_source"] == "checkpoint"
    assert not loaded.training
    same_outputs(model, loaded, torch.rand(4, 1, 28, 28))


@pytest.mark.parametrize("prefix", ["1.", "1.module.", "module.1.", "_orig_mod.1.", ""])
def test_reference_lenet_loads_with_any_wrapper_prefix(tmp_path, prefix, caplog):
    model = create_model("lenet")
    reference_checkpoint(tmp_path / "ref.pth.tar", "lenet", model[1].state_dict(), prefix)
    loaded, info = load_model(tmp_path / "ref.pth.tar")
    assert info["normalization"] == "mnist" and "assumed" in info["normalization_source"]
    assert "assuming 'mnist'" in caplog.text  # the assumption is stated, not silent
    assert info["num_classes"] == 10
    same_outputs(model, loaded, torch.rand(4, 1, 28, 28))


def test_reference_cifar_resnet_chooses_normalization(tmp_path):
    model = create_model("cifar_resnet20", normalization="cifar10-center")
    net_state = {k: v for k, v in model[1].state_dict().items()
                 if not k.endswith("num_batches_tracked")}  # PyTorch < 0.4.1 files lack these
    reference_checkpoint(tmp_path / "c.pth", "cifar_resnet20", net_state)
    loaded, info = load_model(tmp_path / "c.pth", normalization="cifar10-center")
    assert info["normalization_source"] == "requested"
    same_outputs(model, loaded, torch.rand(2, 3, 32, 32))
    default, info = load_model(tmp_path / "c.pth")  # dataset default: full normalisation
    assert info["normalization"] == "cifar10"
    assert torch.allclose(default[0].std.flatten(), torch.tensor([0.2023, 0.1994, 0.2010]))


def test_reference_resnet50_dataparallel_layout(tmp_path):
    model = create_model("resnet50", num_classes=5, normalization="imagenet-center")
    reference_checkpoint(tmp_path / "r50.pth.tar", "resnet50", model[1].state_dict(),
                         "1.module.")
    loaded, info = load_model(tmp_path / "r50.pth.tar", normalization="imagenet-center")
    assert info["num_classes"] == 5  # read from the classifier's shape
    same_outputs(model, loaded, torch.rand(1, 3, 64, 64))


def test_other_num_classes_is_inferred(tmp_path):
    model = create_model("lenet", num_classes=100)
    reference_checkpoint(tmp_path / "a.pth", "lenet", model[1].state_dict())
    loaded, info = load_model(tmp_path / "a.pth")
    assert info["num_classes"] == 100
    same_outputs(model, loaded, torch.rand(2, 1, 28, 28))


def test_wrong_architecture(tmp_path):
    lenet_state = create_model("lenet")[1].state_dict()
    reference_checkpoint(tmp_path / "a.pth", "cifar_resnet20", lenet_state)
    with pytest.raises(SmoothmixError, match=r"does not fit architecture 'cifar_resnet20': "
                       r"missing .*unexpected 1\.conv1\.bias.*different --arch") as e:
        load_model(tmp_path / "a.pth")
    assert "\n" not in str(e.value)


def test_shape_mismatch(tmp_path):
    state = create_model("cifar_resnet20")[1].state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(8, 16, 3, 3)
    reference_checkpoint(tmp_path / "a.pth", "cifar_resnet20", state)
    with pytest.raises(SmoothmixError, match=r"shape mismatch 1\.layer1\.0\.conv1\.weight "
                       r"\(8, 16, 3, 3\) \(model: \(16, 16, 3, 3\)\)"):
        load_model(tmp_path / "a.pth")


def test_unexpected_normalization_keys(tmp_path):
    state = {"0.mean": torch.zeros(1), "0.std": torch.ones(1),
             **{f"1.{k}": v for k, v in create_model("lenet")[1].state_dict().items()}}
    torch.save({"arch": "lenet", "state_dict": state}, tmp_path / "a.pth")
    with pytest.raises(SmoothmixError, match=r"normalisation layer \(0\.mean, 0\.std\).*"
                       r"--normalization"):
        load_model(tmp_path / "a.pth")


def test_unknown_or_custom_arch_in_checkpoint(tmp_path):
    torch.save({"arch": "vgg16", "state_dict": {}}, tmp_path / "a.pth")
    with pytest.raises(SmoothmixError, match="unknown architecture 'vgg16'.*cifar_resnet110.*"
                       r"register_model\('vgg16', \.\.\.\).*--import MODULE") as e:
        load_model(tmp_path / "a.pth")
    assert "\n" not in str(e.value)
    save_checkpoint(tmp_path / "b.pth", {"arch": None, "state_dict": {}})
    with pytest.raises(SmoothmixError, match="custom network"):
        load_model(tmp_path / "b.pth")


def test_missing_corrupt_truncated_and_foreign_files(tmp_path):
    with pytest.raises(SmoothmixError, match="checkpoint .*nope.pth does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(SmoothmixError, match="cannot read checkpoint .*junk.pth"):
        load_checkpoint(tmp_path / "junk.pth")
    (tmp_path / "notes.txt").write_text("not a model\n")
    with pytest.raises(SmoothmixError, match="notes.txt: not a PyTorch checkpoint file"):
        load_checkpoint(tmp_path / "notes.txt")
    save_checkpoint(tmp_path / "ok.pth", {"arch": "lenet",
                                          "state_dict": create_model("lenet").state_dict()})
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(SmoothmixError, match="cannot read checkpoint .*cut.pth"):
        load_checkpoint(tmp_path / "cut.pth")
    torch.save(create_model("lenet").state_dict(), tmp_path / "bare.pth")
    with pytest.raises(SmoothmixError, match="weights-only state_dict, not a checkpoint.*'arch'"):
        load_checkpoint(tmp_path / "bare.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(SmoothmixError, match="found a Tensor"):
        load_checkpoint(tmp_path / "tensor.pth")
    torch.save({"arch": "lenet", "state_dict": {}, "x": np.zeros(3)}, tmp_path / "np.pth")
    with pytest.raises(SmoothmixError, match="pickled Python objects"):
        load_checkpoint(tmp_path / "np.pth")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth.tar"
    save_checkpoint(path, {"arch": "lenet", "state_dict": {}, "epoch": 1})
    real_save = torch.save

    def dying_save(obj, f):
        f.write(b"partial garbage")  # the process dies half-way through writing
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"arch": "lenet", "state_dict": {}, "epoch": 2})
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth.tar"]  # no temp files
    save_checkpoint(path, {"arch": "lenet", "state_dict": {}, "epoch": 3})
    assert load_checkpoint(path)["epoch"] == 3


def test_rng_state_survives_safe_loading(tmp_path):
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    save_checkpoint(tmp_path / "c.pth", {"arch": "lenet", "state_dict": {}, "rng": state})
    torch.rand(5), np.random.rand(5), random.random()
    restore_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_a_directory_is_its_checkpoint_file(tmp_path, capsys):
    """A training --outdir given as CHECKPOINT means DIR/checkpoint.pth.tar, for load_model
    and for `smoothmix certify` (whose result file must name the file's hash)."""
    from smoothmix.certification import read_meta
    from smoothmix.checkpoint import CHECKPOINT_NAME, checkpoint_file, file_sha256
    from smoothmix.cli import main

    run = tmp_path / "run"
    save_checkpoint(run / CHECKPOINT_NAME, {"arch": "lenet", "num_classes": 10,
                                            "state_dict": create_model("lenet").state_dict()})
    assert checkpoint_file(run) == run / CHECKPOINT_NAME
    assert checkpoint_file(run / CHECKPOINT_NAME) == run / CHECKPOINT_NAME
    out = tmp_path / "c.tsv"
    assert main(["certify", str(run), "--dataset", "mnist", "--sigma", "0.25", "--max", "1",
                 "--n0", "10", "--n", "100", "--alpha", "0.01", "--noise-batch", "100",
                 "--no-progress", "--out", str(out)]) == 0, capsys.readouterr().err
    settings = read_meta(out, required=True)["settings"]
    assert settings["checkpoint_sha256"] == file_sha256(run / CHECKPOINT_NAME)

    # A directory without one is named as such, never "does not exist".
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SmoothmixError, match=f"{empty} is a directory without a "
                       "checkpoint.pth.tar") as info:
        load_model(empty)
    assert "does not exist" not in str(info.value)
    assert main(["certify", str(empty), "--dataset", "mnist", "--sigma", "0.25",
                 "--out", str(tmp_path / "d.tsv")]) == 2
    err = capsys.readouterr().err
    assert "is a directory without a checkpoint.pth.tar" in err and "does not exist" not in err


# A user's own architecture, as the module a user would write (the CLI test imports it).
CUSTOM_ARCH = """
import torch
from torch import nn

from smoothmix.models import register_model


@register_model("tiny_cnn", num_classes=10, normalization="mnist", input_shape=(1, 28, 28))
class TinyCNN(nn.Module):
    def __init__(self, num_classes, width=4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 5, stride=3)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))
"""


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the model registry, so registrations do not outlive the test."""
    monkeypatch.setattr(smoothmix.models, "_MODELS", smoothmix.models._MODELS.copy())


@pytest.mark.slow
def test_registered_architecture_round_trips_through_train_load_and_certify(
        tmp_path, registry, capsys):
    """A registered network with a constructor kwarg: trained by name, its checkpoint records
    the kwarg, load_model rebuilds that shape, certify_dataset and `smoothmix --import MODULE
    certify` (in a fresh process) certify it; without the import the CLI says what to do."""
    from smoothmix.certification import certify_dataset
    from smoothmix.data import load_dataset
    from smoothmix.run import RunSpec
    from smoothmix.training import train

    exec(compile(CUSTOM_ARCH, "tiny_arch.py", "exec"), {})  # registers "tiny_cnn"
    path = train(tmp_path / "run", dataset="mnist", arch="tiny_cnn", arch_kwargs={"width": 7},
                 method="gaussian", sigma=0.25, epochs=1, train_subset=48, test_subset=16,
                 batch_size=16, device="cpu", progress=False, workers=0)
    saved = load_checkpoint(path)
    assert saved["arch"] == "tiny_cnn" and saved["arch_kwargs"] == {"width": 7}
    assert saved["normalization"] == "mnist" and saved["num_classes"] == 10

    model, info = load_model(path)
    assert model[1].conv.weight.shape == (7, 1, 5, 5) and info["arch_kwargs"] == {"width": 7}
    assert info["normalization_source"] == "checkpoint"
    with torch.no_grad():
        torch.testing.assert_close(
            model.state_dict()["1.conv.weight"], saved["state_dict"]["1.conv.weight"])

    test_set = load_dataset("mnist", "test")
    spec = RunSpec.of(0.25, batch_size=50, max_idx=3, progress=False)
    out = certify_dataset(model, test_set, spec, tmp_path / "c.tsv", n0=10, n=50, alpha=0.01)
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["0", "1", "2"]

    # The CLI, in a fresh process: the module is named by --import (here by module name on
    # PYTHONPATH; a .py path works too), after the subcommand or before it.
    (tmp_path / "tiny_arch.py").write_text(CUSTOM_ARCH)
    src = str(Path(smoothmix.models.__file__).parents[2])
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SMOOTHMIX_IMPORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([src, str(tmp_path)]))
    args = ["certify", str(tmp_path / "run"), "--dataset", "mnist", "--sigma", "0.25",
            "--max", "2", "--n0", "10", "--n", "50", "--alpha", "0.01", "--noise-batch", "50",
            "--no-progress", "--out", str(tmp_path / "cli.tsv")]
    cli = subprocess.run([sys.executable, "-m", "smoothmix", *args, "--import", "tiny_arch"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path.root)
    assert cli.returncode == 0, cli.stderr
    assert len((tmp_path / "cli.tsv").read_text().splitlines()) == 3  # header + 2 images

    # Not imported: one line naming the architecture and how to register it.
    bare = subprocess.run([sys.executable, "-m", "smoothmix", *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path.root)
    assert bare.returncode == 2 and len(bare.stderr.strip().splitlines()) == 1, bare.stderr
    assert "unknown architecture 'tiny_cnn'" in bare.stderr
    assert "register_model('tiny_cnn', ...)" in bare.stderr and "--import" in bare.stderr

    # --resume keeps the stored kwargs; contradicting them is a one-line conflict.
    with pytest.raises(SmoothmixError, match=r"arch_kwargs \{'width': 5\} from arch_kwargs= "
                       r"\(stored \{'width': 7\}\)"):
        train(tmp_path / "run", resume=True, arch_kwargs={"width": 5}, progress=False)
    train(tmp_path / "run", resume=True, epochs=2, progress=False, device="cpu", workers=0)
    assert load_checkpoint(path)["epoch"] == 2
    assert load_model(path)[0][1].conv.out_channels == 7


def test_import_option_errors_are_one_line(tmp_path, registry, capsys, monkeypatch):
    from smoothmix.cli import main

    monkeypatch.delenv("SMOOTHMIX_IMPORT", raising=False)
    args = ["presets"]
    assert main(["--import", "no_such_module_xyz", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("smoothmix presets: error: --import no_such_module_xyz failed: "
                   "ModuleNotFoundError: No module named 'no_such_module_xyz'")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    assert main([*args, "--import", str(broken)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--import {broken} failed: RuntimeError: boom")
    assert main([*args, "--import", str(tmp_path / "missing.py")]) == 2
    assert "missing.py: no such file" in capsys.readouterr().err
    # A module whose registration clashes names the clash (still one line).
    (tmp_path / "clash.py").write_text(CUSTOM_ARCH.replace('"tiny_cnn"', '"lenet"'))
    assert main([*args, "--import", str(tmp_path / "clash.py")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'lenet' is already registered" in err and "\n" not in err
    # A .py file given by path, or the environment variable, registers the architecture.
    (tmp_path / "tiny_arch2.py").write_text(CUSTOM_ARCH)
    monkeypatch.setenv("SMOOTHMIX_IMPORT", str(tmp_path / "tiny_arch2.py"))
    monkeypatch.delitem(sys.modules, "tiny_arch2", raising=False)
    assert main(args) == 0
    assert "tiny_cnn" in smoothmix.models.list_models()
    sys.modules.pop("tiny_arch2", None)


def test_checkpoints_without_arch_kwargs_load_as_before(tmp_path):
    """The current release's checkpoints (no ``arch_kwargs``) and an explicit empty or None
    entry build the architecture with no extra arguments; a malformed entry is one line."""
    model = create_model("lenet")
    base = {"arch": "lenet", "state_dict": model.state_dict(), "num_classes": 10,
            "normalization": "mnist"}
    for name, extra in (("old", {}), ("empty", {"arch_kwargs": {}}),
                        ("none", {"arch_kwargs": None})):
        save_checkpoint(tmp_path / f"{name}.pth", {**base, **extra})
        loaded, info = load_model(tmp_path / f"{name}.pth")
        assert info["arch_kwargs"] == {}
        same_outputs(model, loaded, torch.rand(2, 1, 28, 28))
    save_checkpoint(tmp_path / "bad.pth", {**base, "arch_kwargs": [1, 2]})
    with pytest.raises(SmoothmixError, match="malformed 'arch_kwargs'"):
        load_model(tmp_path / "bad.pth")
    save_checkpoint(tmp_path / "wrong.pth", {**base, "arch_kwargs": {"width": 3}})
    with pytest.raises(SmoothmixError, match="'lenet' cannot be built with .*width=3"):
        load_model(tmp_path / "wrong.pth")


def test_checkpoint_record_reads_every_layout_and_writes_the_same_keys(tmp_path):
    from smoothmix.checkpoint import CHECKPOINT_VERSION, Checkpoint, save_checkpoint

    reference = {"arch": "lenet", "state_dict": {}, "optimizer": {}, "epoch": 90}
    rec = Checkpoint.from_dict(reference)
    assert rec.version == 0 and rec.arch_kwargs == {} and rec.settings() == {}
    old = {**reference, "config": {"amp": True, "lr": 0.01}, "method": "gaussian",
           "sigma": 0.5, "custom": 1}
    rec = Checkpoint.from_dict(old)
    assert rec.version == 1 and rec.extra == {"custom": 1}
    assert rec.settings()["precision"] == "bf16"  # 0.2 recorded only amp
    rec.arch_kwargs = {"width": 3}
    save_checkpoint(tmp_path / "c.pth", rec)
    data = torch.load(tmp_path / "c.pth", weights_only=True)
    assert Checkpoint.from_dict(data).version == CHECKPOINT_VERSION
    assert set(data) == {"arch", "state_dict", "arch_kwargs", "num_classes", "normalization",
                         "epoch", "optimizer", "scheduler", "rng", "method", "method_options",
                         "method_config", "sigma", "config", "metrics", "smoothmix",
                         "git_commit", "custom"}
