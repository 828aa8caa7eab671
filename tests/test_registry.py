"""One registry shape for architectures, methods and datasets (issue 26, item 6)."""

from __future__ import annotations

import sys

import pytest
import torch

import smoothmix.data
import smoothmix.methods
import smoothmix.models
from smoothmix.cli import build_parser, main
from smoothmix.data import (
    TensorImageDataset,
    dataset_defaults,
    list_datasets,
    load_dataset,
    register_dataset,
)
from smoothmix.errors import SmoothmixError
from smoothmix.methods import METHODS, TrainingMethod, create_method, list_methods
from smoothmix.methods.gaussian import Gaussian
from smoothmix.registry import Registry


def test_registry_register_get_and_messages():
    things: Registry[object] = Registry("denoiser", hint="add one with register_denoiser")
    sentinel = object()
    assert things.register("dncnn", sentinel, paper="Zhang 2017") is sentinel

    @things.register("unet")
    def unet() -> None:
        """A decorated entry is returned unchanged."""

    assert things.get("dncnn") is sentinel and things.get("unet") is unet
    assert things.names() == ["dncnn", "unet"] == list(things) and len(things) == 2
    assert "unet" in things and "x" not in things and ["unet"] not in things
    assert things.metadata("dncnn") == {"paper": "Zhang 2017"}
    assert dict(things.view()) == {"dncnn": sentinel, "unet": unet}
    with pytest.raises(SmoothmixError) as e:
        things.get("dcnn")
    assert str(e.value) == ("unknown denoiser 'dcnn' (did you mean 'dncnn'?); valid denoisers: "
                            "dncnn, unet (add one with register_denoiser)")
    with pytest.raises(SmoothmixError, match=r"unknown denoiser \['x'\]; valid"):
        things.get(["x"])
    with pytest.raises(SmoothmixError, match="'unet' is already registered.*overwrite=True"):
        things.register("unet", sentinel)
    things.register("unet", sentinel, overwrite=True)
    assert things.get("unet") is sentinel
    with pytest.raises(SmoothmixError, match="non-empty string"):
        things.register(" ", sentinel)
    copy = things.copy()
    copy.register("other", 1)
    assert "other" not in things and copy.kind == "denoiser"


def test_builtins_are_registered_through_the_public_functions():
    assert smoothmix.models.model_defaults("lenet").dataset == "mnist"
    assert smoothmix.models._MODELS.names() == smoothmix.models.list_models()
    assert isinstance(smoothmix.methods._METHODS, Registry)
    assert list_methods()[:2] == ["smoothmix", "gaussian"] and METHODS["gaussian"] is Gaussian
    assert list_datasets() == ["mnist", "cifar10", "imagenet", "imagefolder"]
    assert all(dataset_defaults(d).loader is not None for d in list_datasets())
    with pytest.raises(SmoothmixError, match=r"unknown architecture 'lenet5' \(did you mean "
                       r"'lenet'\?\); valid architectures: lenet, .*register_model"):
        smoothmix.models.create_model("lenet5")


@pytest.fixture
def methods(monkeypatch):
    monkeypatch.setattr(smoothmix.methods, "_METHODS", smoothmix.methods._METHODS.copy())
    monkeypatch.setattr(smoothmix.methods, "METHODS", smoothmix.methods._METHODS.view())


def test_register_method_overwrite_and_errors(methods):
    register = smoothmix.methods.register_method
    assert register(Gaussian) is Gaussian  # the same class again: a no-op

    class Other(Gaussian):
        name = "gaussian"

    with pytest.raises(SmoothmixError, match="method 'gaussian' is already registered"):
        register(Other)
    assert register(overwrite=True)(Other) is Other
    assert type(create_method("gaussian", 0.5, 10)) is Other
    with pytest.raises(SmoothmixError, match="not a TrainingMethod subclass"):
        register(int)

    @register
    class Mine(Gaussian):
        name = "mine"

    assert smoothmix.methods.list_methods()[-1] == "mine"
    assert isinstance(create_method("mine", 0.5, 10), TrainingMethod)
    with pytest.raises(SmoothmixError, match=r"'mne' \(did you mean 'mine'\?\)"):
        create_method("mne", 0.5, 10)


def test_method_sigma_is_checked_like_smooth():
    """Each check once: a sigma Smooth refuses is refused by the methods too."""
    from smoothmix.checks import check_sigma

    with pytest.raises(SmoothmixError) as method_error:
        create_method("gaussian", sigma=10, num_classes=10)
    with pytest.raises(SmoothmixError) as check_error:
        check_sigma(10)
    assert str(method_error.value) == str(check_error.value)
    assert create_method("gaussian", sigma=4, num_classes=10).sigma == 4.0


@pytest.fixture
def datasets(monkeypatch):
    monkeypatch.setattr(smoothmix.data, "_DATASETS", smoothmix.data._DATASETS.copy())


def _tiny(split, data_dir):
    images = torch.zeros(6 if split == "train" else 4, 1, 8, 8, dtype=torch.uint8)
    return TensorImageDataset(images, torch.arange(len(images)) % 2, 2, "tiny")


def test_register_dataset(datasets):
    assert register_dataset("tiny", _tiny, num_classes=2, input_shape=(1, 8, 8)) is _tiny
    assert list_datasets()[-1] == "tiny" and dataset_defaults("tiny").arch is None
    assert len(load_dataset("tiny", "train")) == 6 and len(load_dataset("tiny", "val")) == 4

    @register_dataset("listy", description="returns a list")
    def listy(split, data_dir):
        return [(torch.zeros(1, 8, 8), 0)]

    with pytest.raises(SmoothmixError, match="returned a list, not a smoothmix.data"):
        load_dataset("listy")
    with pytest.raises(SmoothmixError, match="'tiny' is already registered"):
        register_dataset("tiny", _tiny)
    with pytest.raises(SmoothmixError, match="unknown normalization of dataset 'x' 'foo'"):
        register_dataset("x", _tiny, normalization="foo")
    with pytest.raises(SmoothmixError, match="input_shape must be three positive integers"):
        register_dataset("x", _tiny, input_shape=(8, 8))
    with pytest.raises(SmoothmixError, match=r"unknown dataset 'tin' \(did you mean 'tiny'"):
        load_dataset("tin")


def test_cli_choices_come_from_the_registries(datasets, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SMOOTHMIX_IMPORT", raising=False)
    register_dataset("tiny", _tiny, num_classes=2)
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and a.choices
               and "certify" in a.choices).choices
    for command in ("certify", "predict", "targets", "diagnose"):
        dataset = next(a for a in sub[command]._actions if a.dest == "dataset")
        assert list(dataset.choices) == list_datasets(), command
    train_help = sub["train"].format_help()
    for name in ("tiny", "resnet50", "consistency"):
        assert name in train_help
    # A dataset registered by an --import module is a choice of the same command line.
    plugin = tmp_path / "tiny_plugin.py"
    plugin.write_text("from smoothmix.data import register_dataset\n"
                      "register_dataset('tiny2', lambda split, d: None)\n")
    code = main(["--import", str(plugin), "certify", "nowhere.pth", "--dataset", "tiny2",
                 "--sigma", "0.25", "--out", str(tmp_path / "o.tsv")])
    err = capsys.readouterr().err
    sys.modules.pop("tiny_plugin", None)
    assert code == 2 and "invalid choice" not in err and "nowhere.pth does not exist" in err
