"""resolve_device is the one device rule, torchrun ranks included (issue 26, item 8).

No GPU is needed: CUDA's availability and device count are patched, and each command's
device choice is caught where it loads the model (certify, targets) or builds its
execution strategy (train), for rank 1 of a 2-process torchrun job on a 2-GPU node.
"""

from __future__ import annotations

import types

import pytest
import torch

from smoothmix.device import resolve_device
from smoothmix.errors import SmoothmixError


@pytest.fixture
def two_gpus(monkeypatch):
    """A node with two (pretend) GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def rank1(monkeypatch, two_gpus):
    """This process is rank 1 of a 2-process torchrun job on one node."""
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def single(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("name", ["cuda", "auto", None, ""])
def test_each_rank_asks_for_its_own_gpu(rank1, name):
    assert resolve_device(name) == torch.device("cuda", 1)


@pytest.mark.parametrize("local_rank", ["0", "1"])
def test_every_local_rank_maps_to_its_gpu(monkeypatch, two_gpus, local_rank):
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_device("cuda").index == int(local_rank)


def test_explicit_index_and_cpu_stay_as_given(rank1):
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")


def test_outside_torchrun(single, two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")  # as given: torch's current GPU
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_without_cuda(single, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    with pytest.raises(SmoothmixError, match="CUDA is not available"):
        resolve_device("cuda")


def test_bad_devices_are_one_line(monkeypatch, two_gpus):
    monkeypatch.setenv("LOCAL_RANK", "2")  # a third process on a two-GPU node
    with pytest.raises(SmoothmixError, match=r"'cuda:2'.*2 CUDA device.*LOCAL_RANK=2"):
        resolve_device("cuda")
    with pytest.raises(SmoothmixError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(SmoothmixError, match="LOCAL_RANK='one' is not an integer"):
        resolve_device("cuda")


# -- each command's device goes through resolve_device -----------------------------------

class _Loaded(Exception):
    """Raised by the patched load_model: the command chose its device and stops there."""


@pytest.fixture
def caught_device(monkeypatch):
    """Patch load_model to record the device a command asks for, then stop the command."""
    import smoothmix.checkpoint

    asked: list[torch.device] = []

    def load_model(path, device=None, normalization=None):
        asked.append(device)
        raise _Loaded

    monkeypatch.setattr(smoothmix.checkpoint, "load_model", load_model)
    return asked


@pytest.fixture
def lenet_checkpoint(tmp_path):
    from smoothmix.checkpoint import save_checkpoint
    from smoothmix.models import create_model

    path = tmp_path / "lenet.pth"
    save_checkpoint(path, {"arch": "lenet", "state_dict": create_model("lenet").state_dict()})
    return path


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_certify_rank_uses_its_gpu(rank1, caught_device, lenet_checkpoint, tmp_path, device):
    from smoothmix.cli import build_parser
    from smoothmix.cli.certify import prepare_run

    args = build_parser().parse_args(["certify", str(lenet_checkpoint), "--dataset", "mnist",
                                      "--sigma", "0.25", "--out", str(tmp_path / "o.tsv"),
                                      "--device", device])
    with pytest.raises(_Loaded):
        prepare_run(args)
    assert caught_device == [torch.device("cuda", 1)]


@pytest.mark.parametrize("device", ["cuda", None])
def test_targets_rank_uses_its_gpu(rank1, caught_device, lenet_checkpoint, tmp_path, device):
    from smoothmix.targets import targets_from_checkpoint

    with pytest.raises(_Loaded):
        targets_from_checkpoint(lenet_checkpoint, "mnist", tmp_path / "t.npz", device=device)
    assert caught_device == [torch.device("cuda", 1)]


@pytest.mark.parametrize("device", ["cuda", "auto", None])
def test_train_rank_uses_its_gpu(rank1, monkeypatch, device):
    from smoothmix import distributed
    from smoothmix.training.strategy import ExecutionStrategy

    joined: list[torch.device] = []
    monkeypatch.setattr(distributed, "init_distributed", lambda d: joined.append(d) or False)
    config = types.SimpleNamespace(device=device, precision="fp32", compile=False,
                                   cuda_graphs=False)
    strategy = ExecutionStrategy.from_config(config)  # type: ignore[arg-type]
    assert strategy.device == torch.device("cuda", 1) and joined == [strategy.device]
