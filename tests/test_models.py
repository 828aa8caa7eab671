"""Models: architecture shapes, parameter counts and state-dict keys of docs/MATH.md §4."""

from __future__ import annotations

import pytest
import torch

import smoothmix.models
from smoothmix.errors import SmoothmixError
from smoothmix.models import (
    NORMALIZATIONS,
    Normalize,
    create_model,
    list_models,
    model_defaults,
    register_model,
    wrap_model,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cifar_resnet_params(blocks: int, classes: int = 10) -> int:
    """Parameter count of the CIFAR ResNet written out from its description in docs/MATH.md §4."""
    bn = lambda c: 2 * c  # noqa: E731
    total = 3 * 16 * 9 + bn(16)
    inplanes = 16
    for width in (16, 32, 64):
        for b in range(blocks):
            cin = inplanes if b == 0 else width
            total += cin * width * 9 + bn(width) + width * width * 9 + bn(width)
            if b == 0 and cin != width:
                total += cin * width + bn(width)  # 1×1 conv + BN shortcut
        inplanes = width
    return total + 64 * classes + classes


def test_lenet_matches_spec():
    model = create_model("lenet")
    expected = (1 * 20 * 25 + 20) + (20 * 50 * 25 + 50) + (800 * 500 + 500) + (500 * 10 + 10)
    assert n_params(model) == expected == 431080
    assert list(model.state_dict()) == [
        f"1.{layer}.{p}" for layer in ("conv1", "conv2", "fc1", "fc2") for p in ("weight", "bias")
    ]
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("arch,blocks", [("cifar_resnet20", 3), ("cifar_resnet110", 18)])
def test_cifar_resnets_match_spec(arch, blocks):
    model = create_model(arch)
    assert n_params(model) == cifar_resnet_params(blocks)
    keys = set(model.state_dict())
    for key in ("1.conv1.weight", "1.bn1.running_mean", "1.bn1.num_batches_tracked",
                "1.layer1.0.conv1.weight", "1.layer1.0.bn2.running_var",
                "1.layer2.0.downsample.0.weight", "1.layer2.0.downsample.1.running_mean",
                "1.layer3.0.downsample.0.weight", f"1.layer3.{blocks - 1}.conv2.weight",
                "1.fc.weight", "1.fc.bias"):
        assert key in keys, key
    assert "1.layer1.0.downsample.0.weight" not in keys  # same width: identity shortcut
    assert f"1.layer1.{blocks}.conv1.weight" not in keys
    assert not any(k.startswith("0.") or k.endswith("conv1.bias") for k in keys)
    model.eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_resnet110_size():
    assert 1.7e6 < n_params(create_model("cifar_resnet110")) < 1.75e6


def test_resnet50_is_torchvision_layout():
    model = create_model("resnet50", num_classes=7).eval()
    keys = list(model.state_dict())
    assert keys[0] == "1.conv1.weight" and "1.layer4.2.bn3.running_var" in keys
    assert 23.5e6 < n_params(model) < 23.6e6  # 25.56M with 1000 classes, minus the fc
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 7)


def test_normalize_is_first_layer_and_not_saved():
    model = create_model("cifar_resnet20")
    norm = model[0]
    assert isinstance(norm, Normalize)
    x = torch.rand(2, 3, 4, 4)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), (x - mean) / std)
    assert len(list(norm.buffers())) == 2 and not norm.state_dict()
    center = create_model("cifar_resnet20", normalization="cifar10-center")[0]
    torch.testing.assert_close(center(x), x - mean)
    mnist = create_model("lenet")[0]
    assert torch.equal(mnist(x), x)  # identity


def test_normalizations_table():
    assert set(NORMALIZATIONS) >= {"mnist", "cifar10", "cifar10-center", "imagenet",
                                   "imagenet-center"}
    assert NORMALIZATIONS["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert NORMALIZATIONS["imagenet-center"][1] == (1.0, 1.0, 1.0)


def test_defaults_and_registry():
    assert list_models() == ["lenet", "cifar_resnet20", "cifar_resnet110", "resnet50"]
    info = model_defaults("resnet50")
    assert (info.num_classes, info.normalization, info.input_shape) == (
        1000, "imagenet", (3, 224, 224))
    assert create_model("lenet", num_classes=3)(torch.rand(1, 1, 28, 28)).shape == (1, 3)


def test_bad_names_are_one_line_errors():
    with pytest.raises(SmoothmixError, match="unknown architecture 'vgg'.*lenet.*resnet50"):
        create_model("vgg")
    with pytest.raises(SmoothmixError, match="unknown normalization 'foo'.*cifar10-center"):
        create_model("lenet", normalization="foo")
    with pytest.raises(SmoothmixError, match="num_classes"):
        create_model("lenet", num_classes=1)
    with pytest.raises(SmoothmixError, match="num_classes must be an integer >= 2.*got '10'") as e:
        create_model("lenet", num_classes="10")
    assert "\n" not in str(e.value)
    with pytest.raises(SmoothmixError, match="cannot be built with num_classes=10, width=3"):
        create_model("lenet", width=3)


def test_wrap_user_model():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    model = wrap_model(net, "none")
    assert list(model.state_dict()) == ["1.1.weight", "1.1.bias"]
    x = torch.rand(5, 1, 4, 4)
    torch.testing.assert_close(model(x), net(x))


def test_buffers_follow_device_and_dtype():
    model = create_model("lenet").to(torch.float64)
    assert model[0].mean.dtype == torch.float64
    assert model(torch.rand(1, 1, 28, 28, dtype=torch.float64)).dtype == torch.float64


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so registrations do not outlive the test."""
    monkeypatch.setattr(smoothmix.models, "_MODELS", smoothmix.models._MODELS.copy())


class Tiny(torch.nn.Module):
    def __init__(self, num_classes: int, width: int = 4) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3)
        self.fc = torch.nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def test_register_model_as_call_and_decorator(registry):
    assert register_model("tiny", Tiny, num_classes=5, normalization="cifar10",
                          input_shape=(3, 8, 8)) is Tiny

    @register_model("tiny_fn", num_classes=3, normalization="none", input_shape=[3, 8, 8])
    def tiny_fn(num_classes, width=2):
        return Tiny(num_classes, width)

    assert tiny_fn(4).fc.out_features == 4  # the decorator returns the factory unchanged
    assert list_models()[-2:] == ["tiny", "tiny_fn"]
    info = model_defaults("tiny_fn")
    assert (info.num_classes, info.normalization, info.input_shape, info.dataset) == (
        3, "none", (3, 8, 8), None)

    model = create_model("tiny", width=7)  # kwargs go to the factory
    assert isinstance(model[0], Normalize) and isinstance(model[1], Tiny)
    assert model[1].conv.weight.shape == (7, 3, 3, 3) and model[1].fc.out_features == 5
    torch.testing.assert_close(model[0].std.flatten(), torch.tensor([0.2023, 0.1994, 0.2010]))
    assert list(model.state_dict())[0] == "1.conv.weight"  # same layout as the built-ins
    other = create_model("tiny_fn", num_classes=2, normalization="cifar10-center", width=6)
    assert other(torch.rand(2, 3, 8, 8)).shape == (2, 2)
    assert other[1].conv.out_channels == 6


def test_register_model_errors_are_one_line(registry):
    def one_line(match, fn, *args, **kwargs):
        with pytest.raises(SmoothmixError, match=match) as e:
            fn(*args, **kwargs)
        assert "\n" not in str(e.value)

    shape = {"num_classes": 10, "normalization": "mnist", "input_shape": (1, 28, 28)}
    one_line("'lenet' is already registered.*overwrite=True", register_model, "lenet", Tiny,
             **shape)
    register_model("tiny", Tiny, **shape)
    one_line("'tiny' is already registered", register_model, "tiny", Tiny, **shape)
    register_model("tiny", lambda k, width=1: Tiny(k, width), **shape, overwrite=True)
    assert create_model("tiny")[1].conv.out_channels == 1  # replaced
    one_line("unknown normalization 'foo'", register_model, "x", Tiny,
             **{**shape, "normalization": "foo"})
    one_line("input_shape must be positive integers", register_model, "x", Tiny,
             **{**shape, "input_shape": 28})
    one_line("num_classes must be an integer", register_model, "x", Tiny,
             **{**shape, "num_classes": "10"})
    one_line("first argument", register_model, "x", lambda: Tiny(2), **shape)
    one_line("non-empty string", register_model, "", Tiny, **shape)
    one_line("cannot be built with num_classes=10, depth=3.*depth", create_model, "tiny",
             depth=3)
    register_model("not_a_module", lambda k: "nope", **shape)
    one_line("returned a str, not an nn.Module", create_model, "not_a_module")
    one_line("unknown architecture 'vgg'.*register_model", create_model, "vgg")
