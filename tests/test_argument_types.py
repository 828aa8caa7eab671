"""Arguments of the wrong type in the public constructors are one-line SmoothmixErrors
(a raw TypeError from deep inside torch tells a user nothing about which argument it was)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from torch import nn

from smoothmix.core import Smooth
from smoothmix.errors import SmoothmixError, is_integer
from smoothmix.models import create_model, model_defaults, normalize_layer, wrap_model


def net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize("args, message", [
    ((net(), "10", 0.5), r"num_classes must be an integer >= 2.*got '10'"),
    ((net(), 10.0, 0.5), r"num_classes must be an integer >= 2.*got 10.0"),
    ((net(), True, 0.5), r"num_classes must be an integer >= 2.*got True"),
    ((net(), 0.5, 10), r"num_classes must be an integer >= 2.*got 0.5"),  # swapped
    ((net(), None, 0.5), r"num_classes must be an integer >= 2.*got None"),
    ((net(), 10, "0.5"), r"sigma must be a positive number.*got '0.5'"),
    ((net(), 10, None), r"sigma must be a positive number.*got None"),
    ((10, net(), 0.5), r"base_classifier must be a torch.nn.Module, got int"),
    (("lenet", 10, 0.5), r"base_classifier must be a torch.nn.Module, got str"),
])
def test_smooth_checks_its_argument_types(args, message):
    with pytest.raises(SmoothmixError, match=message) as info:
        Smooth(*args)
    assert "\n" not in str(info.value)


def test_smooth_accepts_numpy_and_torch_numbers():
    smooth = Smooth(net(), np.int64(2), np.float32(0.25))
    assert smooth.num_classes == 2 and isinstance(smooth.num_classes, int)
    assert Smooth(net(), torch.tensor(3), torch.tensor(0.5)).sigma == 0.5


@pytest.mark.parametrize("call, message", [
    (lambda: create_model("lenet", "10"), r"num_classes must be an integer >= 2.*got '10'"),
    (lambda: create_model("lenet", "mnist"), r"num_classes must be an integer >= 2.*'mnist'"),
    (lambda: create_model("lenet", 10.0), r"num_classes must be an integer >= 2.*got 10.0"),
    (lambda: create_model("lenet", 1), r"num_classes must be an integer >= 2.*got 1"),
    (lambda: create_model(["lenet"]), r"unknown architecture \['lenet'\]"),
    (lambda: create_model("lenet", 10, ["mnist"]), r"unknown normalization \['mnist'\]"),
    (lambda: model_defaults({"lenet"}), "unknown architecture"),
    (lambda: normalize_layer(0.5), "unknown normalization 0.5"),
    (lambda: wrap_model("cifar10", net()), "wrap_model needs a torch.nn.Module, got str"),
])
def test_model_constructors_check_their_argument_types(call, message):
    with pytest.raises(SmoothmixError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_create_model_takes_numpy_integers():
    model = create_model("lenet", np.int64(3))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


def test_is_integer():
    assert all(is_integer(v) for v in (3, np.int32(3), torch.tensor(3)))
    assert not any(is_integer(v) for v in (3.0, "3", True, None, np.float64(3), [3]))


def test_sigma_message_states_the_valid_range_not_the_pixel_range():
    """A newcomer read "a positive number in [0, 1]" as allowing 0 and forbidding 2."""
    from smoothmix.checks import check_sigma

    with pytest.raises(SmoothmixError) as info:
        check_sigma(0)
    assert "(0, 4]" in str(info.value) and "[0, 1] pixel units" not in str(info.value)
    assert check_sigma(2.0) == 2.0


def test_sigma_and_alpha_messages_state_their_intervals():
    """Issue 27 item 8: sigma is in (0, 4] and alpha in (0, 1); the image range [0, 1] is
    never written as if it were sigma's."""
    from smoothmix.checks import check_alpha, check_sigma
    from smoothmix.cli import SIGMA_HELP, build_parser

    with pytest.raises(SmoothmixError) as info:
        check_sigma(128)
    assert str(info.value).startswith("sigma must be in (0, 4], got 128")
    assert "sigma is in [0, 1]" not in str(info.value) and "0..255" in str(info.value)
    for bad in (0, 1, 1.5):
        with pytest.raises(SmoothmixError, match=r"alpha must lie in \(0, 1\)"):
            check_alpha(bad)
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {name: action.help for name, p in sub.choices.items() for action in p._actions
             if "--sigma" in action.option_strings}
    assert {"train", "certify", "predict", "diagnose", "demo", "targets"} <= set(helps)
    for name, text in helps.items():
        assert text.startswith(SIGMA_HELP) and "(0, 4]" in text, name
