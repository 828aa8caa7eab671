"""Noise as an object (smoothmix.noise), the vote record (smoothmix.votes), and a prepared
model that never changes the user's module (smoothmix.execution.prepare_model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import smoothmix.execution as execution_module
from smoothmix.core import Smooth
from smoothmix.errors import SmoothmixError
from smoothmix.execution import Execution, prepare_model
from smoothmix.noise import GaussianNoise, GridGaussianNoise, Noise, make_noise
from smoothmix.votes import Votes


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()


def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(100)
    return torch.randint(0, 256, (1, 8, 8), generator=g).float().div(255)


def test_settings_keep_the_on_disk_keys_and_read_back():
    assert GaussianNoise(0.25).settings() == {}
    assert GridGaussianNoise(0.25).settings() == {"grid": 255}
    assert isinstance(Noise.from_settings(0.5, {"sigma": 0.5, "n": 10}), GaussianNoise)
    grid = Noise.from_settings(0.5, {"sigma": 0.5, "grid": 255})
    assert isinstance(grid, GridGaussianNoise) and grid.sigma == 0.5
    assert isinstance(make_noise(0.25, 255), GridGaussianNoise)
    with pytest.raises(SmoothmixError, match="grid"):
        make_noise(GaussianNoise(0.25), 255)
    with pytest.raises(SmoothmixError, match="not on the 8-bit grid"):
        GridGaussianNoise(0.25).prepare(torch.full((1, 2, 2), 0.1234))


def test_a_noise_object_equals_the_old_arguments():
    x, g = image(), lambda: torch.Generator().manual_seed(4)
    for kwargs, noise in (({}, GaussianNoise(0.5)), ({"grid": 255}, GridGaussianNoise(0.5))):
        old = Smooth(net(), 3, 0.5, **kwargs).certificate(x, 10, 200, 0.01, 64, g())
        new = Smooth(net(), 3, noise).certificate(x, 10, 200, 0.01, 64, g())
        assert old == new


class UniformNoise(Noise):
    """A third noise: one class, no edit elsewhere (uniform on [-sigma, sigma])."""

    key = "uniform"

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    @classmethod
    def _from_settings(cls, sigma, settings):
        return cls(sigma)

    def prepare(self, x):
        return x

    def draw(self, prepared, out, generator):
        out.uniform_(-self.sigma, self.sigma, generator=generator).add_(prepared)
        return None

    def block(self, prepared, rows, generator):
        noisy = torch.rand((rows, *prepared.shape), generator=generator) * 2 - 1
        return noisy.mul_(self.sigma).add_(prepared), torch.zeros(rows, dtype=torch.bool)

    def settings(self):
        return {"uniform": True}


def test_a_third_noise_needs_one_class(tmp_path):
    from smoothmix.certification import certify_dataset
    from smoothmix.data.datasets import TensorImageDataset
    from smoothmix.run import RunSpec
    from smoothmix.storage.records import read_meta

    noise = UniformNoise(0.5)
    votes = Smooth(net(), 3, noise).votes(image(), 100, 50, torch.Generator().manual_seed(0))
    assert votes.drawn == 100 and votes.rejected == 0 and int(votes.counts.sum()) == 100
    data = TensorImageDataset(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8),
                              torch.zeros(3, dtype=torch.long), num_classes=3, name="t")
    out = certify_dataset(net(), data, RunSpec(noise, batch_size=50, progress=False),
                          tmp_path / "u.tsv", n0=10, n=100, alpha=0.01)
    assert read_meta(out, True)["settings"]["uniform"] is True
    assert isinstance(Noise.from_settings(0.5, {"uniform": True}), UniformNoise)


def test_votes_record_and_cohens_sample_noise():
    smooth = Smooth(net(), 3, 0.5)
    votes = smooth.votes(image(), 300, 100, torch.Generator().manual_seed(1))
    assert isinstance(votes, Votes) and votes.counts.shape == (3,) and votes.drawn == 300
    counts = smooth._sample_noise(image(), 300, 100)
    assert isinstance(counts, np.ndarray) and counts.shape == (3,) and counts.sum() == 300
    # Smooth.sample_counts (deprecated in 0.5) and the Smooth.grid property were removed in
    # 0.6: votes() and the noise object are the one spelling.
    assert not hasattr(smooth, "sample_counts") and not hasattr(smooth, "grid")


def test_preparing_a_model_never_converts_the_users_module():
    torch.manual_seed(0)  # two input channels: the layouts differ
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    weight = model[0].weight
    assert weight.is_contiguous()
    ex = Execution(layout="channels_last")
    prepared = prepare_model(model, ex)
    assert prepared is not model and model[0].weight is weight and weight.is_contiguous()
    assert prepared[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert prepare_model(model, ex) is prepared  # cached: no second copy
    assert prepare_model(model, Execution(layout="contiguous")) is model
    with torch.no_grad():
        model[0].weight.add_(1.0)  # trained in place: the copy is stale
    fresh = prepare_model(model, ex)
    assert fresh is not prepared and torch.equal(fresh[0].weight, model[0].weight)
    # Certifying leaves the user's module as it was, mode included.
    model.train()
    Smooth(model, 3, 0.5).certificate(image().repeat(2, 1, 1), 10, 100, 0.01, 50)
    assert model.training and model[0].weight.is_contiguous()


def test_every_convolution_is_converted_when_the_first_is_ambiguous():
    # One input channel: the first weight is contiguous in both formats; the second is not.
    # Judging by the first alone left the model unconverted, and the pool (KT decisions),
    # whose grey inputs carry no layout, ran every later layer in NCHW at half the speed.
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3)).eval()
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    prepared = prepare_model(model, Execution(layout="channels_last"))
    assert prepared is not model
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in prepared.modules() if isinstance(m, nn.Conv2d))
    assert not model[2].weight.is_contiguous(memory_format=torch.channels_last)
    # The model's own logits, whatever the layout of a grey batch (it is ambiguous too).
    batch = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(prepared(batch), model(batch), atol=1e-6)


def test_bf16_names_are_checked_without_resolving_a_device(monkeypatch):
    calls = []
    monkeypatch.setattr(execution_module, "warn_if_bf16_emulated", calls.append)
    Smooth(net(), 3, 0.5, precision="bf16")
    assert calls == []  # the CPU notice waits for a run on a CPU
    with pytest.raises(SmoothmixError, match="unknown precision"):
        Smooth(net(), 3, 0.5, precision="fp8")
    with pytest.raises(SmoothmixError, match="unknown layout"):
        Smooth(net(), 3, 0.5, layout="nhwc")


def test_old_import_paths_still_work():
    from smoothmix.core import (  # noqa: F401
        BOUNDS,
        FUTILITY_CHECKS,
        base_votes,
        certifying_votes,
        check_certify_args,
        futility_checks,
        module_device,
        smallest_certifying_n,
        smallest_predicting_n,
        voting,
    )
    from smoothmix.votes import voting as moved

    assert voting is moved and FUTILITY_CHECKS == 7 and BOUNDS == ("cohen", "two-sided")
