"""Checkpoints: atomic save, safe load, reference-style checkpoints, clear errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

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
    with pytest.raises(SmoothmixError, match="unknown architecture 'vgg16'.*cifar_resnet110"):
        load_model(tmp_path / "a.pth")
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
    with pytest.raises(SmoothmixError, match="not a smoothmix/reference checkpoint.*'arch'"):
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
                 "--n0", "10", "--n", "100", "--alpha", "0.01", "--batch", "100",
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
