"""Fixtures shared by several test modules (no test module imports from another)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothmix.data import TensorImageDataset
from smoothmix.methods import StepOutput
from smoothmix.models import wrap_model
from smoothmix.training import TrainConfig


@pytest.fixture(scope="session")
def mnist_model() -> tuple[nn.Module, object]:
    """A linear MNIST classifier trained for a second under sigma = 0.5 noise: right on most
    test images, wrong on some, which is what skip-wrong needs."""
    from smoothmix.data import load_dataset

    test = load_dataset("mnist", "test")  # trained on test images 1000+, evaluated below 1000
    x = test.images[1000:5000].float().div(255)
    y = test.labels[1000:5000]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(150):
        batch = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(net(x[batch] + 0.5 * torch.randn_like(x[batch])),
                                           y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), test


class Linear2(nn.Module):
    """Binary linear classifier on 1x1x2 images: class 1 iff w.x + b > 0, ||w|| = 5."""

    def __init__(self, b: float) -> None:
        super().__init__()
        self.register_buffer("w", torch.tensor([3.0, -4.0]))
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


@pytest.fixture(scope="session")
def linear2() -> type[Linear2]:
    """The class of a linear classifier whose smoothed radius is known in closed form."""
    return Linear2


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a study-sized test (minutes); deselect with "
                            "-m 'not slow'")


# Tiny stand-ins for the training loop's tests (test_training, test_training_hooks).


class NoisyCE:
    """A minimal method: CE on one Gaussian draw from the global RNG (so that resuming has
    to restore the RNG to reproduce the run)."""

    name = "noisy-ce"

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    def __call__(self, model, x, y, epoch):
        logits = model(x + self.sigma * torch.randn_like(x))
        acc = (logits.argmax(1) == y).float().mean().detach()
        return StepOutput(nn.functional.cross_entropy(logits, y), {"acc": acc})


def tiny_data(n: int, seed: int) -> TensorImageDataset:
    """Two classes told apart by mean brightness: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = torch.where(labels[:, None, None, None] == 1, 170, 80)
    images = (base + torch.randint(-60, 60, (n, 1, 6, 6), generator=g)).clamp(0, 255)
    return TensorImageDataset(images.to(torch.uint8), labels, 2, "tiny")


def tiny_model(seed: int = 0) -> nn.Module:
    """A small MLP for tiny_data, initialised from ``seed``."""
    torch.manual_seed(seed)
    return wrap_model(nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 2)))


def tiny_config(**kw) -> TrainConfig:
    """A few quick CPU epochs for the tiny stand-ins."""
    base = dict(epochs=3, batch_size=16, lr=0.05, lr_step=2, seed=7, device="cpu",
                progress=False, workers=0)
    base.update(kw)
    return TrainConfig(**base)
