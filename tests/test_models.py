"""Models: architecture shapes, parameter counts and state-dict keys of docs/MATH.md §4."""

from __future__ import annotations

import pytest
import torch

from smoothmix.errors import SmoothmixError
from smoothmix.models import (
    NORMALIZATIONS,
    Normalize,
    create_model,
    list_models,
    model_defaults,
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
