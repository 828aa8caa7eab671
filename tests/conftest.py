"""Fixtures shared by several test modules (no test module imports from another)."""

from __future__ import annotations

import pytest
import torch
from helpers import Linear2
from torch import nn


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


@pytest.fixture(scope="session")
def linear2() -> type[Linear2]:
    """The class of a linear classifier whose smoothed radius is known in closed form."""
    return Linear2
